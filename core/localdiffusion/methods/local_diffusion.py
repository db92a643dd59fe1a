"""Local Diffusion (Kim, Jin et al., ECCV 2024, arXiv 2404.05980): branching, fusion and a classifier gate.

Holds :class:`LocalDiffusion` (a method for :func:`~localdiffusion.engine.assemble.sample_slices`,
one batch of slices), the branching weight of a volume (:func:`branch_weight_volume`), the volume plan (:class:`LocalDiffusionPlan`) and the default gate
(:class:`PatchCoreGate`). Images: conditions in [0, 1]; the network state in [-1, 1].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from localdiffusion.engine.assemble import Plain
from localdiffusion.engine.crop import Box, box_shape, crop_box, downsampling_factor, paste
from localdiffusion.engine.loop import SliceNoise, Step
from localdiffusion.engine.scale import to_model_scale
from localdiffusion.network.denoiser import Prediction
from localdiffusion.ood.volume import OodMap
from localdiffusion.options import default


class Gate(Protocol):
    def __call__(self, fused_x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """fused x0 (n, 1, H, W) in [0, 1], mask (n, 1, H, W) -> bool (n,): True = healed.

        Always whole slices: crops (brain crops of a volume) are pasted back first."""


@dataclass
class LocalDiffusionConfig:
    mask_mode: str = default("mask_mode")  # "hard": p >= the map's threshold; "soft": p
    ind_floor: float = default("ind_floor")  # IND branch keeps max(1 - w, floor) of the condition (paper 0, reference 0.95)
    independent_noise: bool = default("independent_noise")  # False: same x_T and per-step noise for both branches
    t_intermediate: int = 0  # training-timestep units (the paper fuses at 10 of 100; the models' own: config.json)
    max_rebranch: int = default("max_rebranch")
    background: float = 0.0  # target background value in [0, 1]
    min_component: int = 8  # post-processing of volume masks: drop OOD components below this (pixels); 0 = off
    crop_margin: int | None = 16  # OOD branch on a crop with this margin (pixels); None = full slices
    ood_dilation: int = 0  # OOD branch sees w dilated by this many pixels; the ring is discarded at fusion

    def __post_init__(self):
        if self.mask_mode not in ("hard", "soft"):
            raise ValueError(f"mask_mode must be 'hard' or 'soft', got {self.mask_mode!r}")
        if not 0.0 <= self.ind_floor <= 1.0:
            raise ValueError(f"ind_floor must be in [0, 1], got {self.ind_floor}")
        if self.max_rebranch < 0:
            raise ValueError("max_rebranch must be >= 0")
        if self.min_component < 0:
            raise ValueError(f"min_component must be >= 0, got {self.min_component}")
        if self.ood_dilation < 0:
            raise ValueError(f"ood_dilation must be >= 0, got {self.ood_dilation}")
        if self.crop_margin is not None and self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0 or None, got {self.crop_margin}")


def _split(prediction: Prediction, n: int) -> tuple[Prediction, Prediction]:
    """The first ``n`` rows and the rest of a prediction."""
    head = Prediction(*(None if v is None else v[:n] for v in prediction))
    return head, Prediction(*(None if v is None else v[n:] for v in prediction))


def _uncrop(values: torch.Tensor, like: torch.Tensor, fill: float, rows: slice, cols: slice) -> torch.Tensor:
    whole = torch.full_like(like, fill)
    whole[..., rows, cols] = values
    return whole


class LocalDiffusion:
    """Local Diffusion on one batch of slices.

    The state is (B, 2, H, W): channel 0 is the OOD branch, channel 1 the in-distribution (IND)
    branch. It supplies

    * ``denoise(x, t)``: one batched network call for every branch of every slice: branching
      slices contribute two inputs (OOD branch with ``cond * w_b``, IND branch with
      ``cond * max(1 - w, floor)``; the paper's branch conditions, Sec. 3.2, with the reference
      code's floor), fused slices one (the full condition). ``w_b`` is ``w`` dilated by
      ``ood_dilation`` pixels (a ring of healthy context, discarded at fusion). The OOD branch's
      x0 is the background outside ``w_b > 0`` and its own prediction inside (a selection: a
      soft mask is applied once, at fusion).
    * ``hook``: at the first step with ``t <= t_intermediate`` a slice is fused (Eq. 8):
      ``x0 = w x0_ood + (1 - w) x0_ind`` and ``x_t = w x_ood + (1 - w) x_ind``; both channels then
      hold the fused state and ordinary posterior sampling continues to t = 0 (Eq. 9). The gate
      (Algorithm 1) scores the fused x0 first: if the OOD region has been healed the slice stays
      in (returns to) branching and tries again at the next step, at most ``max_rebranch`` times;
      the last step always fuses. With a gate, fusion starts no later than the second-to-last
      step, so that the gate judges at least once.
    * ``step_noise``: by default both branches share x_T and every step's noise (the reference
      code); ``independent_noise`` draws each branch separately. Fused slices always share.

    With a 2.5D model every condition channel is masked with the weight of its own slice, while
    branching, fusion and the gate use the centre slice's weight. A slice with an empty weight
    never branches, and a batch with no branching slice runs the plain process
    (:meth:`resolve`), so with an empty OOD map the output equals the baseline's for the same
    seeds, exactly. The OOD branch runs on a crop around the batch's OOD region (bounding box +
    ``crop_margin`` pixels); per slice it records ``fused_at``, ``rebranches`` and ``judged``.

    Args:
        denoiser: a :class:`~localdiffusion.network.denoiser.Denoiser`.
        condition: (B, C, H, W) in [0, 1], a channel per condition slice (centre first).
        weight: (B, C, H, W) branching weight in [0, 1] (a 0/1 mask, or the probability for soft masks;
            from a volume: :class:`LocalDiffusionPlan`): the OOD branch
            sees ``condition * w``, the IND branch ``condition * max(1 - w, ind_floor)``.
        config, gate: see :class:`LocalDiffusionConfig` and :class:`Gate`.
        placement: the slices' windows in their whole slices (brain crops) and the whole-slice
            shape, so that the gate judges whole slices.
    """

    def __init__(self, denoiser, condition: torch.Tensor, weight: torch.Tensor,
                 config: LocalDiffusionConfig | None = None, gate: Gate | None = None,
                 placement: tuple[list[Box], tuple[int, int]] | None = None):
        self.denoiser, self.config, self.gate = denoiser, config or LocalDiffusionConfig(), gate
        cfg = self.config
        T = denoiser.schedule.num_train_timesteps
        self.t_intermediate = int(cfg.t_intermediate)
        if not 0 <= self.t_intermediate < T:
            raise ValueError(f"t_intermediate must be in [0, {T - 1}], got {self.t_intermediate}")
        weights = weight.float().clamp(0, 1)  # one channel per condition slice
        if weights.shape[1] != condition.shape[1]:
            raise ValueError(f"branching weight has {weights.shape[1]} channels, the condition {condition.shape[1]}")
        r = cfg.ood_dilation
        branch_weights = weights if r == 0 else F.max_pool2d(weights, 2 * r + 1, stride=1, padding=r)
        self.weight, self.branch_weight = weights[:, :1], branch_weights[:, :1]  # the slice being translated
        self.condition = condition
        self.cond = to_model_scale(condition)
        self.cond_ood = to_model_scale(condition * branch_weights)
        self.cond_ind = to_model_scale(condition * torch.clamp(1.0 - weights, min=cfg.ind_floor))
        self.bg = to_model_scale(cfg.background)
        self.branching = self.weight.flatten(1).amax(1) > 0  # (B,) bool
        self.rebranches = torch.zeros_like(self.branching, dtype=torch.long)
        self.judged = torch.zeros_like(self.rebranches)
        self.fused_at = torch.full_like(self.rebranches, -1)
        self.crop = self._crop_box(denoiser)
        self.learned_variance = bool(getattr(getattr(denoiser, "config", None), "learned_variance", False))
        self._fraction = None
        #: (windows, plane) when the slices are crops of whole slices (the gate sees whole slices)
        self.placement = placement

    def _crop_box(self, denoiser) -> Box | None:
        """(rows, cols) of the OOD branch's crop; None = the full slice."""
        if self.config.crop_margin is None or not self.branching.any():
            return None
        support = self.branch_weight[self.branching].flatten(0, 1).amax(0) > 0
        box = crop_box(support, self.config.crop_margin, downsampling_factor(denoiser))
        return None if box_shape(box) == tuple(self.weight.shape[-2:]) else box

    def composite(self, state: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) -> (B, 1, H, W): the S-composite (the fused value for fused slices)."""
        return self.weight * state[:, 0:1] + (1 - self.weight) * state[:, 1:2]

    # -- the three parts that plug into reverse_process
    def _network(self, inputs: torch.Tensor, conds: torch.Tensor, t: int) -> Prediction:
        if not len(inputs):
            return Prediction(inputs, inputs if self.learned_variance else None)
        x0, fraction = self.denoiser.predict(inputs, conds, t)
        return Prediction(x0.clamp(-1.0, 1.0), fraction)

    def denoise(self, x: torch.Tensor, t: int) -> torch.Tensor:
        br = self.branching
        if self.crop is None:  # one call for every branch
            ood, rest = _split(self._network(torch.cat([x[br, 0:1], x[br, 1:2], x[~br, 0:1]]),
                                             torch.cat([self.cond_ood[br], self.cond_ind[br], self.cond[~br]]), t),
                               int(br.sum()))
        else:  # the OOD branch on its crop, everything else on full slices
            rows, cols = self.crop
            on_crop = self._network(x[br, 0:1, rows, cols], self.cond_ood[br, :, rows, cols], t)
            ood = Prediction(*(_uncrop(v, x[br, 0:1], fill, rows, cols) if v is not None else None
                               for v, fill in zip(on_crop, (self.bg, 0.0))))
            rest = self._network(torch.cat([x[br, 1:2], x[~br, 0:1]]), torch.cat([self.cond_ind[br], self.cond[~br]]), t)
        self._fraction = self._arrange(x, ood.fraction, rest.fraction, 0.0) if ood.fraction is not None else None
        return self._arrange(x, ood.x0, rest.x0, self.bg)

    def _arrange(self, x: torch.Tensor, ood: torch.Tensor, rest: torch.Tensor, fill: float) -> torch.Tensor:
        """Branch outputs -> the state layout: OOD channel (``fill`` outside its support), IND channel,
        and fused/unbranched slices' one output in both channels."""
        br, n = self.branching, int(self.branching.sum())
        out = torch.empty_like(x)
        out[br, 0:1] = torch.where(self.branch_weight[br] > 0, ood, torch.full_like(ood, fill))
        out[br, 1:2] = rest[:n]
        out[~br] = rest[n:].expand(-1, 2, -1, -1)
        return out

    def variance_fraction(self) -> torch.Tensor | None:
        return self._fraction

    def hook(self, step: Step):
        room = self.gate is not None and step.index >= step.num_steps - 2  # the gate judges at least once
        due = self.branching & torch.tensor(step.t <= self.t_intermediate or room)
        if not due.any():
            return None
        w = self.weight
        fused_x0, fused_x = self.composite(step.x0_hat), self.composite(step.x_t)
        fuse = due.clone()
        if self.gate is not None and step.t_prev >= 0:
            healed = torch.zeros_like(due)
            idx = due.nonzero().flatten()
            image, region = ((fused_x0[idx] + 1) / 2).clamp(0, 1), w[idx]
            if self.placement is not None:
                windows, plane = [self.placement[0][i] for i in idx.tolist()], self.placement[1]
                image, region = paste(image, windows, plane, self.config.background), paste(region, windows, plane)
            healed[idx] = self.gate(image, region).to(torch.bool)
            self.judged += due.long()
            retry = due & healed & (self.rebranches < self.config.max_rebranch)
            self.rebranches += retry.long()
            fuse &= ~retry
        x_t, x0_hat = step.x_t.clone(), step.x0_hat.clone()
        x_t[fuse] = fused_x[fuse].expand(-1, 2, -1, -1)
        x0_hat[fuse] = fused_x0[fuse].expand(-1, 2, -1, -1)
        self.branching = self.branching & ~fuse
        self.fused_at[fuse] = step.t
        return x_t, x0_hat

    def step_noise(self, base: SliceNoise) -> Callable:
        def draw(item_shape) -> torch.Tensor:
            c, h, w = item_shape
            rows = [base.draw(b, (1, h, w)).expand(c, h, w) if not self.config.independent_noise or not bool(self.branching[b])
                    else base.draw(b, (c, h, w)) for b in range(len(base))]
            return torch.stack(rows).to(base.device)

        return draw

    # -- the rest of the Method protocol (localdiffusion.engine.assemble)
    def resolve(self):
        """Nothing out of distribution in this batch: the plain process, exactly."""
        return self if self.branching.any() else Plain(self.denoiser, self.condition)

    def initial(self, noise: SliceNoise, item_shape) -> torch.Tensor:
        return self.step_noise(noise)((2, *item_shape[1:]))

    def hooks(self, observers) -> list:
        observers = list(observers)

        def observe(step: Step) -> None:
            if observers:
                seen = dataclasses.replace(step, x_t=self.composite(step.x_t), x0_hat=self.composite(step.x0_hat))
                for hook in observers:
                    hook(seen)

        return [self.hook, observe]

    def result(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:1]


def branch_weight_volume(ood_map: OodMap, config: LocalDiffusionConfig, brain_volume=None):
    """The branching weight of a volume from its OOD map.

    hard: the thresholded mask, post-processed per axial slice (3 x 3 median, components
    under ``min_component`` pixels dropped, inside the brain) unless ``min_component`` is 0,
    then shrunk to each component's level set when the map carries a mask level;
    soft: the probability, zeroed away from the post-processed mask (dilated by 2 pixels).

    Args:
        ood_map: the working-grid (X, Y, Z) OOD probability and its calibrated threshold.
        config: ``mask_mode`` and ``min_component`` are read.
        brain_volume: (X, Y, Z) brain mask limiting the post-processing (default: everywhere).
    Returns:
        (X, Y, Z) float32 weight in [0, 1].
    """
    import numpy as np
    from scipy import ndimage

    from localdiffusion.ood.postprocess import level_set, postprocess

    prob = np.clip(np.asarray(ood_map.probability, np.float32), 0.0, 1.0)
    mask = prob >= ood_map.threshold
    if config.min_component > 0:
        brain = np.ones_like(mask) if brain_volume is None else np.asarray(brain_volume) > 0
        mask = np.moveaxis(postprocess(np.moveaxis(mask, 2, 0), np.moveaxis(brain, 2, 0), config.min_component), 0, 2)
    if ood_map.mask_level > 0 and ood_map.score is not None:
        mask = level_set(mask, ood_map.score, ood_map.mask_level)
    if config.mask_mode == "hard":
        return mask.astype(np.float32)
    near = ndimage.binary_dilation(mask, structure=np.ones((5, 5, 1), bool))
    return np.where(near, prob, 0.0).astype(np.float32)


class LocalDiffusionPlan:
    """Local Diffusion over a volume: a method plan for :func:`~localdiffusion.volume.batching.batch_sampler`.

    ``ood_map``: the working-grid OOD map with its threshold (e.g.
    :func:`~localdiffusion.ood.volume.bank_map`); it becomes the branching weight
    (:attr:`weight`) once, through :func:`branch_weight_volume` (``brain_volume`` limits the
    post-processing); each batch then gets a :class:`LocalDiffusion` on its slices' windows.
    """

    def __init__(self, ood_map: OodMap, config: LocalDiffusionConfig | None = None, gate: Gate | None = None,
                 brain_volume=None):
        self.config = config or LocalDiffusionConfig()
        self.weight = branch_weight_volume(ood_map, self.config, brain_volume)
        self.gate = gate
        self._runs: list[tuple] = []  # (slice indices, LocalDiffusion) of every batch sampled with this plan

    def __call__(self, denoiser, condition: torch.Tensor, batch, noise: SliceNoise) -> LocalDiffusion:
        placement = (list(noise.windows), noise.plane) if noise.windows is not None else None
        weight = batch.take(self.weight, condition.device, denoiser.config.condition_offsets)
        ld = LocalDiffusion(denoiser, condition, weight, self.config, self.gate, placement)
        self._runs.append((batch.ks, ld))
        return ld

    def plain_slices(self) -> frozenset:
        """The slices of every batch that never branched: sampled by the plain process, exactly as a
        baseline pass with the same seeds and batches samples them."""
        return frozenset(int(k) for ks, ld in self._runs if bool((ld.fused_at < 0).all()) for k in ks)

    def slice_records(self) -> dict[int, dict]:
        """Per sampled slice k: whether it branched, the t it fused at (-1: never branched), how often
        the gate judged it and sent it back to branching."""
        records = {}
        for ks, ld in self._runs:
            for b, k in enumerate(ks):
                records[int(k)] = {"branched": bool(ld.fused_at[b] >= 0), "fused_at": int(ld.fused_at[b]),
                                   "judged": int(ld.judged[b]), "rebranches": int(ld.rebranches[b])}
        return records


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
        prob = self.patchcore.pixel_probability(slices, brain)
        region = mask[:, 0].cpu().numpy() > 0.5
        flagged = (prob >= self.patchcore.threshold) & region
        fraction = flagged.reshape(len(slices), -1).sum(1) / region.reshape(len(slices), -1).sum(1).clip(min=1)
        return torch.as_tensor(fraction < self.min_abnormal_fraction)
