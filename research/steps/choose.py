"""Apply the sampling-steps rule (research/steps/README.md) to the measured figures.

Reads the hallucination benchmark's JSON of a direction (rows at DDIM-25 and at DDIM-S, from
``python -m research.hallucination ... --steps S``) and the risk study's JSON
(``python -m research.steps.risk``), prints one table per direction (every figure's paired
difference S minus DDIM-25 with its interval and whether it passes) and the IND-floor re-check::

    python -m research.steps.choose --steps 5 --bench data/steps_val/bench_5 \\
        --risk data/steps_val/risk_cache --out research/results/steps_choice.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from research.bench.matrix import ROBUST_MASK, ld_row_name
from research.bench.scoring import paired_bootstrap
from research.steps.risk import MARGINS

REFERENCE = 25
PRODUCT_LD = ld_row_name(ROBUST_MASK, 0.95)
ORACLE_LD = ld_row_name("oracle", 0.0)
OTHER_FLOOR = ld_row_name(ROBUST_MASK, 0.0)
#: (row, figure) -> (margin, +1 when higher is better); the rule's table
PLAIN = {"psnr_brain": (0.2, 1), "psnr_ind": (0.2, 1), "ssim_brain": (0.005, 1)}
LOCAL = {"healing_rate": (0.02, -1), "local_error": (0.005, -1), "tumour_dice": (0.02, 1), "psnr_ood": (0.3, 1),
         "psnr_brain": (0.2, 1)}


def per_case(cells: list[dict], column: str) -> dict[str, float]:
    by_case: dict[str, list] = {}
    for cell in cells:
        by_case.setdefault(cell["case_id"], []).append(cell[column])
    return {c: float(np.nanmean(v)) for c, v in by_case.items()}


def test(a: list[dict], b: list[dict], column: str, margin: float, better: int) -> dict:
    """Paired difference a - b of ``column`` with its interval; passes when the worse-side bound is within ``margin``."""
    d = paired_bootstrap(per_case(a, column), per_case(b, column))
    worse = d["low"] if better > 0 else d["high"]
    return {**d, "margin": margin, "better": "higher" if better > 0 else "lower",
            "passes": bool(np.isfinite(worse) and better * worse >= -margin)}


def bench_tests(result: dict, steps: int) -> dict[str, dict]:
    cells, out = result["cells"], {}
    plain, reference = f"DDIM-{steps}", f"DDIM-{REFERENCE}"
    for column, (margin, better) in PLAIN.items():
        out[f"plain DDIM: {column}"] = test(cells[plain], cells[reference], column, margin, better)
    for row in (PRODUCT_LD, ORACLE_LD):
        for column, (margin, better) in LOCAL.items():
            out[f"{row}: {column}"] = test(cells[f"{row}, {plain}"], cells[f"{row}, {reference}"], column, margin, better)
    return out


def floor_check(result: dict, steps: int) -> dict:
    """The IND floor 0 against 0.95 with the product's mask at DDIM-``steps`` (README's last point)."""
    cells, suffix = result["cells"], f", DDIM-{steps}"
    other, current = cells[OTHER_FLOOR + suffix], cells[PRODUCT_LD + suffix]
    tests = {column: test(other, current, column, margin, better) for column, (margin, better) in LOCAL.items()}
    lowers = tests["local_error"]["high"] < 0
    return {"tests": tests, "replace": bool(lowers and all(t["passes"] for t in tests.values()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.steps.choose", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--bench", type=Path, required=True, help="folder of hallucination_<direction>.json")
    p.add_argument("--risk", type=Path, required=True, help="folder of steps_risk_<direction>.json")
    p.add_argument("--directions", nargs="+", default=["t1_to_flair", "flair_to_t1"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    report = {"steps": args.steps, "directions": {}}
    for direction in args.directions:
        bench = json.loads((args.bench / f"hallucination_{direction}.json").read_text(encoding="utf-8"))
        tests = bench_tests(bench, args.steps)
        path, key = args.risk / f"steps_risk_{direction}.json", str(args.steps)
        risk = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"differences": {}}
        if key in risk["differences"]:
            for figure, d in risk["differences"][key].items():
                tests[f"risk map: {figure}"] = {**d, "margin": MARGINS[figure][0], "passes": risk["passes"][key][figure]}
            tests["risk map: healthy brain flagged <= 2% (h0003-h0004, seed 0)"] = {
                "values": risk["healthy"][key], "passes": risk["passes"][key]["healthy_flagged"]}
        else:  # a candidate without risk figures cannot pass (measured only when the others pass)
            tests["risk map"] = {"values": "not measured", "passes": False}
        floor = floor_check(bench, args.steps)
        report["directions"][direction] = {"tests": tests, "passes": all(t["passes"] for t in tests.values()),
                                           "floor": floor, "cases": bench["cases"], "seeds": bench["seeds"],
                                           "risk_seconds": risk.get("seconds")}
        print(f"\n{direction}: DDIM-{args.steps} minus DDIM-{REFERENCE} ({bench['cases']} tumour val cases x "
              f"{bench['evaluated_slices'] // max(bench['cases'], 1)} slices, seeds {bench['seeds']}; risk: "
              f"{len(risk.get('tumour_cases', []))} cases x seeds {risk.get('seeds')})")
        print("| figure | difference [95% interval] | margin | passes |\n|---|---|---|---|")
        for name, t in tests.items():
            if "mean" in t:
                print(f"| {name} | {t['mean']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}] | "
                      f"{t.get('margin', '')} | {'yes' if t['passes'] else 'NO'} |")
            else:
                print(f"| {name} | {t['values']} | | {'yes' if t['passes'] else 'NO'} |")
        print(f"passes: {report['directions'][direction]['passes']}; IND floor 0 replaces 0.95: {floor['replace']} "
              f"(local error {floor['tests']['local_error']['mean']:+.4f} [{floor['tests']['local_error']['low']:+.4f}, "
              f"{floor['tests']['local_error']['high']:+.4f}])")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
