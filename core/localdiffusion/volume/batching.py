"""Batching a volume's slices through a sampler: the volume-sampling engine.

Holds the slice seeds, the batch plan (:class:`SliceBatch`, :func:`plan_batches`), slice-correlated noise
(:func:`z_mixes`), the sampler of one batch (:func:`batch_sampler`) and :func:`translate_prepared`, which
documents the volume loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm import tqdm

from localdiffusion.engine.assemble import Method, sample_slices
from localdiffusion.engine.crop import Box, box_shape, crop_box, downsampling_factor
from localdiffusion.engine.loop import SliceNoise
from localdiffusion.engine.scale import from_model_scale
from localdiffusion.network.denoiser import Denoiser
from localdiffusion.network.device import auto_batch_size
from localdiffusion.options import default
from localdiffusion.volume.grid import PreparedCase
from localdiffusion.volume.harmonise import harmonise_z

#: pixels of background kept around each slice's brain; None = sample whole slices
BRAIN_CROP_MARGIN: int | None = 4
#: crop sides are multiples of this (few distinct shapes, so slices batch together)
BRAIN_CROP_MULTIPLE = 16


def slice_seed(seed: int, k: int) -> int:
    return int(seed) * 1_000_003 + int(k)


def z_mixes(seed: int, k: int, sigma: float) -> list[tuple[int, float]]:
    """(seed, weight) of the noise streams slice ``k`` mixes (see :func:`translate_prepared`)."""
    if sigma <= 0:
        return [(slice_seed(seed, k), 1.0)]
    r = max(1, int(np.ceil(2 * sigma)))
    offsets = np.arange(-r, r + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= np.sqrt((weights**2).sum())
    return [(slice_seed(seed, k + int(j)), float(w)) for j, w in zip(offsets, weights)]


@dataclass
class SliceBatch:
    """Slices ``ks`` of a working-grid volume, each on its own window (all of one size) with its own seed."""

    ks: np.ndarray
    seeds: list[int]
    windows: list[Box]
    plane: tuple[int, int]  # (H, W) of a whole slice
    mixes: list[list[tuple[int, float]]] | None = None  # slice-correlated noise (z_mixes); None: independent

    def take(self, volume: np.ndarray, device: str | torch.device = "cpu", offsets: Sequence[int] = (0,)
             ) -> torch.Tensor:
        """Working-grid volume (X, Y, Z) -> float32 (B, len(offsets), h, w): each slice's window in
        slices k + offset (zero outside the volume; 2.5D conditions, see ``condition_offsets``)."""
        depth = volume.shape[2]

        def plane(k, rows, cols):
            if 0 <= k < depth:
                return torch.as_tensor(np.ascontiguousarray(volume[rows, cols, k]), dtype=torch.float32)
            return torch.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=torch.float32)

        return torch.stack([torch.stack([plane(int(k) + o, rows, cols) for o in offsets])
                            for k, (rows, cols) in zip(self.ks, self.windows)]).to(device)

    def put(self, volume: np.ndarray, values: torch.Tensor) -> None:
        """Write (B, 1, h, w) ``values`` into each slice's window of ``volume`` (X, Y, Z)."""
        values = values[:, 0].float().cpu().numpy()
        for b, (k, (rows, cols)) in enumerate(zip(self.ks, self.windows)):
            volume[rows, cols, k] = values[b]

    def noise(self, device: str | torch.device = "cpu") -> SliceNoise:
        return SliceNoise(self.seeds, device, self.windows, self.plane, self.mixes)


def plan_batches(brain: np.ndarray, ks: np.ndarray, seed: int, batch_size: int, multiple: int,
                 margin: int | None = BRAIN_CROP_MARGIN, noise_sigma_z: float = 0.0) -> list[SliceBatch]:
    """Batches of the slices ``ks`` of ``brain`` (X, Y, Z): grouped by crop size, in slice order."""
    plane = tuple(brain.shape[:2])
    whole = (slice(0, plane[0]), slice(0, plane[1]))
    windows = {int(k): whole if margin is None else crop_box(brain[:, :, k], margin, multiple) for k in ks}
    groups: dict[tuple[int, int], list[int]] = {}
    for k in ks:
        groups.setdefault(box_shape(windows[int(k)]), []).append(int(k))
    batches = []
    for members in groups.values():
        for i in range(0, len(members), batch_size):
            chunk = np.asarray(members[i:i + batch_size])
            mixes = [z_mixes(seed, k, noise_sigma_z) for k in chunk] if noise_sigma_z > 0 else None
            batches.append(SliceBatch(chunk, [slice_seed(seed, k) for k in chunk], [windows[k] for k in chunk], plane,
                                      mixes))
    return batches


#: ``sample_batch(denoiser, condition01 (B, 1, h, w), batch: SliceBatch, hooks) -> x0 (B, 1, h, w) in [-1, 1]``;
#: ``hooks`` are observers of the (B, 1, h, w) trajectory (e.g. trajectory-variance recording)
SampleBatch = Callable[[Denoiser, torch.Tensor, SliceBatch, list], torch.Tensor]


class MethodPlan(Protocol):
    """Makes a batch's sampling method (e.g. :class:`~localdiffusion.methods.local_diffusion.LocalDiffusionPlan`)."""

    def __call__(self, denoiser: Denoiser, condition: torch.Tensor, batch: SliceBatch, noise: SliceNoise) -> Method: ...


def batch_sampler(sampler: str = default("sampler"), steps: int | None = default("steps"), *,
                  method: MethodPlan | None = None, rods=None) -> SampleBatch:
    """A batch sampler for :func:`translate_prepared`.

    Args:
        sampler, steps: the update rule and chain length (0: the model's validated count).
        method: a plan (e.g. :class:`~localdiffusion.methods.local_diffusion.LocalDiffusionPlan`); None:
            the plain reverse process.
        rods: a :class:`~localdiffusion.methods.rods.RODSConfig` wrapping the denoiser, or None.
    Returns:
        ``sample(denoiser, condition (B, C, h, w), batch, noise) -> x0 (B, 1, h, w)`` in [-1, 1].
    """
    wrappers = [rods] if rods is not None else []

    def sample(denoiser, cond01, batch, hooks=()):
        noise = batch.noise(cond01.device)
        plugin = method(denoiser, cond01, batch, noise) if method is not None else None
        return sample_slices(denoiser, cond01, noise, sampler=sampler, steps=denoiser.config.sampling_steps(steps),
                             method=plugin, wrappers=wrappers, hooks=hooks)

    return sample


@dataclass(frozen=True)
class SampledSlices:
    """Slices an earlier pass sampled exactly as this pass would (same model, sampler, seeds and batches,
    the plain process): their raw samples are copied instead of sampled again.

    Attributes:
        volume: (X, Y, Z) the earlier pass's raw samples in [0, 1] (before the banding filter).
        slices: the slice indices k that may be copied; a batch is copied only when all of its slices are.
    """

    volume: np.ndarray
    slices: frozenset


@torch.no_grad()
def translate_prepared(denoiser: Denoiser, prepared: PreparedCase, *, sampler: str = default("sampler"),
                       steps: int | None = default("steps"), seed: int = default("seed"),
                       batch_size: int = default("batch_size"), progress: bool = True,
                       sample_batch: SampleBatch | None = None, slices: np.ndarray | None = None,
                       recorder=None, crop_margin: int | None = BRAIN_CROP_MARGIN,
                       on_batch: Callable[[int, int], None] | None = None,
                       noise_sigma_z: float = default("noise_sigma_z"),
                       z_harmonise: float = default("z_harmonise"), reuse: SampledSlices | None = None,
                       on_raw: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Translate every brain slice of a case on its working grid; no file is read or written here.

    Plans the brain slices into batches, hands each to a batch sampler (:func:`batch_sampler`: the
    plain reverse process, Local Diffusion, with or without RODS) and puts the results back into a
    working-grid volume. Slices without brain stay background. Slice ``k`` is sampled with seed
    ``seed * 1_000_003 + k`` on its brain crop (:data:`BRAIN_CROP_MARGIN`, sides rounded up to
    :data:`BRAIN_CROP_MULTIPLE` pixels; the network was trained on 64 x 64 crops), from noise drawn
    on the whole slice and cropped; slices whose crops share a size are batched together, and
    results do not depend on the batch size. Slice-correlated noise (``noise_sigma_z`` > 0,
    :func:`z_mixes`): slice k's noise is a Gaussian-weighted, unit-variance mix of the independent
    noise streams of slices k - r .. k + r (truncated at 2 sigma).

    Args:
        denoiser: the model.
        prepared: the case on its working grid (:class:`~localdiffusion.volume.grid.PreparedCase`).
        sampler, steps, seed, batch_size: the plain sampler (replaced by ``sample_batch``), the seed,
            slices per network call (0: automatic).
        progress: show a progress bar.
        sample_batch: from :func:`batch_sampler`.
        slices: sample only these indices k (evaluation); the others stay 0.
        recorder: records every batch's detector maps (e.g. :class:`~localdiffusion.detectors.maps.VolumeRecorder`).
        crop_margin: the brain crop's margin; None = whole slices.
        on_batch: ``on_batch(done, total)`` after every batch.
        noise_sigma_z: slice-correlated noise sigma in slices; 0 = independent; negative = the model's.
        z_harmonise: the banding filter's sigma (:func:`~localdiffusion.volume.harmonise.harmonise_z`),
            applied to whole translations only; 0 = off; negative = the model's.
        reuse: batches an earlier pass sampled identically, copied instead of sampled.
        on_raw: given the raw samples (X, Y, Z) before the banding filter.
    Returns:
        (X, Y, Z) float32 working-grid volume in [0, 1].
    """
    sample_batch = sample_batch or batch_sampler(sampler, steps)
    noise_sigma_z = denoiser.config.sampling("noise_sigma_z", noise_sigma_z)
    z_harmonise = denoiser.config.sampling("z_harmonise", z_harmonise)
    source = prepared.images[denoiser.config.source]
    device = next(denoiser.parameters()).device
    result = np.zeros(prepared.grid.shape, np.float32)
    ks = prepared.brain_slices() if slices is None else np.asarray(slices)
    slice_shape = prepared.grid.shape[:2]
    probe = lambda n: denoiser(torch.zeros(n, 1, *slice_shape, device=device),  # noqa: E731
                               torch.zeros(n, denoiser.config.condition_slices, *slice_shape, device=device), 0)
    batch_size = auto_batch_size(probe, slice_shape, device, batch_size)
    multiple = int(np.lcm(BRAIN_CROP_MULTIPLE, downsampling_factor(denoiser)))
    batches = plan_batches(prepared.brain, ks, seed, batch_size, multiple, crop_margin, noise_sigma_z)
    for done, batch in enumerate(tqdm(batches, desc=f"translate {prepared.case_id}", unit="batch",
                                      disable=not progress), 1):
        if reuse is not None and all(int(k) in reuse.slices for k in batch.ks):
            result[:, :, batch.ks] = reuse.volume[:, :, batch.ks]
            if on_batch is not None:
                on_batch(done, len(batches))
            continue
        cond = batch.take(source, device, denoiser.config.condition_offsets)
        hooks = recorder.begin(batch) if recorder is not None else []
        pred = sample_batch(denoiser, cond, batch, hooks)
        if recorder is not None:
            recorder.end()
        batch.put(result, from_model_scale(pred))
        if on_batch is not None:
            on_batch(done, len(batches))
    result[~prepared.brain] = 0.0
    if on_raw is not None:
        on_raw(result.copy())
    return harmonise_z(result, prepared.brain, z_harmonise) if slices is None else result
