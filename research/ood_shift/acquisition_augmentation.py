"""Look at the acquisition augmentation (volume/acquisition.py) before trusting a bank built with it
(research/RECORD.md section 9e): one case's image and a few augmented copies in three planes.

    python -m research.ood_shift.acquisition_augmentation --case data/phantom/ld0_train_h0000 --contrast t1 \
        --out research/results/acquisition_augmentation_t1.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from research.bench.figures import PlaneRow, plane_grid
from localdiffusion.data.io import save_png
from localdiffusion.data.readers import read_case
from localdiffusion.volume.acquisition import augment_acquisition
from localdiffusion.volume.grid import prepare_case


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=Path, required=True)
    ap.add_argument("--contrast", default="t1")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    prepared = prepare_case(read_case(args.case, (args.contrast,)))
    image, brain = prepared.images[args.contrast], prepared.brain
    rng = np.random.default_rng(args.seed)
    rows = [PlaneRow(f"{args.case.name} as scanned", image)]
    rows += [PlaneRow(f"augmented copy {i + 1}", augment_acquisition(image, brain, args.contrast, rng))
             for i in range(args.copies)]
    centre = [int(np.round(np.mean(ax))) for ax in np.nonzero(brain)]
    save_png(args.out, plane_grid(rows, centre, f"{args.contrast.upper()} acquisition augmentation (seed {args.seed})"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
