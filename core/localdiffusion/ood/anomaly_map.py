"""Anomaly maps and image scores from patch distances, and their calibration.

* :func:`anomaly_map`: patch scores (B, h, w) -> upsampled to the slice (B, H, W), Gaussian
  blur with sigma 4 px at 224 px scaled to the slice size, zero outside the brain.
* :func:`image_score`: PatchCore's re-weighted maximum patch score.
* :class:`Calibration`: raw scores -> OOD probability through the empirical CDF of healthy
  validation scores; the threshold is the healthy-voxel quantile at a stated false-positive
  rate. No threshold ever lives on the raw score scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from localdiffusion.errors import InputError
from localdiffusion.ood.memory_bank import MemoryBank
from localdiffusion.options import HEALTHY_FPR

REFERENCE_SIZE = 224
REFERENCE_SIGMA = 4.0


def blur_sigma(height: int) -> float:
    """Gaussian sigma in pixels: 4 at 224 px, scaled to the slice height."""
    return REFERENCE_SIGMA * height / REFERENCE_SIZE


def anomaly_map(patch_scores: np.ndarray, size: tuple[int, int], brain: np.ndarray | None = None) -> np.ndarray:
    """(B, h, w) patch scores -> (B, H, W) pixel scores, blurred, restricted to ``brain``."""
    up = F.interpolate(torch.as_tensor(patch_scores, dtype=torch.float32)[:, None], size=size, mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    sigma = blur_sigma(size[0])
    maps = np.stack([ndimage.gaussian_filter(m, sigma, mode="nearest") for m in up])
    if brain is not None:
        maps = np.where(brain, maps, 0.0)
    return maps.astype(np.float32)


def image_score(features: np.ndarray, patch_scores: np.ndarray, nn_index: np.ndarray, bank: MemoryBank,
                valid: np.ndarray | None = None, neighbours: int = 9) -> float:
    """PatchCore image score: the max patch score re-weighted by how isolated its match is.

    ``features`` (P, D), ``patch_scores`` and ``nn_index`` (P,) for one slice; ``valid``
    restricts the max to brain patches. Weight = 1 - softmax of the distances from the test
    patch to its matched bank entry's ``neighbours`` nearest bank neighbours (first entry).
    """
    scores = np.where(valid, patch_scores, -np.inf) if valid is not None else patch_scores
    if not np.isfinite(scores).any():
        return 0.0
    star = int(np.argmax(scores))
    _, support = bank.search(bank.features[nn_index[star]][None], k=min(neighbours, len(bank)))
    dists = np.linalg.norm(bank.features[support[0]] - features[star], axis=1)
    weights = np.exp(dists - dists.max())
    weight = 1.0 - weights[0] / weights.sum()
    return float(weight * patch_scores[star])


@dataclass
class Calibration:
    """Empirical CDF of healthy validation voxel scores, stored as quantiles."""

    quantiles: np.ndarray  # scores at probabilities ``levels``
    levels: np.ndarray
    false_positive_rate: float
    threshold: float  # raw score at 1 - false_positive_rate (derived, stored for reference)

    @classmethod
    def fit(cls, healthy_scores: np.ndarray, false_positive_rate: float = HEALTHY_FPR, n_levels: int = 2001) -> "Calibration":
        if not 0 < false_positive_rate < 0.5:
            raise InputError(f"false_positive_rate must be in (0, 0.5), got {false_positive_rate}")
        scores = np.asarray(healthy_scores, dtype=np.float64).ravel()
        if scores.size < 100:
            raise InputError("calibration needs at least 100 healthy voxel scores")
        levels = np.linspace(0.0, 1.0, n_levels)
        quantiles = np.quantile(scores, levels)
        return cls(quantiles, levels, false_positive_rate, float(np.quantile(scores, 1 - false_positive_rate)))

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """OOD probability = fraction of healthy voxels with a lower score (in [0, 1])."""
        q, idx = np.unique(self.quantiles, return_index=True)
        return np.interp(scores, q, self.levels[idx], left=0.0, right=1.0).astype(np.float32)

    @property
    def probability_threshold(self) -> float:
        return 1.0 - self.false_positive_rate

    def as_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_quantiles": self.quantiles, f"{prefix}_levels": self.levels,
                f"{prefix}_fpr": np.array(self.false_positive_rate), f"{prefix}_threshold": np.array(self.threshold)}

    @classmethod
    def from_arrays(cls, data, prefix: str) -> "Calibration":
        """A stored calibration; ValueError if its quantiles, levels, rate or threshold are not finite numbers, the
        levels not in [0, 1] or the rate not in (0, 0.5)."""
        quantiles = np.asarray(data[f"{prefix}_quantiles"], np.float64)
        levels = np.asarray(data[f"{prefix}_levels"], np.float64)
        fpr, threshold = float(data[f"{prefix}_fpr"]), float(data[f"{prefix}_threshold"])
        if (quantiles.ndim != 1 or quantiles.shape != levels.shape or quantiles.size < 2
                or not np.isfinite(quantiles).all() or not np.isfinite(levels).all() or not np.isfinite(threshold)):
            raise ValueError(f"{prefix}: quantiles and levels must be finite numbers of one length")
        if levels.min() < 0 or levels.max() > 1 or not 0 < fpr < 0.5:
            raise ValueError(f"{prefix}: levels outside [0, 1] or a false-positive rate outside (0, 0.5)")
        return cls(quantiles, levels, fpr, threshold)
