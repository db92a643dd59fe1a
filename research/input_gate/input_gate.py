"""The input gate on a split: how often it refuses or warns for the right contrast, the wrong
contrast and inputs that are not brain scans (research/RECORD.md section 6).

    python -m research.input_gate.input_gate --data data/bench_test data/gate_test_healthy --out research/results/input_gate.json

Every case's T1 and FLAIR are each given to both contrasts' checks (declared = the model's
source contrast); the gate is the shipped ``input_gate.json`` (fitted on healthy *val* cases by
``localdiffusion calibrate-gate``). The distribution check maps every third brain slice, as
``translate`` does. Synthetic non-brains (checkerboard, uniform noise, a cylinder, an inverted
T1) are built inside the first ``--fakes`` cases' brain masks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from localdiffusion.data.io import atomic_path, load_volume
from localdiffusion.data.readers import Case
from localdiffusion.detectors.input_gate import GATE_FILE, InputGate, map_summary
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.grid import prepare_case

CONTRASTS = ("t1", "flair")


def fakes(t1: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    brain = t1 > 0
    i, j, k = np.indices(t1.shape)
    centre = np.array(t1.shape) / 2
    cylinder = ((i - centre[0]) ** 2 + (j - centre[1]) ** 2 < (0.35 * t1.shape[0]) ** 2) & (
        np.abs(k - centre[2]) < 0.35 * t1.shape[2])
    return {"checkerboard": np.where(brain, 100.0 + 100.0 * ((i // 4 + j // 4 + k // 4) % 2), 0.0),
            "noise": np.where(brain, np.random.default_rng(seed).uniform(50, 150, t1.shape), 0.0),
            "cylinder": np.where(cylinder, 100.0 + 20.0 * ((i // 10 + j // 10) % 3 == 0), 0.0),
            "inverted T1": np.where(brain, t1.max() - t1 + 1.0, 0.0)}


def judge(gate: InputGate, bank: PatchCore, declared: str, image: np.ndarray, affine: np.ndarray) -> dict:
    prepared = prepare_case(Case("x", {declared: image.astype(np.float32)}, affine, None), *bank_grid(bank))
    summary = map_summary(prepared, declared, bank)
    correlation, strength = gate.measure(declared, prepared.images[declared], prepared.brain, prepared.grid.spacing)
    report = gate.judge(declared, correlation, summary, strength)
    verdict = "refused" if report.refusal else "warned" if report.warnings else "passed"
    message = report.refusal or "; ".join(report.warnings)
    return {"correlation": correlation, "flagged": summary.flagged, "typical": summary.typical, "verdict": verdict,
            "map_reliable": report.map_reliable, "field": strength, "field_warned": gate.strong_field(declared, strength),
            "message": message}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=MODELS_ROOT)
    parser.add_argument("--fakes", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    gate = InputGate.load(args.models / GATE_FILE)
    banks = {c: PatchCore.load(ood_bank_path(args.models, c), modality=c, model_root=args.models) for c in CONTRASTS}
    cases = [p for root in args.data for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    rows = []
    for n, case in enumerate(tqdm(cases, desc="input gate", unit="case")):
        kind = "tumour" if "_t0" in case.name else "healthy"
        images = {c: load_volume(case / f"{case.name}_{c}.nii.gz") for c in CONTRASTS}
        inputs = {c: images[c] for c in CONTRASTS}
        if n < args.fakes:
            inputs.update({name: (fake, images["t1"][1]) for name, fake in fakes(images["t1"][0], n).items()})
        for given, (image, affine) in inputs.items():
            for declared in CONTRASTS:
                row = {"case": case.name, "kind": kind if given in CONTRASTS else "not a brain", "input": given,
                       "declared": declared, **judge(gate, banks[declared], declared, image, affine)}
                rows.append(row)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1), encoding="utf-8")
    groups = {}
    for row in rows:
        match = "right contrast" if row["input"] == row["declared"] else (
            "other contrast" if row["input"] in CONTRASTS else row["input"])
        groups.setdefault((row["kind"], match), []).append(row["verdict"])
    print("| inputs | given to | n | refused | warned | passed |\n|---|---|---|---|---|---|")
    for (kind, match), verdicts in sorted(groups.items()):
        print(f"| {kind} | {match} | {len(verdicts)} | {verdicts.count('refused')} | {verdicts.count('warned')} | "
              f"{verdicts.count('passed')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
