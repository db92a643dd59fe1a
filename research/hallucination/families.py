"""Local Diffusion minus the plain translation, per lesion family: one markdown table from the benchmark's JSON
results of several cohorts (each written by ``python -m research.hallucination --shipped``)::

    python -m research.hallucination.families --results research/results/ld_families/*.json \\
        --out research/results/ld_families/table.md

One row per result file (cohort, family, direction): the paired difference (Local Diffusion minus plain, seeds
averaged per case, 95% bootstrap interval over cases) of whole-brain, in-distribution and lesion PSNR, the halo
error and the mask-edge excess, and whether any interval lies entirely on the worse side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from localdiffusion.data.io import atomic_path

#: column -> (label, True where higher is worse)
COLUMNS = {"psnr_brain": ("whole-brain PSNR (dB)", False), "psnr_ind": ("PSNR outside the lesion (dB)", False),
           "psnr_ood": ("lesion PSNR (dB)", False), "halo_error": ("halo error", True),
           "mask_edge_excess": ("mask-edge excess", True)}


def cell(entry: dict | None) -> str:
    if entry is None or entry.get("mean") is None or math.isnan(entry["mean"]):
        return "-"
    low, high = entry.get("low"), entry.get("high")
    interval = "" if low is None or math.isnan(low) else f" [{low:+.3g}, {high:+.3g}]"
    return f"{entry['mean']:+.3g}{interval} (n={entry.get('cases', '?')})"


def worse(entry: dict | None, higher_is_worse: bool) -> bool:
    """True when the whole 95% interval lies on the worse side of 0."""
    if entry is None or any(entry.get(k) is None or math.isnan(entry[k]) for k in ("low", "high")):
        return False
    return entry["low"] > 0 if higher_is_worse else entry["high"] < 0


def family_rows(paths: list[Path]) -> list[str]:
    """The markdown table: a header and one row per result file with a paired Local Diffusion row."""
    header = ["result", "direction", "cases x slices"] + [label for label, _ in COLUMNS.values()] + ["worse"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in paths:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        for row, paired in result.get("paired_differences", {}).items():
            if not row.startswith("shipped LD"):
                continue
            flags = [COLUMNS[c][0] for c in COLUMNS if worse(paired.get(c), COLUMNS[c][1])]
            lines.append("| " + " | ".join([Path(path).stem, result["direction"],
                                              f"{result['cases']} x {result['evaluated_slices'] // max(result['cases'], 1)}"]
                                             + [cell(paired.get(c)) for c in COLUMNS]
                                             + [", ".join(flags) or "none"]) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.hallucination.families", description=__doc__.splitlines()[0])
    p.add_argument("--results", nargs="+", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    text = "\n".join(family_rows(sorted(args.results))) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
