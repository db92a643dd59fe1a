"""Markdown tables of the test lesion families from ``families.py`` results, the shipped version against the
previous one, per family, contrast and T1 kind (means with 95% bootstrap intervals over subjects)::

    python -m research.ood_families.report --new research/results/ood_families_test_mprage.json \
        research/results/ood_families_test_spin_echo.json --old research/results/ood_families_test_mprage_0.14.json \
        research/results/ood_families_test_spin_echo_0.14.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from research.ood_masks.masks import bootstrap


def _load(paths: list[Path]) -> dict:
    """kind -> contrast -> family -> case -> rows (the T1 kind from the cohort folders' names)."""
    out: dict = {}
    for path in paths:
        data = json.loads(path.read_text())
        kind = "spin_echo" if any("spin_echo" in f for f in data["cohorts"].values()) else "mprage"
        for contrast, families in data["per_case"].items():
            out.setdefault(kind, {}).setdefault(contrast, {}).update(families)
    return out


def _cell(cases: dict, row: str, key: str, scale: float = 1.0, digits: int = 2) -> str:
    values = [c[row][key] * scale for c in cases.values() if row in c and key in c[row]]
    b = bootstrap(values)
    if not values:
        return "-"
    return f"{b['mean']:.{digits}f} [{b['low']:.{digits}f}, {b['high']:.{digits}f}]"


def _refused(cases: dict) -> str:
    tumour = [c["gate"]["refused"] for c in cases.values() if "gate" in c]
    return f"{int(sum(tumour))} of {len(tumour)}" if tumour else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.ood_families.report", description=__doc__.splitlines()[0])
    p.add_argument("--new", nargs="+", type=Path, required=True)
    p.add_argument("--old", nargs="+", type=Path, required=True)
    args = p.parse_args(argv)
    new, old = _load(args.new), _load(args.old)
    for kind in new:
        for contrast in new[kind]:
            print(f"\n**{contrast.upper()}**" + (f" ({kind.replace('_', '-')} T1)" if contrast == "t1" else "") + "\n")
            print("| family | lesion AUROC, previous / now | healthy brain >= 0.99 % (tumour cases), previous / now "
                  "| healthy scans >= 0.99 %, previous / now | mask Dice, previous / now | healthy brain in the mask %, "
                  "now | necrosis / oedema / enhancing covered %, now | right-contrast scans the gate refuses |")
            print("|---|---|---|---|---|---|---|---|")
            for family, cases in new[kind][contrast].items():
                before = old.get(kind, {}).get(contrast, {}).get(family, {})
                covered = " / ".join(_cell(cases, "product mask", f"covers_{n}", 100, 0).split(" [")[0]
                                     for n in ("necrosis", "oedema", "enhancing"))
                print(f"| {family} | {_cell(before, 'product mask', 'auroc')} / {_cell(cases, 'product mask', 'auroc')} "
                      f"| {_cell(before, 'product mask', 'healthy_flagged', 100, 1)} / "
                      f"{_cell(cases, 'product mask', 'healthy_flagged', 100, 1)} "
                      f"| {_cell(before, 'healthy scan', 'healthy_flagged', 100, 1)} / "
                      f"{_cell(cases, 'healthy scan', 'healthy_flagged', 100, 1)} "
                      f"| {_cell(before, 'product mask', 'dice')} / {_cell(cases, 'product mask', 'dice')} "
                      f"| {_cell(cases, 'product mask', 'healthy_in_mask', 100, 1)} | {covered} | {_refused(before)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
