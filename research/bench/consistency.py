"""3D consistency of a slice-wise translation: banding along z and quality in every plane.

Volumes are working-grid arrays (X, Y, Z) in [0, 1] with axial slices along Z (isotropic
2 mm for the shipped models, so the three axes are comparable).

* ``slice_mean_jitter``: the brain's mean intensity per axial slice, divided by the brain
  median; the standard deviation over z of that curve minus its Gaussian-smoothed self
  (sigma 2 slices). Independent slices add slice-to-slice offsets the truth does not have.
  ``jitter`` takes every slice with brain; ``jitter_core`` only slices whose brain area is at
  least a quarter of the largest, so that the steep intensity fall-off at the top and bottom of
  the brain (which the smoothed curve cannot follow, in the truth too) does not dominate.
* ``z_highpass_ratio``: mean squared first difference along z over the mean squared first
  differences along x and y (voxel pairs inside the brain). Above the truth's ratio: more
  change from slice to slice than within a slice (banding, striping).
* ``plane_scores``: PSNR and SSIM averaged over the slices of one plane (axial, coronal,
  sagittal) that hold at least ``min_brain`` brain pixels; SSIM's 2D window runs in that
  plane, so banding along z lowers the coronal and sagittal scores.
* ``brain_psnr`` / ``brain_ssim``: the whole-brain scores of ``localdiffusion evaluate`` and the
  model cards (:func:`~localdiffusion.metrics.volume_scores`: PSNR from the MSE over every brain
  voxel, the axial SSIM map averaged over every brain voxel), so no plane's averaging decides.

Each was checked on references (tests/test_consistency.py): the truth against itself,
the truth with an independent offset per slice (jitter and ratio rise), and with the same
noise in every slice (the ratio falls).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from localdiffusion.metrics import psnr, ssim, volume_scores

PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}


def slice_mean_jitter(volume: np.ndarray, brain: np.ndarray, sigma: float = 2.0, min_brain: int = 50,
                      min_area_fraction: float = 0.0) -> float:
    counts = brain.sum((0, 1))
    ks = np.nonzero((counts >= min_brain) & (counts >= min_area_fraction * counts.max()))[0]
    if len(ks) < 5:
        return float("nan")
    median = float(np.median(volume[brain]))
    means = np.array([volume[:, :, k][brain[:, :, k]].mean() for k in ks]) / max(median, 1e-6)
    return float(np.std(means - gaussian_filter1d(means, sigma, mode="nearest")))


def z_highpass_ratio(volume: np.ndarray, brain: np.ndarray) -> float:
    v = volume.astype(np.float64)
    energies = []
    for axis in range(3):
        d = np.diff(v, axis=axis) ** 2
        both = np.logical_and(np.take(brain, range(brain.shape[axis] - 1), axis=axis),
                              np.take(brain, range(1, brain.shape[axis]), axis=axis))
        energies.append(d[both].mean())
    return float(energies[2] / (0.5 * (energies[0] + energies[1])))


def plane_scores(pred: np.ndarray, truth: np.ndarray, brain: np.ndarray, plane: str,
                 min_brain: int = 200) -> dict[str, float]:
    axis = PLANES[plane]
    ks = np.nonzero(brain.sum(tuple(a for a in range(3) if a != axis)) >= min_brain)[0]

    def stack(v):
        return torch.as_tensor(np.stack([np.take(v, k, axis=axis) for k in ks]).astype(np.float32))[:, None]

    p, t, region = stack(pred), stack(truth), stack(brain.astype(np.float32)) > 0
    return {"psnr": float(psnr(p, t, region).mean()), "ssim": float(ssim(p, t, region).mean())}


def consistency_scores(volume: np.ndarray, brain: np.ndarray, truth: np.ndarray | None = None) -> dict[str, float]:
    """All measures of one volume; PSNR/SSIM per plane when the ``truth`` is given."""
    scores = {"jitter": slice_mean_jitter(volume, brain),
              "jitter_core": slice_mean_jitter(volume, brain, min_area_fraction=0.25),
              "z_ratio": z_highpass_ratio(volume, brain)}
    if truth is not None:
        whole = volume_scores(volume, truth, brain)
        scores["brain_psnr"], scores["brain_ssim"] = whole["psnr"], whole["ssim"]
        for plane in PLANES:
            for name, value in plane_scores(volume, truth, brain, plane).items():
                scores[f"{plane}_{name}"] = value
    return scores
