"""Sampling helpers the tests share: a condition bound to a denoiser, Local Diffusion on slices."""

from __future__ import annotations

from typing import Iterable

import torch

from localdiffusion.engine.assemble import Denoise, sample_slices
from localdiffusion.engine.loop import SliceNoise, StepHook
from localdiffusion.methods.local_diffusion import Gate, LocalDiffusion, LocalDiffusionConfig
from localdiffusion.options import default


def conditional_denoise(denoiser, condition: torch.Tensor) -> Denoise:
    """Bind a condition (B, 1, H, W) in [-1, 1] to a :class:`~localdiffusion.network.denoiser.Denoiser`;
    clip x0_hat to [-1, 1]."""

    def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
        return denoiser(x_t, condition, t).clamp(-1.0, 1.0)

    return denoise


def local_diffusion_slices(denoiser, condition: torch.Tensor, ood_probability: torch.Tensor, seeds,
                           config: LocalDiffusionConfig | None = None, gate: Gate | None = None, *,
                           sampler: str = default("sampler"), steps: int | None = 25,
                           eta: float | None = None, wrappers=(), hooks: Iterable[StepHook] = (),
                           threshold: float = 0.99) -> tuple[torch.Tensor, LocalDiffusion]:
    """Local Diffusion translation of conditions (B, C, H, W) in [0, 1]; returns ([-1, 1] x0, its state).

    ``seeds``: one per slice, or a :class:`~localdiffusion.engine.loop.SliceNoise`;
    ``ood_probability`` (B, C, H, W) in [0, 1], a channel per condition slice; ``wrappers`` e.g. RODS. A convenience over
    :func:`~localdiffusion.engine.assemble.sample_slices` that keeps the Local Diffusion object
    (rebranch counts, fusion steps).
    """
    base = seeds if isinstance(seeds, SliceNoise) else SliceNoise(seeds, condition.device)
    placement = (list(base.windows), base.plane) if base.windows is not None else None
    weight = branch_weight(ood_probability, threshold, (config or LocalDiffusionConfig()).mask_mode)
    ld = LocalDiffusion(denoiser, condition, weight, config, gate, placement)
    out = sample_slices(denoiser, condition, base, sampler=sampler, steps=steps, eta=eta, method=ld,
                        wrappers=wrappers, hooks=hooks)
    return out, ld


def branch_weight(probability: torch.Tensor, threshold: float, mask_mode: str) -> torch.Tensor:
    """The branching weight of slices from their OOD probability.

    Args:
        probability: (B, C, H, W) in [0, 1], a channel per condition slice.
        threshold: the probability's calibrated threshold.
        mask_mode: ``hard`` (``p >= threshold`` as 0/1) or ``soft`` (``p``).
    Returns:
        (B, C, H, W) float weight in [0, 1].
    """
    p = probability.float().clamp(0, 1)
    return (p >= threshold).float() if mask_mode == "hard" else p
