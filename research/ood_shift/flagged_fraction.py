"""How much of a case's healthy brain and of its tumour a written map flags (research/RECORD.md section 9g):
for each map file of a `localdiffusion run` output folder (the OOD probability, the OOD mask, the risk map), the
fraction of the healthy brain (the case's brain mask minus its tumour label) and of the tumour at or above the
threshold (0.99 for probabilities and risk: 1% of healthy validation voxels; 0.5 for the mask).

    localdiffusion run --input data/shift/spin_echo/ld0_test_t0001/ld0_test_t0001_t1.nii.gz --out-dir OUT
    python -m research.ood_shift.flagged_fraction --case data/shift/spin_echo/ld0_test_t0001 --contrast t1 --outputs OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib

from localdiffusion.options import FLAG_THRESHOLD, output_suffix

MAPS = {"ood": FLAG_THRESHOLD, "ood_mask": 0.5, "risk": FLAG_THRESHOLD}


def read(path: Path):
    return nib.load(str(path)).get_fdata()  # not data.io.load_volume: a healthy case's label map is all zero


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=Path, required=True, help="a phantom case folder (its _mask and _seg files)")
    ap.add_argument("--contrast", required=True, choices=["t1", "flair"], help="the contrast given to `run`")
    ap.add_argument("--outputs", type=Path, required=True, help="the `run` output folder")
    args = ap.parse_args(argv)
    name = args.case.name
    brain = read(args.case / f"{name}_mask.nii.gz") > 0
    tumour = (read(args.case / f"{name}_seg.nii.gz") > 0) & brain
    direction = "t1_to_flair" if args.contrast == "t1" else "flair_to_t1"
    for output, threshold in MAPS.items():
        path = args.outputs / f"{name}_{args.contrast}_{output_suffix(output, direction)}.nii.gz"
        if not path.exists():
            continue
        flagged = read(path) >= threshold
        covered = f"{100 * flagged[tumour].mean():.1f}%" if tumour.any() else "-"
        print(f"{output} (>= {threshold}): healthy brain flagged {100 * flagged[brain & ~tumour].mean():.1f}%, "
              f"tumour covered {covered}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
