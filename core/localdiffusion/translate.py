"""Volume translation: NIfTI in, NIfTI out, on the input's grid and affine.

normalise -> working grid -> brain slices in batches -> reverse process -> reassemble ->
map back to the input grid -> write atomically. Slices without brain are left as
background and never sampled. Output intensities are on the normalised [0, 1] scale of
the target contrast (1 = 99.5th foreground percentile of a typical target volume);
voxels outside the input's foreground are 0.

Slice ``k`` of the working grid is sampled with seed ``seed * 1_000_003 + k``: results do
not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .diffusion.model import Denoiser, load_denoiser
from .diffusion.sampling import translate_slices
from .diffusion.train import from_model_scale, select_device
from .io import InputError, load_volume, save_volume
from .readers import Case
from .slices import PreparedCase, prepare_case


def slice_seed(seed: int, k: int) -> int:
    return int(seed) * 1_000_003 + int(k)


@dataclass
class Translation:
    """A translated volume on the working grid and on the input grid."""

    prepared: PreparedCase
    working: np.ndarray  # (X, Y, Z) in [0, 1], working grid
    output: np.ndarray  # input grid

    @property
    def affine(self) -> np.ndarray:
        return self.prepared.input_affine


def prepare_input(path: str | Path, modality: str, spacing: float, in_plane: tuple[int, int]) -> PreparedCase:
    """Load one 3D input volume and put it on its working grid."""
    data, affine = load_volume(path)
    case = Case(Path(path).name.split(".")[0], {modality: data}, affine, None, "volume", {modality: Path(path)})
    prepared = prepare_case(case, spacing, in_plane)
    if prepared.brain_slices().size == 0:
        raise InputError(f"{path}: no slice holds enough brain for the {in_plane} working grid "
                         f"at {spacing} mm (volume too small for the network)")
    return prepared


#: ``sample_batch(denoiser, condition01 (B, 1, H, W), seeds, slice_indices) -> x0 (B, 1, H, W) in [-1, 1]``
SampleBatch = Callable[[Denoiser, torch.Tensor, list, np.ndarray], torch.Tensor]


def baseline_sampler(sampler: str = "ddim", steps: int | None = 25) -> SampleBatch:
    def sample(denoiser, cond01, seeds, ks):
        return translate_slices(denoiser, cond01 * 2.0 - 1.0, seeds, sampler=sampler, steps=steps)

    return sample


@torch.no_grad()
def translate_prepared(denoiser: Denoiser, prepared: PreparedCase, *, sampler: str = "ddim", steps: int | None = 25,
                       seed: int = 0, batch_size: int = 8, progress: bool = True,
                       sample_batch: SampleBatch | None = None, slices: np.ndarray | None = None) -> np.ndarray:
    """Translate every brain slice of ``prepared``; returns the working-grid volume in [0, 1].

    ``sample_batch`` replaces the baseline sampler (e.g. Local Diffusion); the batching,
    seeding and reassembly stay here. ``slices`` restricts sampling to those indices k
    (evaluation); the other slices stay 0.
    """
    sample_batch = sample_batch or baseline_sampler(sampler, steps)
    source = prepared.images[denoiser.config.source]
    device = next(denoiser.parameters()).device
    result = np.zeros(prepared.grid.shape, np.float32)
    ks = prepared.brain_slices() if slices is None else np.asarray(slices)
    batches = [ks[i:i + batch_size] for i in range(0, len(ks), batch_size)]
    for batch in tqdm(batches, desc=f"translate {prepared.case_id}", unit="batch", disable=not progress):
        cond = torch.as_tensor(np.moveaxis(source[:, :, batch], 2, 0)[:, None]).to(device)
        pred = sample_batch(denoiser, cond, [slice_seed(seed, k) for k in batch], batch)
        result[:, :, batch] = np.moveaxis(from_model_scale(pred)[:, 0].cpu().numpy(), 0, 2)
    result[~prepared.brain] = 0.0
    return result


def translate_file(input_path: str | Path, out_path: str | Path, model_dir: str | Path, *, sampler: str = "ddim",
                   steps: int | None = 25, seed: int = 0, batch_size: int = 8, device: str = "auto",
                   progress: bool = True) -> Translation:
    """Translate one NIfTI volume with the model in ``model_dir`` and write ``out_path``."""
    if Path(out_path).exists() and Path(out_path).resolve() == Path(input_path).resolve():
        raise InputError(f"{out_path}: refusing to overwrite the input volume")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    denoiser = load_denoiser(model_dir, select_device(device))
    cfg = denoiser.config
    prepared = prepare_input(input_path, cfg.source, cfg.spacing_mm, cfg.in_plane)
    working = translate_prepared(denoiser, prepared, sampler=sampler, steps=steps, seed=seed,
                                 batch_size=batch_size, progress=progress)
    output = prepared.to_input_brain(working)
    save_volume(out_path, output, prepared.input_affine, protect=[input_path])
    return Translation(prepared, working, output)
