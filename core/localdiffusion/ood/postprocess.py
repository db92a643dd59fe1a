"""Post-processing of binary OOD maps.

Per slice: erode the brain mask by one voxel, 3 x 3 median filter, drop connected
components smaller than ``min_component`` pixels. Then, for a map whose calibration sets a mask
level, each 3D component shrinks to its own level set (:func:`level_set`): a lesion raises the
score of its neighbourhood above the threshold, so the thresholded mask is a halo around it.
Local Diffusion branches on the result
(:func:`~localdiffusion.methods.local_diffusion.branch_weight_volume`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def postprocess(binary: np.ndarray, brain: np.ndarray, min_component: int = 8) -> np.ndarray:
    """(N, H, W) binary maps: erode brain by 1, median 3 x 3, drop small components."""
    out = np.empty_like(binary, dtype=bool)
    for i in range(len(binary)):
        inner = ndimage.binary_erosion(brain[i], iterations=1)
        m = ndimage.median_filter(binary[i].astype(np.uint8), size=3).astype(bool) & inner
        labels, n = ndimage.label(m)
        if n:
            sizes = ndimage.sum(m, labels, index=np.arange(1, n + 1))
            m = np.isin(labels, np.flatnonzero(sizes >= min_component) + 1)
        out[i] = m
    return out


def level_set(mask: np.ndarray, score: np.ndarray, level: float) -> np.ndarray:
    """A mask that follows the lesion instead of its halo.

    Args:
        mask: (X, Y, Z) bool thresholded, post-processed mask.
        score: (X, Y, Z) the score the probability was calibrated from.
        level: in (0, 1): inside each 3D component keep the voxels whose score lies at least this
            fraction of the way from the component's lowest to its highest score.
    Returns:
        (X, Y, Z) bool, holes filled per axial slice.
    """
    components, n = ndimage.label(mask)
    out = np.zeros(mask.shape, bool)
    for c, box in enumerate(ndimage.find_objects(components), start=1):
        inside = components[box] == c
        values = score[box][inside]
        low, high = values.min(), values.max()
        out[box] |= inside & (score[box] >= low + level * (high - low))
    for k in np.flatnonzero(out.any((0, 1))):
        out[:, :, k] = ndimage.binary_fill_holes(out[:, :, k])
    return out
