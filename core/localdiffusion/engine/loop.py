"""Reverse processes as one loop over (denoise, x, timesteps, update).

Holds :func:`reverse_process` (documented there), the step record :class:`Step`, hooks and
:class:`SliceNoise`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
from tqdm import tqdm

from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.engine.updates import UpdateRule


@dataclass
class Step:
    """What a hook sees at step ``index``: the transition ``t -> t_prev`` (-1 = clean)."""

    index: int
    t: int
    t_prev: int
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    num_steps: int


class StepHook(Protocol):
    def __call__(self, step: Step) -> tuple[torch.Tensor, torch.Tensor] | None: ...


class SliceNoise:
    """Gaussian noise from one ``torch.Generator`` per slice (seeds: one int per slice).

    ``windows`` (one (rows, cols) box per slice, all of one size) with ``plane`` (H, W):
    every draw is made on the whole (H, W) slice and cropped to the slice's window, so a
    slice cropped to its brain sees the same noise as the whole slice there.

    ``mixes`` (slice-correlated noise): per slice, ``(seed, weight)`` pairs with unit sum of
    squared weights; every draw is ``sum_j weight_j * draw_j`` of those seeds' generators, all
    advanced in step. With the neighbouring slices' own seeds (see
    :func:`~localdiffusion.volume.batching.z_mixes`) adjacent slices share most of their noise
    while each draw stays standard normal and depends on the slice alone, not on its batch.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu",
                 windows: Sequence[tuple[slice, slice]] | None = None, plane: Sequence[int] | None = None,
                 mixes: Sequence[Sequence[tuple[int, float]]] | None = None):
        self.seeds = [int(s) for s in seeds]
        mixes = [[(s, 1.0)] for s in self.seeds] if mixes is None else mixes
        if len(mixes) != len(self.seeds):
            raise ValueError("one mix per seed")
        self.mixes = [[(torch.Generator("cpu").manual_seed(int(s)), float(w)) for s, w in mix] for mix in mixes]
        self.device = device
        if (windows is None) != (plane is None) or (windows is not None and len(windows) != len(self.seeds)):
            raise ValueError("windows need the plane (H, W) and one window per seed")
        self.windows, self.plane = windows, None if plane is None else tuple(plane)

    def _mixed(self, b: int, shape: tuple) -> torch.Tensor:
        (generator, weight), *rest = self.mixes[b]
        out = torch.randn(shape, generator=generator)
        if weight != 1.0 or rest:
            out = weight * out
            for generator, weight in rest:
                out += weight * torch.randn(shape, generator=generator)
        return out

    def __len__(self) -> int:
        return len(self.mixes)

    def draw(self, b: int, item_shape: Sequence[int]) -> torch.Tensor:
        """One standard normal draw of ``item_shape`` (..., h, w) from generator ``b`` (on the CPU)."""
        item_shape = tuple(item_shape)
        if self.windows is None:
            return self._mixed(b, item_shape)
        rows, cols = self.windows[b]
        whole = self._mixed(b, item_shape[:-2] + self.plane)
        crop = whole[..., rows, cols]
        if crop.shape != item_shape:
            raise ValueError(f"window {crop.shape[-2:]} of slice {b} does not match the drawn shape {item_shape}")
        return crop

    def __call__(self, item_shape: Sequence[int]) -> torch.Tensor:
        """(B, *item_shape) standard normal noise, row b from generator b."""
        return torch.stack([self.draw(b, item_shape) for b in range(len(self))]).to(self.device)


def reverse_process(denoise: Callable[[torch.Tensor, int], torch.Tensor], x_T: torch.Tensor,
                    schedule: NoiseSchedule, timesteps: Sequence[int], update: UpdateRule, noise: SliceNoise,
                    hooks: Iterable[StepHook] = (), progress: bool = False) -> torch.Tensor:
    """Run the chain ``timesteps[0] -> ... -> timesteps[-1] -> clean`` from ``x_T``: the only sampling loop.

    At each step: ``x0_hat = denoise(x_t, t)``; every hook sees a :class:`Step` and may replace
    (x_t, x0_hat) (fusion, trajectory recording); then ``x_t = update(schedule, x_t, x0_hat, t,
    t_prev, noise)`` (:mod:`~localdiffusion.engine.updates`). It is assembled by
    :func:`~localdiffusion.engine.assemble.sample_slices` and nowhere else. Randomness comes from
    :class:`SliceNoise`: one generator per slice, so a slice's result depends on its own seed only.

    Args:
        denoise: ``denoise(x_t, t) -> x0_hat``, both (B, C, H, W) in [-1, 1].
        x_T: (B, C, H, W) start state (C = 1, or one channel per Local Diffusion branch).
        schedule: the model's noise schedule.
        timesteps: decreasing ints.
        update: the update rule.
        noise: the slices' generators.
        hooks: step observers, in order.
        progress: show a progress bar.
    Returns:
        x at t = -1, (B, C, H, W) in [-1, 1].
    """
    hooks = list(hooks)
    steps = list(timesteps)
    x = x_T
    pairs = list(zip(steps, steps[1:] + [-1]))
    for index, (t, t_prev) in enumerate(tqdm(pairs, desc="sampling", leave=False, disable=not progress)):
        x0_hat = denoise(x, t)
        for hook in hooks:
            replaced = hook(Step(index, t, t_prev, x, x0_hat, len(pairs)))
            if replaced is not None:
                x, x0_hat = replaced
        x = update(schedule, x, x0_hat, t, t_prev, noise)
    return x
