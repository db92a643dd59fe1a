"""Apply the rule of this study's README to the validation results: the location mode per contrast, then
the mask level, from the per-case figures ``families.py`` wrote::

    python -m research.ood_families.choose --results research/results/ood_families_val --out research/results/ood_families_choice.json

``--results`` holds ``<mode>_<t1 kind>_<contrasts>.json`` for the modes none, max and only (one run per mode
with ``--models`` pointing at that mode's calibrations and ``--levels 0.25 0.5``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from localdiffusion.data.io import atomic_path
from research.ood_masks.masks import bootstrap

MODES = ("none", "max", "only")
HEALTHY_LIMIT = 0.03
LEVELS = ("0.25", "0.5")
MIN_COVERAGE = 0.5
#: what a level set is paired against: the calibration's mask before any level set
BASE = "thresholded mask"


def per_case(results: Path, mode: str, contrast: str) -> tuple[list[dict], list[dict]]:
    """(tumour cases' figure rows, healthy cases' rows) of ``contrast`` under ``mode``, every T1 kind pooled."""
    tumour, healthy = [], []
    for path in sorted(results.glob(f"{mode}_*.json")):
        data = json.loads(path.read_text())
        for family, cases in data["per_case"].get(contrast, {}).items():
            for name, rows in cases.items():
                (tumour if "product mask" in rows else healthy).append({"case": f"{path.stem}/{family}/{name}", **rows})
    return tumour, healthy


def coverage(row: dict) -> float:
    """The fraction of the lesion inside the mask, from Dice and the volume ratio."""
    return row["dice"] * (1.0 + row["volume_ratio"]) / 2.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.ood_families.choose", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    choice: dict = {"command": "python -m research.ood_families.choose " + " ".join(sys.argv[1:] if argv is None else argv),
                    "location": {}, "mask_level": {}}
    for contrast in ("t1", "flair"):
        candidates = {}
        for mode in MODES:
            tumour, healthy = per_case(args.results, mode, contrast)
            if not tumour:
                continue
            candidates[mode] = {
                "auroc": bootstrap([r["product mask"]["auroc"] for r in tumour]),
                "healthy_flagged_tumour_cases": bootstrap([r["product mask"]["healthy_flagged"] for r in tumour]),
                "healthy_flagged_healthy_cases": bootstrap([r["healthy scan"]["healthy_flagged"] for r in healthy]),
                "tumour_cases": len(tumour), "healthy_cases": len(healthy)}
        allowed = [m for m, c in candidates.items()
                   if c["healthy_flagged_tumour_cases"]["mean"] <= HEALTHY_LIMIT
                   and c["healthy_flagged_healthy_cases"]["mean"] <= HEALTHY_LIMIT]
        chosen = (max(allowed, key=lambda m: candidates[m]["auroc"]["mean"]) if allowed else
                  min(candidates, key=lambda m: max(candidates[m]["healthy_flagged_tumour_cases"]["mean"],
                                                    candidates[m]["healthy_flagged_healthy_cases"]["mean"])))
        choice["location"][contrast] = {"chosen": chosen, "allowed": allowed, "candidates": candidates}
        print(f"{contrast}: location {chosen} (allowed {allowed})")
        for mode, c in candidates.items():
            print(f"  {mode}: AUROC {c['auroc']['mean']:.3f}, healthy >= 0.99 {c['healthy_flagged_tumour_cases']['mean']:.4f}"
                  f" (tumour cases) / {c['healthy_flagged_healthy_cases']['mean']:.4f} (healthy cases)")
    # the mask level, on FLAIR under FLAIR's chosen location mode
    mode = choice["location"]["flair"]["chosen"]
    tumour, _ = per_case(args.results, mode, "flair")
    levels = {}
    for level in LEVELS:
        rows = [r for r in tumour if f"level set {level}" in r]
        gain = [r[f"level set {level}"]["dice"] - r[BASE]["dice"] for r in rows]
        levels[level] = {"dice": bootstrap([r[f"level set {level}"]["dice"] for r in rows]),
                         "paired_gain": bootstrap(gain),
                         "coverage": bootstrap([coverage(r[f"level set {level}"]) for r in rows])}
    best = max(levels, key=lambda lv: levels[lv]["dice"]["mean"])
    ships = levels[best]["paired_gain"]["low"] > 0 and levels[best]["coverage"]["mean"] >= MIN_COVERAGE
    product = bootstrap([r[BASE]["dice"] for r in tumour])
    choice["mask_level"] = {"location_mode": mode, "thresholded_dice": product, "levels": levels, "best": best,
                            "ships": bool(ships), "chosen": float(best) if ships else 0.0}
    print(f"flair mask: thresholded Dice {product['mean']:.3f}; " + "; ".join(
        f"level {lv}: Dice {v['dice']['mean']:.3f}, gain {v['paired_gain']['mean']:+.3f} [{v['paired_gain']['low']:+.3f}, "
        f"{v['paired_gain']['high']:+.3f}], coverage {v['coverage']['mean']:.2f}" for lv, v in levels.items())
        + f" -> {'level ' + best if ships else 'no level'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(choice, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
