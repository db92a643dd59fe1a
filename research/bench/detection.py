"""Detection metrics for OOD maps against tumour labels (pDDPM-style protocol).

Pixel AUROC and AUPRC over brain voxels; Dice of the binary map at a threshold chosen on
the *validation* split (post-processed as in production, :mod:`~localdiffusion.ood.postprocess`); slice-level
AUROC of the image score (slice has any tumour label or not).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from localdiffusion.ood.postprocess import postprocess


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return float(2.0 * (pred & truth).sum() / total) if total else 1.0


def best_threshold(scores: np.ndarray, truth: np.ndarray, brain: np.ndarray, candidates: np.ndarray) -> tuple[float, float]:
    """Threshold among ``candidates`` with the best post-processed Dice (validation data)."""
    results = [(dice_score(postprocess(scores >= c, brain), truth), float(c)) for c in candidates]
    best_dice, best = max(results)
    return best, best_dice


def detection_metrics(pixel: np.ndarray, image: np.ndarray, truth: np.ndarray, brain: np.ndarray,
                      threshold: float) -> dict[str, float]:
    """Metrics of scores (N, H, W) / (N,) against labels (N, H, W) at ``threshold``."""
    y, s = truth[brain], pixel[brain]
    slice_truth = truth.reshape(len(truth), -1).any(1)
    metrics = {
        "pixel_auroc": float(roc_auc_score(y, s)) if 0 < y.mean() < 1 else float("nan"),
        "pixel_auprc": float(average_precision_score(y, s)) if y.any() else float("nan"),
        "dice": dice_score(postprocess(pixel >= threshold, brain), truth),
        "slice_auroc": float(roc_auc_score(slice_truth, image)) if 0 < slice_truth.mean() < 1 else float("nan"),
        "tumour_fraction": float(y.mean()),
        "slices": int(len(truth)),
    }
    return metrics


def intensity_outlier_scores(slices: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: robust z-score |I - median| / MAD of each slice's brain, blurred like PatchCore.

    Returns pixel scores (N, H, W) and image scores (N,) = 99th percentile within the brain.
    """
    from localdiffusion.ood.anomaly_map import blur_sigma

    pixel = np.zeros_like(slices, dtype=np.float32)
    image = np.zeros(len(slices), np.float32)
    sigma = blur_sigma(slices.shape[1])
    for i, (sl, b) in enumerate(zip(slices, brain)):
        vals = sl[b]
        if vals.size == 0:
            continue
        med = np.median(vals)
        mad = np.median(np.abs(vals - med)) + 1e-6
        z = ndimage.gaussian_filter(np.abs(sl - med) / mad, sigma) * b
        pixel[i] = z
        image[i] = np.percentile(z[b], 99)
    return pixel, image
