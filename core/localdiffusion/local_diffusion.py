"""Local Diffusion (Kim, Jin et al., ECCV 2024): branching, fusion and a classifier gate.

Composes with :func:`~localdiffusion.diffusion.sampling.reverse_process`; no second loop.
The state is (B, 2, H, W): channel 0 is the OOD branch, channel 1 the in-distribution
(IND) branch. :class:`LocalDiffusion` supplies

* ``denoise(x, t)``: one batched network call for every branch of every slice: branching
  slices contribute two inputs (OOD branch with ``cond * w``, IND branch with
  ``cond * max(1 - w, floor)``), fused slices one (the full condition). The OOD branch's
  x0 is set to the background value outside the OOD region: ``w x0 + (1 - w) bg``.
* ``hook``: at the first step with ``t <= t_intermediate`` a slice is fused (S-operator):
  ``x0 = w x0_ood + (1 - w) x0_ind`` and ``x_t = w x_ood + (1 - w) x_ind``, both channels
  then hold the fused state and ordinary posterior sampling continues to t = 0. The gate
  scores the fused x0 first: if the OOD region has been healed the slice stays in (returns
  to) branching from its branch states and tries again at the next step, at most
  ``max_rebranch`` times; the last step always fuses. All state is per slice.
* ``noise``: shared noise repeats one draw for both branches (as the reference code);
  independent noise draws each branch separately. Fused slices always share.

Masks ``w`` (B, 1, H, W) come from the OOD probability: ``hard`` = (p >= threshold),
``soft`` = p. A slice whose mask is empty is never branched, so with an empty OOD map the
output equals the baseline sampler's for the same seeds, exactly.
Images: conditions in [0, 1]; the network state in [-1, 1]; background 0 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch

from .diffusion.sampling import SliceNoise, Step, StepHook, conditional_denoise, make_update, reverse_process


class Gate(Protocol):
    def __call__(self, fused_x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """fused x0 (n, 1, H, W) in [0, 1], mask (n, 1, H, W) -> bool (n,): True = healed."""


@dataclass
class LocalDiffusionConfig:
    mask_mode: str = "hard"  # "hard": p >= threshold; "soft": p
    threshold: float = 0.99  # OOD probability threshold for the hard mask (the calibrated one)
    ind_floor: float = 0.95  # IND branch keeps max(1 - w, floor) of the condition (paper 0, reference 0.95)
    shared_noise: bool = True  # same x_T and per-step noise for both branches
    t_intermediate: int | None = None  # training-timestep units; default round(0.1 T) (paper: 10 of 100)
    max_rebranch: int = 2
    background: float = 0.0  # target background value in [0, 1]

    def __post_init__(self):
        if self.mask_mode not in ("hard", "soft"):
            raise ValueError(f"mask_mode must be 'hard' or 'soft', got {self.mask_mode!r}")
        if not 0.0 <= self.ind_floor <= 1.0:
            raise ValueError(f"ind_floor must be in [0, 1], got {self.ind_floor}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.max_rebranch < 0:
            raise ValueError("max_rebranch must be >= 0")


class LocalDiffusion:
    """Per-batch Local Diffusion state; see the module docstring."""

    def __init__(self, denoiser, condition: torch.Tensor, ood_probability: torch.Tensor,
                 config: LocalDiffusionConfig | None = None, gate: Gate | None = None):
        self.denoiser, self.config, self.gate = denoiser, config or LocalDiffusionConfig(), gate
        cfg = self.config
        T = denoiser.schedule.num_train_timesteps
        self.t_intermediate = round(0.1 * T) if cfg.t_intermediate is None else int(cfg.t_intermediate)
        if not 0 <= self.t_intermediate < T:
            raise ValueError(f"t_intermediate must be in [0, {T - 1}], got {self.t_intermediate}")
        p = ood_probability.float().clamp(0, 1)
        self.weight = (p >= cfg.threshold).float() if cfg.mask_mode == "hard" else p
        to_model = lambda c: c * 2.0 - 1.0  # noqa: E731
        self.cond = to_model(condition)
        self.cond_ood = to_model(condition * self.weight)
        self.cond_ind = to_model(condition * torch.clamp(1.0 - self.weight, min=cfg.ind_floor))
        self.bg = cfg.background * 2.0 - 1.0
        self.branching = self.weight.flatten(1).amax(1) > 0  # (B,) bool
        self.rebranches = torch.zeros_like(self.branching, dtype=torch.long)
        self.fused_at = torch.full_like(self.rebranches, -1)

    def composite(self, state: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) -> (B, 1, H, W): the S-composite (the fused value for fused slices)."""
        return self.weight * state[:, 0:1] + (1 - self.weight) * state[:, 1:2]

    # -- the three parts that plug into reverse_process
    def denoise(self, x: torch.Tensor, t: int) -> torch.Tensor:
        br = self.branching
        inputs = torch.cat([x[br, 0:1], x[br, 1:2], x[~br, 0:1]])
        conds = torch.cat([self.cond_ood[br], self.cond_ind[br], self.cond[~br]])
        x0_all = self.denoiser(inputs, conds, t).clamp(-1.0, 1.0) if len(inputs) else inputs
        n = int(br.sum())
        x0 = torch.empty_like(x)
        w = self.weight[br]
        x0[br, 0:1] = w * x0_all[:n] + (1 - w) * self.bg
        x0[br, 1:2] = x0_all[n:2 * n]
        x0[~br] = x0_all[2 * n:].expand(-1, 2, -1, -1)
        return x0

    def hook(self, step: Step):
        due = self.branching & torch.tensor(step.t <= self.t_intermediate)
        if not due.any():
            return None
        w = self.weight
        fused_x0, fused_x = self.composite(step.x0_hat), self.composite(step.x_t)
        fuse = due.clone()
        if self.gate is not None and step.t_prev >= 0:
            healed = torch.zeros_like(due)
            idx = due.nonzero().flatten()
            healed[idx] = self.gate(((fused_x0[idx] + 1) / 2).clamp(0, 1), w[idx]).to(torch.bool)
            retry = due & healed & (self.rebranches < self.config.max_rebranch)
            self.rebranches += retry.long()
            fuse &= ~retry
        x_t, x0_hat = step.x_t.clone(), step.x0_hat.clone()
        x_t[fuse] = fused_x[fuse].expand(-1, 2, -1, -1)
        x0_hat[fuse] = fused_x0[fuse].expand(-1, 2, -1, -1)
        self.branching = self.branching & ~fuse
        self.fused_at[fuse] = step.t
        return x_t, x0_hat

    def noise(self, base: SliceNoise) -> Callable:
        def draw(item_shape) -> torch.Tensor:
            c, h, w = item_shape
            rows = []
            for b, g in enumerate(base.generators):
                if self.config.shared_noise or not bool(self.branching[b]):
                    rows.append(torch.randn((1, h, w), generator=g).expand(c, h, w))
                else:
                    rows.append(torch.randn((c, h, w), generator=g))
            return torch.stack(rows).to(base.device)

        return draw


@torch.no_grad()
def local_diffusion_slices(denoiser, condition: torch.Tensor, ood_probability: torch.Tensor, seeds,
                           config: LocalDiffusionConfig | None = None, gate: Gate | None = None, *,
                           sampler: str = "ddim", steps: int | None = 25, eta: float | None = None,
                           hooks: Iterable[StepHook] = ()) -> tuple[torch.Tensor, LocalDiffusion]:
    """Local Diffusion translation of conditions (B, 1, H, W) in [0, 1]; returns [-1, 1] x0.

    ``ood_probability`` (B, 1, H, W) in [0, 1]. Extra ``hooks`` (e.g. trajectory recording)
    run after the Local Diffusion hook and see the (B, 2, H, W) state.
    """
    ld = LocalDiffusion(denoiser, condition, ood_probability, config, gate)
    base = SliceNoise(seeds, condition.device)
    noise = ld.noise(base)
    schedule = denoiser.schedule
    if not ld.branching.any():  # nothing out of distribution: the baseline, exactly
        x_T = base(condition.shape[1:])
        out = reverse_process(conditional_denoise(denoiser, ld.cond), x_T, schedule, schedule.timesteps(steps),
                              make_update(sampler, eta), base, hooks)
        return out, ld
    x_T = noise((2, *condition.shape[2:]))
    out = reverse_process(ld.denoise, x_T, schedule, schedule.timesteps(steps), make_update(sampler, eta), noise,
                          [ld.hook, *hooks])
    return out[:, 0:1], ld


def local_diffusion_sampler(ood_probability_volume, config: LocalDiffusionConfig | None = None,
                            gate: Gate | None = None, *, sampler: str = "ddim", steps: int | None = 25):
    """A ``sample_batch`` for :func:`~localdiffusion.translate.translate_prepared`.

    ``ood_probability_volume`` (X, Y, Z) on the working grid, e.g. from
    :func:`~localdiffusion.ood.volume.probability_volume`.
    """
    import numpy as np

    def sample(denoiser, cond01, seeds, ks):
        prob = torch.as_tensor(np.moveaxis(ood_probability_volume[:, :, ks], 2, 0)[:, None]).to(cond01.device)
        out, _ = local_diffusion_slices(denoiser, cond01, prob, seeds, config, gate, sampler=sampler, steps=steps)
        return out

    return sample


class PatchCoreGate:
    """Default classifier gate: a PatchCore bank on the *target* modality.

    The OOD region counts as healed when fewer than ``min_abnormal_fraction`` of its pixels
    are flagged abnormal (calibrated probability >= the bank's threshold) in the fused x0.
    """

    def __init__(self, patchcore, min_abnormal_fraction: float = 0.25):
        self.patchcore, self.min_abnormal_fraction = patchcore, float(min_abnormal_fraction)

    def __call__(self, fused_x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        slices = fused_x0[:, 0].cpu().numpy()
        brain = slices > 0.02
        prob, _ = self.patchcore.probability(slices, brain)
        region = mask[:, 0].cpu().numpy() > 0.5
        flagged = (prob >= self.patchcore.threshold) & region
        fraction = flagged.reshape(len(slices), -1).sum(1) / region.reshape(len(slices), -1).sum(1).clip(min=1)
        return torch.as_tensor(fraction < self.min_abnormal_fraction)
