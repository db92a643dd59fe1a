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

Both are the product's :class:`~localdiffusion.ood.robust.RobustCalibration` (``localdiffusion ood
map --robust``), fitted here on the same healthy validation volumes and slices.

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
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import CALIBRATION_SLICE_STRIDE, RobustCalibration, distance_volume, strided_brain
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

MODES = ("shipped", "self", "standardised")


#: every second brain slice is scored, as the product's robust calibrations are fitted
SLICE_STRIDE = CALIBRATION_SLICE_STRIDE


def volumes(folder: Path, split: str, kind: str, contrast: str, bank: PatchCore):
    """(case id, image, brain restricted to the scored slices, labels) of each case."""
    for path in cases_in_split(folder, split, kind):
        prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
        yield prepared.case_id, prepared.images[contrast], strided_brain(prepared.brain, SLICE_STRIDE), prepared.seg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift-root", type=Path, default=Path("data/shift"))
    ap.add_argument("--val", type=Path, default=Path("data/bench_val"))
    ap.add_argument("--contrasts", nargs="+", default=["t1", "flair"])
    ap.add_argument("--split", default="test", help="the variants' split (val variants to choose, test to report)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    variants = sorted(p.name for p in args.shift_root.iterdir() if (p / "manifest.json").exists())
    variants = ["training"] + [v for v in variants if v != "training"]
    result = {"command": "python " + " ".join(sys.argv), "variants": variants, "contrasts": {}}
    for contrast in args.contrasts:
        bank = PatchCore.load(ood_bank_path(MODELS_ROOT, contrast), modality=contrast, model_root=MODELS_ROOT)
        # validation: the product's robust calibrations (ood/robust.py), without and with standardisation
        val = [(img, brain) for _, img, brain, _ in
               tqdm(volumes(args.val, "val", "healthy", contrast, bank), desc=f"{contrast} val", unit="case")]
        self_cal = RobustCalibration.fit(bank, val, standardise=False)
        std_cal = RobustCalibration.fit(bank, val, standardise=True)
        rows = {}
        for variant in variants:
            folder = args.shift_root / variant
            per = {m: {"labels": [], "scores": [], "healthy": []} for m in MODES}
            for kind in ("tumour", "healthy"):
                for case_id, img, brain, seg in tqdm(volumes(folder, args.split, kind, contrast, bank),
                                                     desc=f"{contrast} {variant} {kind}", unit="case"):
                    raw = distance_volume(bank, img, brain)  # shared by the bank's calibration and self
                    probs = {"shipped": bank.pixel_calibration.probability(raw),
                             "self": self_cal.from_distances(raw, brain),
                             "standardised": std_cal.probability(bank, img, brain)}
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
