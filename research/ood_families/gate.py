"""The input gate on the lesion families: each case's T1 and FLAIR given to both contrasts' checks, judged by
one or more gate calibrations (``input_gate.json`` files) on the same measurements::

    python -m research.ood_families.gate --cohorts data/families_mprage data/families_spin_echo --split val \
        --families glioma metastasis ms --gates shipped=data/old_models candidate=data/gate_cand \
        --out research/results/gate_families_val.json

A cohort folder holds one phantom cohort per family (``<family>/manifest.json``). Counts per T1 kind, family,
input and declared contrast: refused, warned, passed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import Case, read_case
from localdiffusion.detectors.input_gate import GATE_FILE, InputGate, map_summary
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

CONTRASTS = ("t1", "flair")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.ood_families.gate", description=__doc__.splitlines()[0])
    p.add_argument("--cohorts", nargs="+", type=Path, required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--families", nargs="+", default=None, help="only these families (default: every one found)")
    p.add_argument("--gates", nargs="+", required=True, metavar="NAME=MODELS")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    gates = {name: InputGate.load(Path(folder) / GATE_FILE) for name, folder in (g.split("=", 1) for g in args.gates)}
    banks = {c: PatchCore.load(ood_bank_path(MODELS_ROOT, c), modality=c, model_root=MODELS_ROOT) for c in CONTRASTS}
    rows = []
    for root in args.cohorts:
        families = sorted(f for f in root.iterdir() if (f / "manifest.json").exists()
                          and (args.families is None or f.name in args.families))
        for family in families:
            for case in tqdm(cases_in_split(family, args.split), desc=f"{root.name}/{family.name}", unit="case"):
                for given in CONTRASTS:
                    scan = read_case(case, (given,))
                    for declared in CONTRASTS:  # the file given as the declared contrast, as a user might
                        named = Case(scan.case_id, {declared: scan.images[given]}, scan.affine, scan.seg)
                        prepared = prepare_case(named, *bank_grid(banks[declared]))
                        summary = map_summary(prepared, declared, banks[declared])
                        row = {"cohort": root.name, "family": family.name, "case": case.name, "input": given,
                               "declared": declared, "flagged": summary.flagged, "typical": summary.typical}
                        for name, gate in gates.items():
                            correlation, strength = gate.measure(declared, prepared.images[declared], prepared.brain,
                                                                 prepared.grid.spacing)
                            report = gate.judge(declared, correlation, summary, strength, robust_map=True)
                            row[name] = {"verdict": "refused" if report.refusal else "warned" if report.warnings
                                         else "passed", "correlation": correlation, "message": report.refusal or
                                         "; ".join(report.warnings)}
                        rows.append(row)
    summary = {}
    for row in rows:
        key = f"{row['cohort']} {row['family']} {row['input']} as {row['declared']}"
        for name in gates:
            counts = summary.setdefault(key, {}).setdefault(name, {"refused": 0, "warned": 0, "passed": 0})
            counts[row[name]["verdict"]] += 1
    for key, by_gate in summary.items():
        print(key + ": " + "; ".join(f"{name} {c['refused']} refused / {c['warned']} warned / {c['passed']} passed"
                                     for name, c in by_gate.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps({"command": "python -m research.ood_families.gate " + " ".join(
            sys.argv[1:] if argv is None else argv), "summary": summary, "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
