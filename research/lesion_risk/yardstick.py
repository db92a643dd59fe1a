"""The lesion-level yardstick of the risk map, defined before anything was measured with it.

* **gross error** (as :data:`~localdiffusion.detectors.risk.GROSS_ERROR`): the translation and the truth each
  divided by its own healthy-brain median (brain voxels outside every lesion label), their absolute difference
  averaged over the voxel and its neighbours within 2 mm (a box of ``2 * round(2 / spacing) + 1`` voxels a
  side), above the 99.9th percentile of that quantity over the healthy brain voxels of the healthy
  *validation* cases of the direction (:func:`error_threshold`);
* **lesion**: a connected component (26-connectivity) of the lesion labels (every label > 0 together) of at
  least 0.1 ml;
* a lesion is **misrepresented** when at least 25% of its voxels are gross errors, and **flagged** when at
  least half of those gross-error voxels have a risk at or above the threshold (0.99: 1% of healthy validation
  voxels).

Per case (:func:`score_case`): the lesions (misrepresented, flagged), the tumour's gross-error voxels and how
many are flagged, the healthy brain's voxels and how many are flagged, and the risk's values on gross-error
and other brain voxels (for a voxel AUROC pooled by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

NEIGHBOURHOOD_MM = 2.0
HEALTHY_QUANTILE = 0.999
MIN_LESION_ML = 0.1
MISREPRESENTED = 0.25
FLAGGED = 0.5
THRESHOLD = 0.99


def normalised(image: np.ndarray, healthy: np.ndarray) -> np.ndarray:
    """``image`` over its own healthy-brain median."""
    median = float(np.median(image[healthy]))
    return image / median if median > 0 else np.zeros_like(image, dtype=np.float32)


def error_map(translation: np.ndarray, truth: np.ndarray, brain: np.ndarray, seg: np.ndarray,
              spacing_mm: float) -> np.ndarray:
    """The smoothed normalised absolute error (the quantity the gross-error threshold applies to)."""
    healthy = brain & (seg == 0)
    error = np.abs(normalised(translation.astype(np.float32), healthy) - normalised(truth.astype(np.float32), healthy))
    size = 2 * int(round(NEIGHBOURHOOD_MM / spacing_mm)) + 1
    return ndimage.uniform_filter(np.where(brain, error, 0).astype(np.float32), size)


def gross_errors(translation: np.ndarray, truth: np.ndarray, brain: np.ndarray, seg: np.ndarray, spacing_mm: float,
                 level: float) -> np.ndarray:
    """The gross-error voxels: bool, :func:`error_map` above ``level`` (:func:`error_threshold`) inside the brain."""
    return (error_map(translation, truth, brain, seg, spacing_mm) > level) & brain


def error_threshold(healthy_errors: list[np.ndarray]) -> float:
    """The gross-error level: the :data:`HEALTHY_QUANTILE` of the healthy validation brain voxels' errors."""
    return float(np.quantile(np.concatenate(healthy_errors), HEALTHY_QUANTILE))


def lesions(seg: np.ndarray, spacing_mm: float) -> list[np.ndarray]:
    """The lesions of ``seg``: boolean masks of its components of at least :data:`MIN_LESION_ML`."""
    components, count = ndimage.label(seg > 0, structure=np.ones((3, 3, 3), bool))
    voxel_ml = spacing_mm ** 3 / 1000.0
    sizes = ndimage.sum_labels(np.ones(seg.shape), components, np.arange(1, count + 1))
    return [components == i + 1 for i in range(count) if sizes[i] * voxel_ml >= MIN_LESION_ML]


@dataclass
class CaseScore:
    """One case's counts under the yardstick."""

    lesions: int = 0
    misrepresented: int = 0
    flagged: int = 0  # misrepresented lesions flagged
    tumour_errors: int = 0  # gross-error voxels inside the lesion labels
    tumour_errors_flagged: int = 0
    healthy: int = 0  # brain voxels outside every lesion label
    healthy_flagged: int = 0
    risk_event: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    risk_other: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)


@dataclass
class LesionVerdict:
    """One lesion under the yardstick."""

    voxels: int
    errors: int  # its gross-error voxels
    errors_flagged: int  # of those, at or above the risk threshold
    misrepresented: bool
    flagged: bool  # misrepresented and flagged


def judge_lesions(gross: np.ndarray, flagged: np.ndarray, seg: np.ndarray, spacing_mm: float) -> list[LesionVerdict]:
    """Every lesion of ``seg`` (:func:`lesions`) judged by the yardstick's two fractions.

    Args:
        gross: bool, the gross-error voxels; flagged: bool, the voxels at or above the risk threshold.
        seg: lesion labels (0 outside); spacing_mm: the (isotropic) voxel size.
    Returns:
        one :class:`LesionVerdict` per lesion.
    """
    verdicts = []
    for lesion in lesions(seg, spacing_mm):
        errors = gross & lesion
        n_errors, n_flagged = int(errors.sum()), int((errors & flagged).sum())
        misrepresented = n_errors >= MISREPRESENTED * lesion.sum()
        verdicts.append(LesionVerdict(int(lesion.sum()), n_errors, n_flagged, bool(misrepresented),
                                      bool(misrepresented and n_flagged >= FLAGGED * n_errors)))
    return verdicts


def score_case(translation: np.ndarray, truth: np.ndarray, risk: np.ndarray, brain: np.ndarray, seg: np.ndarray,
               spacing_mm: float, level: float, threshold: float = THRESHOLD) -> CaseScore:
    """The yardstick on one case.

    Args:
        translation, truth, risk: arrays of one shape (the risk in [0, 1]).
        brain: bool; seg: lesion labels (0 outside).
        spacing_mm: the (isotropic) voxel size.
        level: the gross-error level (:func:`error_threshold`).
        threshold: the risk's flag level.
    Returns:
        the case's :class:`CaseScore`.
    """
    brain = brain.astype(bool)
    gross = gross_errors(translation, truth, brain, seg, spacing_mm, level)
    flagged = (risk >= threshold) & brain
    score = CaseScore()
    for verdict in judge_lesions(gross, flagged, seg, spacing_mm):
        score.lesions += 1
        score.misrepresented += int(verdict.misrepresented)
        score.flagged += int(verdict.flagged)
    tumour, healthy = brain & (seg > 0), brain & (seg == 0)
    score.tumour_errors = int((gross & tumour).sum())
    score.tumour_errors_flagged = int((gross & tumour & flagged).sum())
    score.healthy, score.healthy_flagged = int(healthy.sum()), int((healthy & flagged).sum())
    score.risk_event, score.risk_other = risk[gross].astype(np.float32), risk[brain & ~gross].astype(np.float32)
    return score
