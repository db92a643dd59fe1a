"""Image-quality metrics on the normalised [0, 1] scale, restricted to a region.

``psnr`` and ``ssim`` take (B, 1, H, W) tensors and a boolean region mask of the same
shape (e.g. the brain); they return one value per slice. SSIM uses the usual 11 x 11
Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1, and averages the SSIM
map over the region.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    err = ((pred - target) ** 2 * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1)
    return 10.0 * torch.log10(data_range**2 / err.clamp_min(1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    window = _gaussian_window(device=pred.device)
    pad = window.shape[-1] // 2

    def blur(x):
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), window)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(pred * target) - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def ssim(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    m = ssim_map(pred.float(), target.float(), data_range)
    return (m * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1)


def dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-item Dice of boolean masks (B, ...); 1 when both are empty."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(eps), torch.ones_like(total))


def axial_stack(volume: np.ndarray, ks: np.ndarray | None = None) -> torch.Tensor:
    """Working-grid volume (X, Y, Z) -> float32 slices (N, 1, X, Y) of ``ks`` (default all)."""
    volume = volume if ks is None else volume[:, :, ks]
    return torch.as_tensor(np.moveaxis(volume, 2, 0)[:, None].astype(np.float32))


def volume_scores(pred: np.ndarray, truth: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Whole-brain PSNR and SSIM of working-grid volumes (X, Y, Z) restricted to ``region``."""
    keep = np.flatnonzero(region.any(axis=(0, 1)))
    p, t, r = axial_stack(pred, keep), axial_stack(truth, keep), axial_stack(region, keep) > 0
    mse = max(float(((p - t) ** 2)[r].mean()), 1e-12)
    data_range = float(np.percentile(truth[region > 0], 99.5))
    return {"psnr": 10.0 * np.log10(1.0 / mse), "ssim": float(ssim_map(p, t)[r].mean()),
            "psnr_slice_mean": float(psnr(p, t, r).mean()),
            "psnr_range": 10.0 * np.log10(data_range**2 / mse),
            "ssim_range": float(ssim_map(p, t, data_range=data_range)[r].mean())}
