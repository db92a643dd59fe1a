"""Receive-coil bias correction of a working-grid volume (N4, SimpleITK).

A coil's receive field multiplies the image by a smooth field. A scanner whose field is stronger
than the training data's moves every patch's intensities and texture statistics, and the OOD map
then flags the field instead of lesions (research/RECORD.md section 9: under a 25% field the FLAIR
map flags 11% of healthy brain even self-calibrated). N4 (Tustison et al. 2010) estimates the
field as a B-spline in log intensity that sharpens the intensity histogram; it is the standard
correction before MRI analysis (BraTS pipelines, FreeSurfer, ANTs). It is fitted inside the brain
only, so the zero background does not count, and on a volume shrunk by :data:`SHRINK` (the field
is smooth; the fit costs a fraction), then evaluated at full resolution.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import SimpleITK as sitk

#: the fit runs on the volume shrunk by this factor per axis (the field is smooth)
SHRINK = 2
#: N4 iterations per fitting level (ANTs' common setting, four levels)
ITERATIONS = (50, 50, 50, 50)


def correct_bias(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``image`` (X, Y, Z, >= 0 in the brain) divided by its N4-estimated bias field; 0 outside ``brain``.

    The field is normalised to a brain-mean of 1 in log space, so intensities keep their scale."""
    if not brain.any():
        return np.zeros_like(image, dtype=np.float32)
    return remove_field(image, brain, log_bias_field(image, brain, spacing_mm))


def remove_field(image: np.ndarray, brain: np.ndarray, log_field: np.ndarray) -> np.ndarray:
    """``image`` divided by the field of ``log_field`` inside ``brain``, 0 outside."""
    return np.where(brain, image * np.exp(-log_field), 0.0).astype(np.float32)


def field_strength(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> float:
    """How strong the coil field of ``image`` is: the standard deviation over the brain of its N4 log field
    (0.1: about +-10% around the mean). The input gate compares it with healthy validation scans'."""
    return field_spread(log_bias_field(image, brain, spacing_mm), brain) if brain.any() else 0.0


def field_spread(log_field: np.ndarray, brain: np.ndarray) -> float:
    """:func:`field_strength` of an already fitted log field (the input gate also corrects with the field)."""
    return float(log_field[brain].std())


#: the latest fit, (key, log field): the input gate and the robust FLAIR map fit the same volume, once
_LAST_FIT: list = []
_FIT_LOCK = threading.Lock()  # server workers may fit concurrently


def _fit_key(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> tuple:
    digest = hashlib.blake2b(np.ascontiguousarray(image, np.float32).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(brain, bool).tobytes())
    return image.shape, float(spacing_mm), digest.hexdigest()


def log_bias_field(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The N4-estimated log bias field of a working-grid volume, fitted once per volume (the latest fit is
    kept, keyed by the volume's content).

    Args:
        image: (X, Y, Z), >= 0 in the brain.
        brain: (X, Y, Z) bool; the field is fitted on these voxels.
        spacing_mm: the grid's voxel size.
    Returns:
        (X, Y, Z) float32 log field with a brain-mean of 0.
    """
    key = _fit_key(image, brain, spacing_mm)
    with _FIT_LOCK:
        if _LAST_FIT and _LAST_FIT[0][0] == key:
            return _LAST_FIT[0][1].copy()
    field = _fit_log_bias_field(image, brain, spacing_mm)
    with _FIT_LOCK:
        _LAST_FIT[:] = [(key, field)]
    return field.copy()


def _fit_log_bias_field(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    # SimpleITK indexes (Z, Y, X): transposing keeps x first in the image's own axes
    floor = max(float(image[brain].max()) * 1e-3, 1e-6)  # N4 takes logs: no zeros inside the mask
    full = sitk.GetImageFromArray(np.where(brain, np.maximum(image, floor), 0.0).astype(np.float32).T)
    full.SetSpacing((spacing_mm,) * 3)
    mask = sitk.GetImageFromArray(brain.astype(np.uint8).T)
    mask.CopyInformation(full)
    small, small_mask = sitk.Shrink(full, [SHRINK] * 3), sitk.Shrink(mask, [SHRINK] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(ITERATIONS))
    n4.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(full)).T
    return log_field - log_field[brain].mean()
