"""Does the product say when its maps cannot be read? The input gate's map-reliability check
(the median OOD probability of the brain, ``detectors/input_gate.py``) on in-domain test cases
and on the acquisition-shifted variants of research/RECORD.md section 9.

    python -m research.input_gate.gate_shift --data data/bench_test data/gate_test_healthy data/shift/* \\
        --out research/results/gate_shift.json

Every case's T1 and FLAIR are given to their own contrast's gate exactly as ``translate`` does
(every third brain slice mapped by the shipped bank; the shipped ``input_gate.json``). Per
folder and contrast: cases, how many the gate refuses / warns about, how many it declares
unreadable for the maps, and the range of the typical probability and of the flagged fraction.
The policy thresholds (``UNRELIABLE_TYPICAL``, ``FIELD_MARGIN``) are fixed in the code, not fitted here.
Section 9f (the coil-field check) on the in-domain test subjects and every shifted test variant (seed 0 and 1
pooled by variant name; data/phantom_test links data/phantom's test cases):

    mkdir -p data/phantom_test && ln -sf ../phantom/ld0_test_* data/phantom_test/
    python -m research.input_gate.gate_shift --data data/phantom_test data/shift/* data/shift2/* --out research/results/gate_field.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from input_gate import CONTRASTS, judge
from tqdm import tqdm

from localdiffusion.data.io import atomic_path, load_volume
from localdiffusion.detectors.input_gate import GATE_FILE, UNRELIABLE_TYPICAL, InputGate
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=MODELS_ROOT)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    gate = InputGate.load(args.models / GATE_FILE)
    banks = {c: PatchCore.load(ood_bank_path(args.models, c), modality=c, model_root=args.models) for c in CONTRASTS}
    rows = []
    for folder in args.data:
        cases = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for case in tqdm(cases, desc=folder.name, unit="case"):
            for contrast in CONTRASTS:
                image, affine = load_volume(case / f"{case.name}_{contrast}.nii.gz")
                rows.append({"folder": str(folder), "case": case.name, "contrast": contrast,
                             "kind": "tumour" if "_t0" in case.name else "healthy",
                             **judge(gate, banks[contrast], contrast, image, affine)})
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "unreliable_typical": UNRELIABLE_TYPICAL,
                                   "rows": rows}, indent=1), encoding="utf-8")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    lines = ["| folder | contrast | cases | refused | warned | maps unreadable | coil field named | typical (min-max) "
             "| flagged (min-max) | field (min-max) |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((Path(row["folder"]).name, row["contrast"]), []).append(row)
    for (folder, contrast), group in groups.items():
        typical = np.array([r["typical"] for r in group])
        flagged = np.array([r["flagged"] for r in group])
        fields = np.array([r.get("field") or np.nan for r in group])
        lines.append(f"| {folder} | {contrast} | {len(group)} | {sum(r['verdict'] == 'refused' for r in group)} | "
                     f"{sum(r['verdict'] == 'warned' for r in group)} | {sum(r['map_reliable'] is False for r in group)} "
                     f"| {sum(bool(r.get('field_warned')) for r in group)} | {typical.min():.2f}-{typical.max():.2f} "
                     f"| {100 * flagged.min():.1f}-{100 * flagged.max():.1f}% | {np.nanmin(fields):.3f}-"
                     f"{np.nanmax(fields):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
