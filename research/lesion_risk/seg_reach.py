"""How much of the lesions a tumour U-Net reaches at the level that flags 1% of healthy brain::

    python -m research.lesion_risk.seg_reach --segmenter runs/seg_t1_broad \
        --healthy data/families_mprage/{glioma,metastasis,ms} data/families_spin_echo/{glioma,metastasis,ms} \
        --cohorts data/seg_train/metastasis_mprage:train data/families_mprage/metastasis:val

The level is the 99th percentile of the U-Net's tumour probability (``1 - P(background)``, the product's ``tumour``
detector) over the brain voxels of the ``--healthy`` folders' healthy *validation* cases, on the working grid. Per
cohort (``FOLDER:SPLIT``, its tumour cases): the fraction of lesion voxels at or above the level and of healthy
brain voxels (outside every label) at or above it. A diagnostic of round 6 (README), not a yardstick.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.volume.cohort import load_slice_set


def probabilities(segmenter, slices: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The tumour probability of every pixel of ``slices`` (N, H, W) (:meth:`Segmenter.tumour_probability`)."""
    x = torch.as_tensor(slices[:, None])
    return np.concatenate([segmenter.tumour_probability(x[i:i + batch_size]).numpy()
                           for i in range(0, len(x), batch_size)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.seg_reach", description=__doc__.splitlines()[0])
    p.add_argument("--segmenter", type=Path, required=True)
    p.add_argument("--healthy", type=Path, nargs="+", required=True)
    p.add_argument("--cohorts", nargs="+", required=True, metavar="FOLDER:SPLIT")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    seg = load_segmenter(args.segmenter)
    cfg = seg.config
    grid = {"spacing": cfg.spacing_mm, "in_plane": cfg.in_plane}
    healthy = [load_slice_set(f, "val", (cfg.modality,), kind="healthy", **grid) for f in args.healthy]
    level = float(np.quantile(np.concatenate([probabilities(seg, s.images[cfg.modality])[s.brain] for s in healthy]),
                              0.99))
    rows = {"segmenter": str(args.segmenter), "level": level, "cohorts": {}}
    print(f"level (1% of healthy validation brain): {level:.4f}")
    for item in args.cohorts:
        folder, split = item.rsplit(":", 1)
        s = load_slice_set(folder, split, (cfg.modality,), kind="tumour", **grid)
        prob = probabilities(seg, s.images[cfg.modality])
        lesion, rest = s.seg > 0, s.brain & (s.seg == 0)
        rows["cohorts"][item] = {"lesion_voxels_reached": float((prob[lesion] >= level).mean()),
                                 "healthy_voxels_reached": float((prob[rest] >= level).mean()),
                                 "cases": int(len(set(s.case_ids)))}
        r = rows["cohorts"][item]
        print(f"{item}: {r['cases']} cases, lesion voxels reached {r['lesion_voxels_reached']:.3f}, healthy brain "
              f"{r['healthy_voxels_reached']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
