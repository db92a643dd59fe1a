"""Where a risk map flags healthy brain on the validation cases: by distance to the nearest lesion voxel::

    python -m research.lesion_risk.near_lesion --direction t1_to_flair \
        --calibration monai_bundle/models/t1_to_flair/risk_calibration.json --segmenter monai_bundle/models/lesion_t1

Healthy brain = brain outside every lesion label (as the yardstick's); flagged = risk >= 0.99. Prints, for the
tumour cases, the flagged healthy voxels within 0-2, 2-4, 4-8 and beyond 8 mm of a lesion as fractions of their
whole healthy brain, and the healthy cases' fraction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scipy import ndimage

from localdiffusion.detectors.risk import RiskCalibration
from research.lesion_risk import score
from research.lesion_risk.yardstick import THRESHOLD

BANDS_MM = ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, float("inf")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.near_lesion", description=__doc__.splitlines()[0])
    p.add_argument("--direction", required=True, choices=["t1_to_flair", "flair_to_t1"])
    p.add_argument("--cache", type=Path, default=Path("data/lesion_risk"))
    p.add_argument("--calibration", type=Path, required=True)
    p.add_argument("--segmenter", type=Path, required=True, help="the U-Net the calibration's tumour detector reads")
    p.add_argument("--collected-with", type=Path, default=None,
                   help="the calibration the cache was collected with (score's --collected-with)")
    args = p.parse_args(argv)
    calibration = RiskCalibration.load(args.calibration)
    collected = RiskCalibration.load(args.collected_with or args.calibration)
    score.CALIBRATION_SEGMENTER["file"] = args.segmenter
    flagged_in = {band: 0 for band in BANDS_MM}
    healthy_tumour = flagged_healthy = healthy_cases = 0
    for case in score.load_cache(args.cache / args.direction, "val"):
        risk = score.risk_of(case, "file", {"file": calibration}, collected)
        healthy = case["brain"] & (case["seg"] == 0)
        flagged = healthy & (risk >= THRESHOLD)
        if case["healthy"]:
            flagged_healthy, healthy_cases = flagged_healthy + int(flagged.sum()), healthy_cases + int(healthy.sum())
            continue
        distance = ndimage.distance_transform_edt(case["seg"] == 0) * case["meta"]["spacing_mm"]
        healthy_tumour += int(healthy.sum())
        for low, high in BANDS_MM:
            flagged_in[(low, high)] += int((flagged & (distance > low) & (distance <= high)).sum())
    total = sum(flagged_in.values())
    print(f"tumour cases: {total / healthy_tumour:.2%} of healthy brain flagged; by distance to a lesion: " +
          ", ".join(f"{low:g}-{high:g} mm {n / healthy_tumour:.2%}" for (low, high), n in flagged_in.items()))
    print(f"healthy cases: {flagged_healthy / max(healthy_cases, 1):.2%} of the brain flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
