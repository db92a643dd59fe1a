"""x0-trajectory variance (mode interpolation, Aithal et al. 2024) as a step hook.

:class:`TrajectoryVariance` records x0_hat over the last ``last_k`` steps of the reverse
process and gives the per-pixel population variance (ddof 0) on the normalised [0, 1]
intensity scale (x0 in the model's [-1, 1] scale is mapped by (x + 1) / 2 first, so the
variance is a quarter of the model-scale variance). The slice score is the mean variance
over the region (the brain).

:class:`~localdiffusion.detectors.maps.VolumeRecorder` gathers these per batch into a
working-grid map (the ``variance`` detector).
"""

from __future__ import annotations

from typing import Callable

import torch

from localdiffusion.engine.loop import Step


class TrajectoryVariance:
    def __init__(self, last_k: int = 10, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if last_k < 2:
            raise ValueError(f"last_k must be >= 2, got {last_k}")
        self.last_k = last_k
        self.reduce = reduce or (lambda x0: x0[:, 0:1])
        self.history: list[torch.Tensor] = []

    def __call__(self, step: Step) -> None:
        if step.index >= step.num_steps - self.last_k:
            self.history.append(((self.reduce(step.x0_hat) + 1.0) / 2.0).detach().clone())
        return None

    def variance(self) -> torch.Tensor:
        """(B, 1, H, W) population variance over the recorded steps (0 if fewer than 2)."""
        if len(self.history) < 2:
            return torch.zeros_like(self.history[0]) if self.history else torch.zeros(0)
        return torch.stack(self.history).var(dim=0, unbiased=False)
