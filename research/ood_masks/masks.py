"""How well the branching mask follows the lesion: the yardstick for tight OOD masks.

Per tumour case and source contrast, the mask the main job writes and Local Diffusion branches on
(the acquisition-robust OOD map of the source, thresholded at its calibrated level and
post-processed exactly as ``run`` does: :func:`~localdiffusion.methods.local_diffusion.branch_weight_volume`)
against the true lesion (BraTS labels > 0) on the working grid::

    python -m research.ood_masks.masks --data data/bench_val --split val --out research/results/ood_masks_val.json

Figures per case: the mask's Dice with the lesion, the mask's volume over the lesion's, the
fraction of the healthy brain inside the mask, the fraction of each lesion label (1 necrosis,
2 oedema, 4 enhancing) inside it, the healthy brain at probability >= 0.99 and the voxel AUROC of
the probability for the lesion; means over cases with 95% bootstrap intervals over cases.
A reference row checks that the measure can show the effect: the true lesion as the mask (Dice 1,
no healthy brain) and the lesion dilated by 3 voxels (a halo: volume ratio > 1, Dice < 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import read_case
from localdiffusion.methods.local_diffusion import LocalDiffusionConfig, branch_weight_volume
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.postprocess import level_set
from localdiffusion.ood.robust import RobustCalibration, distance_volume, standardise_scores
from localdiffusion.ood.volume import OodMap, bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path, robust_calibration_path
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

CONTRASTS = ("t1", "flair")  # the contrasts with a shipped OOD bank
LABELS = {1: "necrosis", 2: "oedema", 4: "enhancing"}


def mask_figures(mask: np.ndarray, seg: np.ndarray, brain: np.ndarray, probability: np.ndarray | None = None) -> dict:
    """The mask against the lesion (``seg`` > 0) inside ``brain``.

    Returns:
        dice, volume_ratio, healthy_in_mask, per-label coverage, and with ``probability``
        healthy_flagged (>= 0.99) and auroc.
    """
    mask, lesion, brain = mask.astype(bool) & brain, seg > 0, brain.astype(bool)
    healthy = brain & ~lesion
    out = {"dice": float(2 * (mask & lesion).sum() / max(mask.sum() + lesion.sum(), 1)),
           "volume_ratio": float(mask.sum() / max(lesion.sum(), 1)),
           "healthy_in_mask": float((mask & healthy).sum() / max(healthy.sum(), 1))}
    for label, name in LABELS.items():
        if (seg == label).any():
            out[f"covers_{name}"] = float((mask & (seg == label)).sum() / (seg == label).sum())
    if probability is not None:
        out["healthy_flagged"] = float((probability[healthy] >= 0.99).mean())
        out["auroc"] = float(roc_auc_score(lesion[brain], probability[brain]))
    return out


def bootstrap(values: list[float], n: int = 10_000, seed: int = 0) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if len(v) < 2:
        return {"mean": float(v.mean()) if len(v) else float("nan"), "low": float("nan"), "high": float("nan")}
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    return {"mean": float(v.mean()), "low": float(np.percentile(means, 2.5)), "high": float(np.percentile(means, 97.5)),
            "cases": len(v)}


def figures_text(figures: dict) -> str:
    """``name mean [low, high]`` for each bootstrapped figure."""
    return ", ".join(f"{k} {v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in figures.items())


def write_result(out: Path, result: dict) -> None:
    """Write a study's result JSON atomically and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.ood_masks.masks", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="cohort with tumour cases (phantom manifest)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--contrasts", nargs="+", default=list(CONTRASTS), choices=list(CONTRASTS))
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--levels", type=float, nargs="*", default=[],
                   help="also score tighter candidate masks: each component's level set at these fractions "
                        "between its lowest and highest standardised distance (localdiffusion.ood.postprocess.level_set)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    cases = cases_in_split(args.data, args.split, "tumour")[:args.max_cases]
    result = {"data": str(args.data), "split": args.split, "cases": [c.name for c in cases],
              "command": "python -m research.ood_masks.masks " + " ".join(sys.argv[1:] if argv is None else argv),
              "per_case": {}, "summary": {}}
    for contrast in args.contrasts:
        bank_path = ood_bank_path(MODELS_ROOT, contrast)
        bank = PatchCore.load(bank_path, modality=contrast, model_root=MODELS_ROOT)
        robust = RobustCalibration.load(robust_calibration_path(bank_path))
        rows = {"product mask": {}, "reference: the lesion": {}, "reference: the lesion dilated by 3 voxels": {},
                **{f"level set {level:g}": {} for level in args.levels}}
        for path in tqdm(cases, desc=f"masks {contrast}", unit="case"):
            prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
            brain, seg = prepared.brain.astype(bool), prepared.seg
            seen = robust.backbone_input(bank, prepared.images[contrast], prepared.brain, prepared.brain)
            distances = distance_volume(bank, seen, prepared.brain)  # what robust.probability computes
            score = standardise_scores(distances, prepared.brain)
            ood = OodMap(robust.from_distances(distances, prepared.brain), robust.threshold)
            mask = branch_weight_volume(ood, LocalDiffusionConfig(mask_mode="hard"), prepared.brain) >= 0.5
            rows["product mask"][path.name] = mask_figures(mask, seg, brain, ood.probability)
            for level in args.levels:
                rows[f"level set {level:g}"][path.name] = mask_figures(level_set(mask, score, level), seg, brain)
            rows["reference: the lesion"][path.name] = mask_figures(seg > 0, seg, brain)
            rows["reference: the lesion dilated by 3 voxels"][path.name] = mask_figures(
                binary_dilation(seg > 0, iterations=3), seg, brain)
        result["per_case"][contrast] = rows
        result["summary"][contrast] = {
            row: {k: bootstrap([c.get(k, float("nan")) for c in per.values()])
                  for k in sorted({k for c in per.values() for k in c})} for row, per in rows.items()}
        for row, figures in result["summary"][contrast].items():
            print(f"{contrast} {row}: {figures_text(figures)}", flush=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
