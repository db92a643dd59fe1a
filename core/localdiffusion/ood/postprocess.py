"""Post-processing of binary OOD maps.

Per slice: erode the brain mask by one voxel, 3 x 3 median filter, drop connected
components smaller than ``min_component`` pixels. Local Diffusion branches on the result
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
