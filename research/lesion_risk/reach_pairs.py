"""Two tumour U-Nets' reach on the same lesion subjects, paired (the grid diagnostic of round 10, README)::

    python -m research.lesion_risk.reach_pairs \
        --a runs/ms_t1_1mm=research/results/seg_reach_ms_t1_1mm.json \
        --b runs/ms_t1_2mm=research/results/seg_reach_ms_t1_2mm.json \
        --cohorts data/families_mprage/ms:val data/families_spin_echo/ms:val

Each U-Net at the level its ``seg_reach`` report fixed (1% of healthy validation brain), on its own grid. Per case:
the lesion voxels at or above the level. Pooled: A's fraction minus B's, with a 95% interval from resampling
*subjects* with replacement (a subject is its case id: the same subject scanned with two T1 kinds is one draw).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.volume.cohort import load_slice_set
from research.lesion_risk.seg_reach import probabilities


def reached(segmenter_dir: Path, report: Path, cohorts: list[str]) -> dict[str, list[int]]:
    """Case id -> [lesion voxels reached, lesion voxels], summed over the cohorts (the same subject in several)."""
    segmenter = load_segmenter(segmenter_dir)
    cfg = segmenter.config
    level = json.loads(report.read_text(encoding="utf-8"))["level"]
    counts: dict[str, list[int]] = {}
    for item in cohorts:
        folder, split = item.rsplit(":", 1)
        s = load_slice_set(folder, split, (cfg.modality,), kind="tumour", spacing=cfg.spacing_mm, in_plane=cfg.in_plane)
        prob = probabilities(segmenter, s.images[cfg.modality])
        for case in sorted(set(s.case_ids)):
            rows = s.case_ids == case
            lesion = s.seg[rows] > 0
            total = counts.setdefault(str(case), [0, 0])
            total[0] += int((prob[rows][lesion] >= level).sum())
            total[1] += int(lesion.sum())
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.reach_pairs", description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, metavar="SEGMENTER=REPORT")
    p.add_argument("--b", required=True, metavar="SEGMENTER=REPORT")
    p.add_argument("--cohorts", nargs="+", required=True, metavar="FOLDER:SPLIT")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sides = [reached(*map(Path, side.split("=", 1)), args.cohorts) for side in (args.a, args.b)]
    cases = sorted(sides[0])
    x = np.array([[*sides[0][c], *sides[1][c]] for c in cases], float)
    for case, row in zip(cases, x):
        print(f"{case}: A {row[0]:.0f} of {row[1]:.0f}, B {row[2]:.0f} of {row[3]:.0f}")
    share = lambda rows: rows[:, 0].sum() / rows[:, 1].sum() - rows[:, 2].sum() / rows[:, 3].sum()  # noqa: E731
    rng = np.random.default_rng(args.seed)
    draws = [share(x[rng.integers(0, len(x), len(x))]) for _ in range(4000)]
    print(f"pooled: A {x[:, 0].sum() / x[:, 1].sum():.3f}, B {x[:, 2].sum() / x[:, 3].sum():.3f}, A - B {share(x):+.3f} "
          f"[{np.percentile(draws, 2.5):+.3f}, {np.percentile(draws, 97.5):+.3f}] ({len(cases)} subjects)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
