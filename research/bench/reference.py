"""The *local healthy mapping*: what a healthy-trained translator would paint at a voxel from its
own source intensity alone.

:class:`HealthyLookup` bins the source intensity (on the working grid's [0, 1] scale) and
keeps, per bin, the median target intensity of healthy brain voxels (fitted on healthy
*training/validation* data only, never on the benchmark's split). Used two ways:

* as the reference of the claimed mechanism: Local Diffusion isolates the OOD region from
  its healthy context, so the OOD region should move towards its own local mapping and away
  from the surrounding tissue ("healing" = the opposite);
* as a row of its own: a pixel-wise translator with no context at all (on T1 -> FLAIR it
  shows that no healthy-trained translator can paint oedema bright from T1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HealthyLookup:
    medians: np.ndarray  # (bins,) target intensity per source bin
    counts: np.ndarray  # (bins,) healthy voxels per bin

    @classmethod
    def fit(cls, source: np.ndarray, target: np.ndarray, brain: np.ndarray, bins: int = 128) -> "HealthyLookup":
        """From healthy slices or volumes (any shape, equal shapes); only brain voxels count."""
        s, t = np.asarray(source)[brain], np.asarray(target)[brain]
        index = np.clip((s * bins).astype(int), 0, bins - 1)
        order = np.argsort(index, kind="stable")
        index, t = index[order], t[order]
        starts = np.searchsorted(index, np.arange(bins + 1))
        medians, counts = np.full(bins, np.nan, np.float32), np.diff(starts)
        for b in range(bins):
            if counts[b]:
                medians[b] = np.median(t[starts[b]:starts[b + 1]])
        # empty bins take the nearest filled bin (the extremes of the intensity range)
        filled = np.flatnonzero(counts)
        nearest = filled[np.abs(np.arange(bins)[:, None] - filled[None, :]).argmin(1)]
        return cls(medians[nearest], counts)

    def __call__(self, source: np.ndarray) -> np.ndarray:
        bins = len(self.medians)
        return self.medians[np.clip((np.asarray(source) * bins).astype(int), 0, bins - 1)].astype(np.float32)
