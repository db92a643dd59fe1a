"""Harmonising a slice-wise translation along z: the banding filter.

Holds :func:`harmonise_z`, which documents the filter.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

#: in-plane scale (working-grid pixels, 2 mm) below which a slice keeps its own image: 32 mm
HARMONISE_SIGMA_XY = 16.0


def _masked_blur(values: np.ndarray, weight: np.ndarray, sigma: tuple[float, float, float]) -> np.ndarray:
    """Gaussian of ``values`` normalised by the Gaussian of ``weight`` (the mean over the weighted support)."""
    return gaussian_filter(values * weight, sigma, mode="constant") / np.maximum(
        gaussian_filter(weight, sigma, mode="constant"), 1e-6)


def harmonise_z(volume: np.ndarray, brain: np.ndarray, sigma_z: float,
                sigma_xy: float = HARMONISE_SIGMA_XY) -> np.ndarray:
    """``volume`` (X, Y, Z) in [0, 1] with its coarse in-plane image smoothed along z inside ``brain``;
    ``sigma_z`` <= 0 returns the volume unchanged. Background stays 0.

    Every axial slice is sampled from its own 2D (or 2.5D) condition, so each comes out with its
    own brightness and its own coarse shading; scrolled in coronal or sagittal views that is
    horizontal banding (research/RECORD.md section 8). 2.5D conditioning and slice-correlated
    noise remove part of it; what remains is a slice-to-slice offset of the *coarse* image.

    :func:`harmonise_z` smooths only that coarse part along z and keeps each slice's detail:

        coarse = brain-masked in-plane Gaussian of the volume (sigma ``sigma_xy`` pixels)
        out    = volume + (brain-masked z-Gaussian of coarse (sigma ``sigma_z`` slices) - coarse)

    Both Gaussians are normalised by the brain mask (normalised convolution), so the background
    does not leak into the brain at its edge and a slice is not pulled towards slices where the
    brain is absent. In-plane detail finer than ``sigma_xy`` (edges, lesion borders, texture) is
    untouched; only the low-frequency image is averaged over neighbouring slices. A true change
    of the coarse image along z (the brain's shape, a large lesion) is smoothed too, over about
    ``sigma_z`` slices: the benchmark's coronal/sagittal PSNR, SSIM and z ratio measure that.

    ``sigma_z`` is a property of a model (how much banding its sampling leaves): the validated
    value is in the model's configuration (``DiffusionConfig.z_harmonise``), chosen on validation
    (research/RECORD.md 8b). The filter needs every brain slice of the volume: it is applied by
    :func:`~localdiffusion.volume.batching.translate_prepared` to whole translations only.
    """
    if sigma_z <= 0:
        return volume
    if volume.shape != brain.shape:
        raise ValueError(f"volume {volume.shape} and brain {brain.shape} differ in shape")
    m = brain.astype(np.float32)
    v = volume.astype(np.float32)
    coarse = _masked_blur(v, m, (sigma_xy, sigma_xy, 0.0)) * m
    along_z = _masked_blur(coarse, m, (0.0, 0.0, sigma_z))
    out = np.clip(v + (along_z - coarse) * m, 0.0, 1.0)
    out[~brain] = 0.0
    return out.astype(volume.dtype, copy=False)
