"""Tumour Dice of the shipped segmentation U-Nets on the *true* images (the upper bound).

    python -m research.ceiling.seg_upper_bound --data data/phantom [--split test]

Whole-tumour Dice (labels > 0) pooled over all brain slices of the split's tumour cases, and
over the slices whose tumour covers at least 1% of the slice (the benchmark's slices).
"""

from __future__ import annotations

import argparse

from research.bench.matrix import MIN_TUMOUR_FRACTION
from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.training.segmenter import tumour_dice
from localdiffusion.volume.cohort import load_slice_set


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/phantom")
    p.add_argument("--split", default="test")
    args = p.parse_args()
    for modality in ("flair", "t1"):
        seg = load_segmenter(MODELS_ROOT / f"seg_{modality}")
        cases = load_slice_set(args.data, args.split, (modality,), kind="tumour")
        truth = cases.seg > 0
        big = truth.reshape(len(truth), -1).mean(1) >= MIN_TUMOUR_FRACTION
        print(f"{modality}: {len(truth)} slices Dice {tumour_dice(seg, cases.images[modality], truth):.3f}; "
              f"{int(big.sum())} slices with >= 1% tumour Dice "
              f"{tumour_dice(seg, cases.images[modality][big], truth[big]):.3f}")


if __name__ == "__main__":
    main()
