"""What the source T1 shows of each MS-like lesion, beside whether the risk map flags it::

    python -m research.lesion_risk.t1_contrast --direction t1_to_flair \
        --calibration monai_bundle/models/t1_to_flair/risk_calibration.json \
        --subjects t0000 t0001 t0002 t0021 t0022 t0023 --out research/results/lesion_t1_contrast.json

Each subject is generated again from its manifest entry (the same seed gives the same subject) to read the T1
before noise and the voxels that are pure tissue. Per lesion of the yardstick (a lesion-label component of at
least 0.1 ml on the working grid), on the 1 mm grid of the written files: its **contrast** is the mean noise-free T1
over the lesion's voxels over the mean noise-free T1 of the pure white matter within 10 mm of it, minus 1; its
**CNR** is the same difference over the standard deviation of the scan's noise (the generator's Rician sigma,
the scan's mean brain signal over its SNR). Beside it, the yardstick's verdict on the cached translation and
risk map (score's cache): misrepresented, flagged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from localdiffusion.detectors.risk import RiskCalibration
from localdiffusion.phantom.dataset import acquisition_settings
from localdiffusion.phantom.generate import generate_case
from research.lesion_risk import score
from research.lesion_risk.yardstick import THRESHOLD, gross_errors, judge_lesions, lesions

NEAR_MM = 10.0
WHITE_MATTER = 1  # PhantomCase.pure_tissue: index into the tissue order (wm first) plus one


def lesion_contrasts(entry: dict, t1_sequence: str, centres_ras: list[np.ndarray], written_seg: Path) -> list[dict]:
    """Contrast and CNR (module docstring) of the lesion nearest each of ``centres_ras`` (RAS mm); the subject
    generated again must have the lesion labels of ``written_seg``."""
    case = generate_case(entry["case_seed"], tumour=True, spacing=entry["spacing_mm"],
                         acquisition=acquisition_settings("training", t1_sequence), family=entry["family"],
                         grid=entry["grid"])  # as write_cohort made it
    if not np.array_equal(case.seg, np.asarray(nib.load(str(written_seg)).dataobj)):
        raise RuntimeError(f"{written_seg}: the subject generated again differs from the written one")
    clean, mask = case.noise_free["t1"], case.brain_mask > 0
    sigma = float(clean[mask].mean()) / float(entry["snr"]["t1"])
    components, _ = ndimage.label(case.seg > 0, structure=np.ones((3, 3, 3), bool))
    wm = case.pure_tissue == WHITE_MATTER
    to_voxel = np.linalg.inv(case.affine)
    spacing = float(entry["spacing_mm"])
    out = []
    for centre in centres_ras:
        ijk = np.round((to_voxel @ np.r_[centre, 1.0])[:3]).astype(int)
        label = components[tuple(np.clip(ijk, 0, np.array(components.shape) - 1))]
        if label == 0:  # the centre of a curved lesion may lie outside it: the nearest lesion voxel's component
            points = np.argwhere(components > 0)
            label = components[tuple(points[np.argmin(((points - ijk) ** 2).sum(1))])]
        lesion = components == label
        near = ndimage.distance_transform_edt(~lesion) * spacing <= NEAR_MM
        ring = near & wm & (case.seg == 0)
        difference = float(clean[lesion].mean() - clean[ring].mean())
        out.append({"contrast": difference / float(clean[ring].mean()), "cnr": difference / sigma,
                    "white_matter_voxels": int(ring.sum())})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.t1_contrast", description=__doc__.splitlines()[0])
    p.add_argument("--direction", default="t1_to_flair", choices=["t1_to_flair"])
    p.add_argument("--cache", type=Path, default=Path("data/lesion_risk"))
    p.add_argument("--calibration", type=Path, required=True)
    p.add_argument("--family", default="ms")
    p.add_argument("--subjects", nargs="+", required=True, help="tumour subjects (t0000 ...), validation and test")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    calibration = RiskCalibration.load(args.calibration)
    folder = args.cache / args.direction
    level = score.gross_error_level([c for c in score.load_cache(folder, "val") if c["healthy"]])
    rows = []
    for case in score.load_cache(folder):
        if case["healthy"] or case["family"] != args.family or not any(case["name"].endswith(s) for s in args.subjects):
            continue
        spacing = case["meta"]["spacing_mm"]
        risk = score.risk_of(case, "file", {"file": calibration}, calibration)
        gross = gross_errors(case["local"], case["truth"], case["brain"], case["seg"], spacing, level)
        verdicts = judge_lesions(gross, (risk >= THRESHOLD) & case["brain"], case["seg"], spacing)
        centres = [(case["affine"] @ np.r_[ndimage.center_of_mass(m), 1.0])[:3] for m in lesions(case["seg"], spacing)]
        cohort = score.COHORTS_ROOT / f"families_{case['kind']}" / args.family
        entry = next(e for e in json.loads((cohort / "manifest.json").read_text())["cases"]
                     if e["case_id"] == case["meta"]["case"])
        written = cohort / entry["case_id"] / f"{entry['case_id']}_seg.nii.gz"
        for verdict, measured in zip(verdicts, lesion_contrasts(entry, case["kind"], centres, written)):
            rows.append({"case": case["name"], "kind": case["kind"], "split": entry["split"],
                         "volume_ml": verdict.voxels * spacing ** 3 / 1000.0, "misrepresented": verdict.misrepresented,
                         "flagged": verdict.flagged, **{k: round(v, 4) for k, v in measured.items()}})
        print(f"{case['name']}: " + ", ".join(f"{r['contrast']:+.3f}{'*' if r['flagged'] else '-' if r['misrepresented'] else ''}"
                                              for r in rows if r["case"] == case["name"]), flush=True)
    bins = [(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, float("inf"))]
    summary = {}
    for kind in ("mprage", "spin_echo"):
        for low, high in bins:
            chosen = [r for r in rows if r["kind"] == kind and r["misrepresented"] and low <= abs(r["cnr"]) < high]
            summary[f"{kind} |CNR| {low:g}-{high:g}"] = {"misrepresented": len(chosen),
                                                        "flagged": sum(r["flagged"] for r in chosen)}
    for key, value in summary.items():
        print(f"{key}: {value['flagged']} of {value['misrepresented']} misrepresented lesions flagged")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m research.lesion_risk.t1_contrast " + " ".join(argv or []),
                                    "summary": summary, "lesions": rows}, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
