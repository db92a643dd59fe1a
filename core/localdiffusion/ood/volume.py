"""OOD maps of a whole volume on its working grid (arrays in, arrays out; files are jobs' business)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.volume.grid import DEFAULT_SPACING_MM, PreparedCase


@dataclass(frozen=True)
class OodMap:
    """An OOD probability volume with the threshold of the calibration that produced it.

    Attributes:
        probability: (X, Y, Z) float32 in [0, 1] on the working grid.
        threshold: the probability at or above which a voxel is flagged (1 - the calibrated
            healthy false-positive rate).
        score: (X, Y, Z) the score the probability was calibrated from (None: not kept).
        mask_level: with ``score``, the level set each flagged component shrinks to for Local
            Diffusion's mask (:func:`~localdiffusion.ood.postprocess.level_set`; 0: the thresholded mask).
    """

    probability: np.ndarray
    threshold: float
    score: np.ndarray | None = None
    mask_level: float = 0.0

    def flagged(self) -> np.ndarray:
        """(X, Y, Z) bool: the voxels at or above the threshold."""
        return self.probability >= self.threshold


def bank_map(model: PatchCore, prepared: PreparedCase) -> OodMap:
    """The bank's own calibrated OOD map of a prepared volume (see :func:`probability_volume`)."""
    return OodMap(probability_volume(model, prepared), float(model.threshold))


def probability_volume(model: PatchCore, prepared: PreparedCase) -> np.ndarray:
    """The bank's calibrated OOD probability of a prepared volume.

    Args:
        model: a PatchCore bank of the volume's contrast.
        prepared: the volume on the bank's working grid.
    Returns:
        (X, Y, Z) float32 in [0, 1]; 0 outside brain slices.
    """
    modality = model.meta["modality"]
    ks = prepared.brain_slices()
    slices = np.moveaxis(prepared.images[modality][:, :, ks], 2, 0)
    brain = np.moveaxis(prepared.brain[:, :, ks], 2, 0)
    prob = model.pixel_probability(slices, brain)
    volume = np.zeros(prepared.grid.shape, np.float32)
    volume[:, :, ks] = np.moveaxis(prob, 0, 2)
    return volume


def bank_grid(model: PatchCore) -> tuple[float, tuple[int, int]]:
    """The working grid (spacing mm, in-plane size) the bank was fitted on."""
    meta = model.meta
    return float(meta.get("spacing_mm", DEFAULT_SPACING_MM)), tuple(meta.get("in_plane", meta["slice_size"]))
