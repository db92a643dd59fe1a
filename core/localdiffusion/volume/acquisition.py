"""Generic acquisition augmentation of a working-grid volume: the same anatomy as another scanner
might have imaged it.

Holds :func:`augment_acquisition`, which documents the augmentation.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from localdiffusion.volume.grid import normalise

FIELD_LOG_STD = 0.15  # a log-field std of 0.15: +-15% around the mean, a strong coil
FIELD_DEGREE = 3
BLUR_SIGMA = 1.0  # voxels; on the 2 mm grid up to 2 mm of extra blur per axis
GAMMA = (0.7, 1.4)
NOISE_STD = 0.08  # times the brain median: down to an SNR of about 12 at the median


def _polynomial_field(shape: tuple[int, int, int], brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth log-field: a random polynomial of degree <= FIELD_DEGREE in the centred coordinates,
    scaled to a standard deviation over the brain drawn from U(0, FIELD_LOG_STD)."""
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    field = np.zeros(shape, np.float64)
    for i in range(FIELD_DEGREE + 1):
        for j in range(FIELD_DEGREE + 1 - i):
            for k in range(FIELD_DEGREE + 1 - i - j):
                if i + j + k:
                    field += rng.normal() * x**i * y**j * z**k
    values = field[brain]
    spread = values.std() + 1e-12
    return (field - values.mean()) / spread * rng.uniform(0.0, FIELD_LOG_STD)


def augment_acquisition(image: np.ndarray, brain: np.ndarray, modality: str, rng: np.random.Generator
                        ) -> np.ndarray:
    """``image`` (X, Y, Z, normalised, 0 outside ``brain``) as another acquisition might show it
    (below), normalised again; 0 outside ``brain``.

    A PatchCore bank built from one scanner's healthy scans calls another scanner's healthy texture
    unusual (research/RECORD.md section 9). One remedy the issue names is a bank that has seen other
    acquisitions. The perturbations here are the generic ones of MRI augmentation (a smooth receive
    field, resolution, a monotone contrast change, noise), with ranges fixed from physical plausibility
    before any measurement (research/RECORD.md section 9e), not read off the phantom's shifted variants:

    * a smooth multiplicative field ``exp(p(x, y, z))``, ``p`` a random polynomial of degree <= 3 whose
      standard deviation over the brain is drawn from ``U(0, FIELD_LOG_STD)``;
    * with probability 1/2 an anisotropic Gaussian blur, sigma per axis ``U(0, BLUR_SIGMA)`` voxels
      (other in-plane resolutions and slice thicknesses);
    * a gamma curve ``x ** U(GAMMA)`` on the [0, 1] scale;
    * Gaussian noise of standard deviation ``U(0, NOISE_STD)`` times the brain median, magnitude taken
      (a magnitude image's noise is Rician);

    then the image is normalised again by its contrast's rule, as every working-grid image is.
    """
    out = image.astype(np.float64) * np.exp(_polynomial_field(image.shape, brain, rng))
    if rng.uniform() < 0.5:
        sigma = rng.uniform(0.0, BLUR_SIGMA, size=3)
        # blur brain and image together and divide, so the zero background does not darken the edge
        weight = gaussian_filter(brain.astype(np.float64), sigma)
        out = np.where(brain, gaussian_filter(np.where(brain, out, 0.0), sigma) / np.maximum(weight, 1e-3), 0.0)
    out = np.clip(out, 0.0, None) ** rng.uniform(*GAMMA)
    std = rng.uniform(0.0, NOISE_STD) * float(np.median(out[brain]))
    out = np.abs(out + rng.normal(0.0, 1.0, out.shape) * std)
    normalised, _ = normalise(np.where(brain, out, 0.0), brain, modality=modality)
    return np.where(brain, normalised, 0.0).astype(np.float32)
