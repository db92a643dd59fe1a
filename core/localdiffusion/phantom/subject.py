"""Per-subject variation: head pose and size, elastic deformation, bias field, noise.

All fields are drawn from one ``numpy.random.Generator`` so a case is fixed by its seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

#: approximate centre of the MNI152 brain (mm); head rotations and scaling pivot here
BRAIN_CENTRE_MM = np.array([0.0, -18.0, 18.0])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation, correlation length ``sigma_vox``.

    Drawn on a grid coarsened by ``sigma_vox / 2`` and upsampled, so the cost does not grow
    with the smoothing length.
    """
    factor = max(1.0, sigma_vox / 2.0)
    coarse_shape = tuple(max(4, int(np.ceil(s / factor)) + 1) for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma_vox / factor)
    field = ndimage.zoom(field, [s / c for s, c in zip(shape, coarse_shape)], order=1)[tuple(slice(0, s) for s in shape)]
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def draw_pose(rng: np.random.Generator) -> dict:
    """Random head pose: rotations up to 8 degrees, size 0.92-1.08, shift up to 6 mm."""
    return {
        "rotation_deg": rng.uniform(-8.0, 8.0, 3).round(3).tolist(),
        "scale": (rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)).round(4).tolist(),
        "shift_mm": rng.uniform(-6.0, 6.0, 3).round(3).tolist(),
    }


def subject_to_template(points_mm: np.ndarray, pose: dict) -> np.ndarray:
    """Map subject-space points (N, 3) to template space by inverting the pose."""
    rotation = Rotation.from_euler("xyz", pose["rotation_deg"], degrees=True).as_matrix()
    forward = rotation @ np.diag(pose["scale"])
    inverse = np.linalg.inv(forward).astype(np.float32)
    centred = points_mm - (BRAIN_CENTRE_MM + np.asarray(pose["shift_mm"])).astype(np.float32)
    return centred @ inverse.T + BRAIN_CENTRE_MM.astype(np.float32)


def elastic_displacement(rng: np.random.Generator, shape: tuple[int, int, int], spacing: float,
                         amplitude_mm: float, length_mm: float = 20.0) -> np.ndarray:
    """Smooth displacement field (3, X, Y, Z) in mm, per-component std ``amplitude_mm``."""
    return np.stack([amplitude_mm * smooth_noise(rng, shape, length_mm / spacing) for _ in range(3)])


def bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """Multiplicative receive-coil field: exp of a random quadratic polynomial (X, Y, Z)."""
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    coefs = rng.normal(0.0, strength, len(terms))
    log_field = sum(c * t for c, t in zip(coefs, terms))
    return np.exp(log_field - np.mean(log_field)).astype(np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of complex Gaussian noise added to a real signal (Rician distribution)."""
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag)
