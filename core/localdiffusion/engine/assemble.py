"""The one function that assembles a sampler call: :func:`sample_slices`.

Holds :func:`sample_slices` (which documents how a call is assembled), the :class:`Method` and
:class:`DenoiserWrapper` protocols and the plain method :class:`Plain`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence

import torch

from localdiffusion.engine.loop import SliceNoise, StepHook, reverse_process
from localdiffusion.engine.scale import to_model_scale
from localdiffusion.engine.updates import UpdateRule, make_update

Denoise = Callable[[torch.Tensor, int], torch.Tensor]


class Method(Protocol):
    """What a sampling method supplies to :func:`sample_slices`."""

    def resolve(self) -> "Method":
        """The method to run (Local Diffusion hands over to :class:`Plain` when nothing is OOD)."""

    def initial(self, noise: SliceNoise, item_shape: Sequence[int]) -> torch.Tensor:
        """x_T for conditions of ``item_shape`` (1, h, w)."""

    def denoise(self, x: torch.Tensor, t: int) -> torch.Tensor: ...

    def step_noise(self, noise: SliceNoise) -> Callable: ...

    def hooks(self, observers: Sequence[StepHook]) -> list[StepHook]:
        """The loop's hooks: the method's own, then the ``observers`` as the method presents them."""

    def result(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) final state -> (B, 1, h, w)."""

    def variance_fraction(self) -> torch.Tensor | None:
        """The learned log-variance fraction of the latest denoise, like the state (None: none learned)."""


class DenoiserWrapper(Protocol):
    def wrap(self, denoise: Denoise, schedule, timesteps: Sequence[int], update: UpdateRule) -> Denoise: ...


class Plain:
    """The plain reverse process: one channel, the full condition."""

    def __init__(self, denoiser, condition: torch.Tensor):
        self.denoiser, self.cond = denoiser, to_model_scale(condition)
        self._fraction = None

    def denoise(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        x0, self._fraction = self.denoiser.predict(x_t, self.cond, t)
        return x0.clamp(-1.0, 1.0)

    def variance_fraction(self) -> torch.Tensor | None:
        return self._fraction

    def resolve(self) -> "Plain":
        return self

    def initial(self, noise: SliceNoise, item_shape) -> torch.Tensor:
        return noise(item_shape)

    def step_noise(self, noise: SliceNoise) -> SliceNoise:
        return noise

    def hooks(self, observers):
        return list(observers)

    def result(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def sample_slices(denoiser, condition: torch.Tensor, seeds: Sequence[int] | SliceNoise, *, sampler: str = "ddim",
                  steps: int | None = None, eta: float | None = None, method: Method | None = None,
                  wrappers: Iterable[DenoiserWrapper] = (), hooks: Iterable[StepHook] = ()) -> torch.Tensor:
    """Translate a batch of conditions: (noise, x_T, timesteps, update rule, wrappers, hooks) around
    :func:`~localdiffusion.engine.loop.reverse_process`.

    What varies plugs in: a *method* (:class:`Method`: how the state is laid out and denoised;
    :class:`Plain` by default, or :class:`~localdiffusion.methods.local_diffusion.LocalDiffusion`
    with one channel per branch, its own denoise, a fusion hook and per-branch noise); *wrappers*
    around the method's denoise (``wrapper.wrap(denoise, schedule, timesteps, update) -> denoise``,
    e.g. RODS; hooks with a ``watch_denoiser`` method are handed the wrapped denoiser); *hooks*
    observing the (B, 1, H, W) result state at every step. A model with a learned variance (VSM)
    hands the update rule the log-variance fraction of the method's latest network call.

    Args:
        denoiser: a :class:`~localdiffusion.network.denoiser.Denoiser`.
        condition: (B, C, h, w) in [0, 1] (C = 1, or the slice and its neighbours for a 2.5D model,
            centre first).
        seeds: one per slice, or a :class:`~localdiffusion.engine.loop.SliceNoise` (e.g. with crop windows).
        sampler, steps, eta: the update rule (:data:`~localdiffusion.engine.updates.UPDATE_RULES`), the
            respaced chain length (None: every training timestep) and its noise scale (None: the rule's).
        method: default :class:`Plain`.
        wrappers: wrap the method's denoise, innermost first.
        hooks: step observers.
    Returns:
        x0, (B, 1, h, w) in [-1, 1].
    """
    schedule = denoiser.schedule
    noise = seeds if isinstance(seeds, SliceNoise) else SliceNoise(seeds, condition.device)
    method = (method or Plain(denoiser, condition)).resolve()
    timesteps = schedule.timesteps(steps)
    update = make_update(sampler, eta)
    if getattr(getattr(denoiser, "config", None), "learned_variance", False):
        update.variance_fraction = method.variance_fraction
    hooks = list(hooks)
    x_T = method.initial(noise, (1, *condition.shape[2:]))
    denoise = method.denoise
    for wrapper in wrappers:
        denoise = wrapper.wrap(denoise, schedule, timesteps, update)
        for hook in hooks:
            if hasattr(hook, "watch_denoiser"):
                hook.watch_denoiser(denoise)
    x = reverse_process(denoise, x_T, schedule, timesteps, update, method.step_noise(noise), method.hooks(hooks))
    return method.result(x)
