"""The OOD map under a change of scanner (docs/BENCHMARK.md section 9).

    for a in training spin_echo long_ti strong_bias low_snr high_snr; do
        localdiffusion phantom --out data/shift/$a --split test --healthy 4 --tumour 6 --seed 0 --acquisition $a
    done
    localdiffusion phantom --out data/shift/1mm --split test --healthy 4 --tumour 6 --seed 0 --spacing 1
    python benchmarks/ood_shift.py --shift-root data/shift --val data/bench_val --contrasts t1 --out docs/benchmark/ood_shift_t1.json

Every variant holds the same test subjects scanned differently (``training`` is the training
distribution, the in-domain reference). For each contrast's shipped bank and each variant:

* lesion pixel AUROC: tumour label against the rest of the brain, pooled over the tumour cases;
* healthy flagged: the fraction of healthy brain voxels at or above the bank's default
  threshold, pooled over the healthy cases;

for three ways of turning PatchCore's patch distances into a probability:

* ``shipped``: the bank's calibration (healthy *validation* distances -> probability);
* ``self``: per-volume self-calibration: each volume's distances are standardised by its own
  brain median and MAD before a calibration fitted on the healthy validation volumes'
  standardised distances (a scanner that moves every distance moves the median with it);
* ``standardised``: the input's brain intensities are first mapped to the training
  distribution's percentiles (piecewise linear, Nyul-style landmarks 1, 5, 10, ..., 95, 99),
  then ``self``.

Validation (for the calibrations and the landmarks): the healthy cases of ``--val``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import read_case
from localdiffusion.ood.anomaly_map import Calibration
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

LANDMARKS = np.array([1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99], np.float64)
MODES = ("shipped", "self", "standardised")


#: every second brain slice is scored (half the time; neighbouring 2 mm slices are alike)
SLICE_STRIDE = 2


def raw_scores(bank: PatchCore, image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Pixel distances (X, Y, Z) on the slices with brain (``volumes`` keeps every ``SLICE_STRIDE``-th), 0 elsewhere."""
    ks = np.flatnonzero(brain.any((0, 1)))
    slices, masks = np.moveaxis(image[:, :, ks], 2, 0), np.moveaxis(brain[:, :, ks], 2, 0)
    out = np.zeros(image.shape, np.float32)
    out[:, :, ks] = np.moveaxis(bank.score(slices, masks, image=False).pixel, 0, 2)
    return out


def standardise_scores(scores: np.ndarray, brain: np.ndarray) -> np.ndarray:
    values = scores[brain]
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median)) + 1e-8
    return (scores - median) / mad


def landmarks(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return np.percentile(image[brain], LANDMARKS)


def standardise_intensities(image: np.ndarray, brain: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of this volume's brain percentiles onto the reference ones."""
    own = landmarks(image, brain)
    own = np.maximum.accumulate(own + np.arange(len(own)) * 1e-6)  # strictly increasing
    slope_lo = (reference[1] - reference[0]) / max(own[1] - own[0], 1e-6)
    slope_hi = (reference[-1] - reference[-2]) / max(own[-1] - own[-2], 1e-6)
    mapped = np.interp(image, own, reference)
    mapped = np.where(image < own[0], reference[0] + (image - own[0]) * slope_lo, mapped)
    mapped = np.where(image > own[-1], reference[-1] + (image - own[-1]) * slope_hi, mapped)
    return np.where(brain, np.clip(mapped, 0.0, 1.0), 0.0).astype(np.float32)


def volumes(folder: Path, split: str, kind: str, contrast: str, bank: PatchCore):
    """(case id, image, brain restricted to the scored slices, labels) of each case."""
    for path in cases_in_split(folder, split, kind):
        prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
        scored = np.zeros_like(prepared.brain)
        ks = np.flatnonzero(prepared.brain.any((0, 1)))[::SLICE_STRIDE]
        scored[:, :, ks] = prepared.brain[:, :, ks]
        yield prepared.case_id, prepared.images[contrast], scored, prepared.seg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift-root", type=Path, default=Path("data/shift"))
    ap.add_argument("--val", type=Path, default=Path("data/bench_val"))
    ap.add_argument("--contrasts", nargs="+", default=["t1", "flair"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    variants = sorted(p.name for p in args.shift_root.iterdir() if (p / "manifest.json").exists())
    variants = ["training"] + [v for v in variants if v != "training"]
    result = {"command": "python " + " ".join(sys.argv), "variants": variants, "contrasts": {}}
    for contrast in args.contrasts:
        bank = PatchCore.load(ood_bank_path(MODELS_ROOT, contrast), modality=contrast, model_root=MODELS_ROOT)
        # validation: landmarks of the training distribution, self-calibrations
        val = list(tqdm(volumes(args.val, "val", "healthy", contrast, bank), desc=f"{contrast} val", unit="case"))
        reference = np.mean([landmarks(img, brain) for _, img, brain, _ in val], axis=0)
        self_cal = Calibration.fit(np.concatenate(
            [standardise_scores(raw_scores(bank, img, brain), brain)[brain] for _, img, brain, _ in val]))
        std_cal = Calibration.fit(np.concatenate(
            [standardise_scores(raw_scores(bank, standardise_intensities(img, brain, reference), brain), brain)[brain]
             for _, img, brain, _ in val]))
        rows = {}
        for variant in variants:
            folder = args.shift_root / variant
            per = {m: {"labels": [], "scores": [], "healthy": []} for m in MODES}
            for kind in ("tumour", "healthy"):
                for case_id, img, brain, seg in tqdm(volumes(folder, "test", kind, contrast, bank),
                                                     desc=f"{contrast} {variant} {kind}", unit="case"):
                    raw = raw_scores(bank, img, brain)
                    raw_std = raw_scores(bank, standardise_intensities(img, brain, reference), brain)
                    probs = {"shipped": bank.pixel_calibration.probability(raw),
                             "self": self_cal.probability(standardise_scores(raw, brain)),
                             "standardised": std_cal.probability(standardise_scores(raw_std, brain))}
                    for mode, p in probs.items():
                        if kind == "tumour":
                            per[mode]["labels"].append(seg[brain] > 0)
                            per[mode]["scores"].append(p[brain])
                        else:
                            per[mode]["healthy"].append(p[brain] >= bank.threshold)
            rows[variant] = {}
            for mode, d in per.items():
                y, s = np.concatenate(d["labels"]), np.concatenate(d["scores"])
                rows[variant][mode] = {"lesion_auroc": float(roc_auc_score(y, s)),
                                       "healthy_flagged": float(np.concatenate(d["healthy"]).mean()),
                                       "tumour_cases": len(d["labels"]), "healthy_cases": len(d["healthy"])}
            print(contrast, variant, json.dumps(rows[variant]), flush=True)
        result["contrasts"][contrast] = {"threshold": bank.threshold, "rows": rows, "val_cases": len(val)}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    """docs/BENCHMARK.md section 9: per contrast, lesion AUROC / healthy flagged per variant and mode."""
    lines = []
    for contrast, part in result["contrasts"].items():
        lines += [f"{contrast.upper()} bank (threshold {part['threshold']:.3f}; lesion pixel AUROC / healthy brain "
                  f"flagged):", "", "| variant | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
        for variant, modes in part["rows"].items():
            lines.append(f"| {variant} | " + " | ".join(
                f"{modes[m]['lesion_auroc']:.3f} / {100 * modes[m]['healthy_flagged']:.1f}%" for m in MODES) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
