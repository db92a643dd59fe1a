"""Apply the rule of research/input_gate/README.md ("T1 kinds") to the validation rows of
``contrast_features``::

    python -m research.input_gate.choose_feature research/results/contrast_features_val.json \
        --write monai_bundle/models/input_gate.json

Prints, per candidate feature: the T1 and FLAIR validation ranges, the gap between them in units of the pooled
standard deviation, the errors at the midpoint cut; then the chosen feature and the distribution check's
refusal level. ``--write``: the gate calibration with the chosen feature, its validation ranges and that
refusal level (the other numbers - the healthy training-acquisition maxima the messages and the field check
read - are kept from the file).
"""

from __future__ import annotations

import json
import sys

import numpy as np

CANDIDATES = ("depth_correlation", "depth_correlation_n4", "layer_contrast", "layer_contrast_n4", "bright_depth",
              "bright_depth_n4")
CONTRASTS = ("t1", "flair")


def table(rows: list[dict]) -> list[dict]:
    out = []
    for name in CANDIDATES:
        t1 = np.array([r[name] for r in rows if r["input"] == "t1"], float)
        flair = np.array([r[name] for r in rows if r["input"] == "flair"], float)
        pooled = np.sqrt((np.nanvar(t1) + np.nanvar(flair)) / 2)
        cut = (np.nanmin(t1) + np.nanmax(flair)) / 2
        errors = int(np.sum(~(t1 > cut)) + np.sum(~(flair < cut)))
        out.append({"feature": name, "t1": [float(np.nanmin(t1)), float(np.nanmax(t1))],
                    "flair": [float(np.nanmin(flair)), float(np.nanmax(flair))],
                    "gap_sd": float((np.nanmin(t1) - np.nanmax(flair)) / pooled), "errors_at_midpoint": errors,
                    "n": [int(t1.size), int(flair.size)]})
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    from localdiffusion.detectors.input_gate import FEATURES, REFUSE_FLAGGED, InputGate

    p = argparse.ArgumentParser(prog="python -m research.input_gate.choose_feature")
    p.add_argument("rows")
    p.add_argument("--write", default=None, help="an input_gate.json to update with the choice")
    args = p.parse_args(argv)
    rows = json.loads(open(args.rows, encoding="utf-8").read())["rows"]
    scored = table(rows)
    for row in scored:
        print(f"{row['feature']:22s} T1 {row['t1'][0]:+.3f}..{row['t1'][1]:+.3f}  FLAIR {row['flair'][0]:+.3f}.."
              f"{row['flair'][1]:+.3f}  gap {row['gap_sd']:+.2f} SD  errors {row['errors_at_midpoint']}  n {row['n']}")
    separating = [r for r in scored if r["gap_sd"] > 0]
    chosen = (max(separating, key=lambda r: r["gap_sd"]) if separating
              else min(scored, key=lambda r: (r["errors_at_midpoint"], -r["gap_sd"])))
    name = chosen["feature"]
    cut = (chosen["t1"][0] + chosen["flair"][1]) / 2
    print(f"chosen: {name} (cut {cut:+.4f})")
    legit = max(r[f"flagged_as_{r['input']}"] for r in rows if r["input"] in CONTRASTS)
    passing = []  # synthetic non-brains the contrast check lets through, with the flagged fraction it would read
    for r in rows:
        if r["input"] in CONTRASTS or not np.isfinite(r["depth_correlation"]):  # no depth structure: refused
            continue
        for declared, passes in (("t1", r[name] > cut), ("flair", r[name] < cut)):
            print(f"  fake {r['input']:12s} as {declared:5s} {name} {r[name]:+.3f} {'passes' if passes else 'refused'}"
                  f"; flagged {r[f'flagged_as_{declared}']:.3f}")
            if passes:
                passing.append(r[f"flagged_as_{declared}"])
    level = (legit + min(passing)) / 2 if passing and min(passing) > legit else REFUSE_FLAGGED
    print(f"largest right-contrast flagged fraction {legit:.3f}; smallest passing non-brain "
          f"{min(passing) if passing else float('nan'):.3f}: refusal level {level:.3f}")
    if args.write:
        if name.replace("_n4", "") != "depth_correlation" or (name not in FEATURES):
            raise SystemExit(f"{name} is not a feature the product's gate reads ({FEATURES})")
        gate = InputGate.load(args.write)
        gate.feature, gate.refuse_flagged = name, round(level, 3)
        gate.correlation = {"t1": tuple(chosen["t1"]), "flair": tuple(chosen["flair"])}
        gate.cases = sum(chosen["n"]) // 2
        gate.save(args.write)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
