"""Volume translation: NIfTI in, NIfTI out, on the input's grid and affine.

normalise -> working grid -> brain slices in batches -> reverse process -> reassemble ->
map back to the input grid -> write atomically. Slices without brain are left as
background and never sampled. Output intensities are on the normalised [0, 1] scale of
the target contrast (``slices.NORMALISATION``: FLAIR median -> 0.5, T1 99.5th percentile -> 1);
voxels outside the input's foreground are 0.

Slice ``k`` of the working grid is sampled with seed ``seed * 1_000_003 + k``: results do
not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
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
from .shipped import ood_bank_path
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


#: ``sample_batch(denoiser, condition01 (B, 1, H, W), seeds, slice_indices, hooks) -> x0 (B, 1, H, W) in [-1, 1]``;
#: ``hooks`` are observers of the (B, 1, H, W) trajectory (e.g. trajectory-variance recording)
SampleBatch = Callable[[Denoiser, torch.Tensor, list, np.ndarray, list], torch.Tensor]


def baseline_sampler(sampler: str = "ddim", steps: int | None = 25, rods=None) -> SampleBatch:
    """The plain reverse process; ``rods`` (a :class:`~localdiffusion.rods.RODSConfig`) makes it robust."""

    def sample(denoiser, cond01, seeds, ks, hooks=()):
        return translate_slices(denoiser, cond01 * 2.0 - 1.0, seeds, sampler=sampler, steps=steps, hooks=hooks,
                                rods=rods)

    return sample


@torch.no_grad()
def translate_prepared(denoiser: Denoiser, prepared: PreparedCase, *, sampler: str = "ddim", steps: int | None = 25,
                       seed: int = 0, batch_size: int = 8, progress: bool = True,
                       sample_batch: SampleBatch | None = None, slices: np.ndarray | None = None,
                       recorder=None) -> np.ndarray:
    """Translate every brain slice of ``prepared``; returns the working-grid volume in [0, 1].

    ``sample_batch`` replaces the baseline sampler (e.g. Local Diffusion); the batching,
    seeding and reassembly stay here. ``slices`` restricts sampling to those indices k
    (evaluation); the other slices stay 0. ``recorder`` (e.g.
    :class:`~localdiffusion.trajectory.VolumeRecorder`) observes every batch's trajectory.
    """
    sample_batch = sample_batch or baseline_sampler(sampler, steps)
    source = prepared.images[denoiser.config.source]
    device = next(denoiser.parameters()).device
    result = np.zeros(prepared.grid.shape, np.float32)
    ks = prepared.brain_slices() if slices is None else np.asarray(slices)
    batches = [ks[i:i + batch_size] for i in range(0, len(ks), batch_size)]
    for batch in tqdm(batches, desc=f"translate {prepared.case_id}", unit="batch", disable=not progress):
        cond = torch.as_tensor(np.moveaxis(source[:, :, batch], 2, 0)[:, None]).to(device)
        hooks = [recorder.begin(batch)] if recorder is not None else []
        pred = sample_batch(denoiser, cond, [slice_seed(seed, k) for k in batch], batch, hooks)
        if recorder is not None:
            recorder.end()
        result[:, :, batch] = np.moveaxis(from_model_scale(pred)[:, 0].cpu().numpy(), 0, 2)
    result[~prepared.brain] = 0.0
    return result


def translate_file(input_path: str | Path, out_path: str | Path, model_dir: str | Path, *, sampler: str = "ddim",
                   steps: int | None = 25, seed: int = 0, batch_size: int = 8, device: str = "auto",
                   progress: bool = True, risk_map: str | Path | None = None, ood_bank: str | Path | None = None,
                   rods: bool = False) -> Translation:
    """Translate one NIfTI volume with the model in ``model_dir`` and write ``out_path``.

    ``risk_map``: also write the calibrated per-voxel hallucination risk (needs
    ``<model_dir>/risk_calibration.json`` and the source-modality OOD bank, by default
    ``ood_<source>.pt`` beside the model folder). ``rods``: sample with RODS at the
    calibrated ``eps``. Nothing is written unless everything succeeded.
    """
    for path in (out_path, risk_map):
        if path is not None and Path(path).exists() and Path(path).resolve() == Path(input_path).resolve():
            raise InputError(f"{path}: refusing to overwrite the input volume")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    denoiser = load_denoiser(model_dir, select_device(device))
    cfg = denoiser.config
    calibration, bank, rods_config = None, None, None
    if risk_map is not None or rods:
        from .risk import RiskCalibration

        calibration = RiskCalibration.load(Path(model_dir) / "risk_calibration.json")
        if calibration.steps is not None and (sampler, steps) != ("ddim", calibration.steps):
            raise InputError(f"{model_dir}/risk_calibration.json was fitted for DDIM-{calibration.steps}; "
                             f"use --sampler ddim --steps {calibration.steps} with --risk-map/--rods")
    if rods:
        if calibration.rods is None:
            raise InputError(f"{model_dir}/risk_calibration.json: fitted without RODS; "
                             "run `localdiffusion calibrate-risk --rods` first")
        rods_config = dataclasses.replace(calibration.rods, solver=sampler)
    if risk_map is not None:
        from .ood.patchcore import PatchCore

        bank_path = Path(ood_bank) if ood_bank else ood_bank_path(Path(model_dir).parent, cfg.source)
        bank = PatchCore.load(bank_path, modality=cfg.source)
    prepared = prepare_input(input_path, cfg.source, cfg.spacing_mm, cfg.in_plane)
    recorder = None
    if calibration is not None:
        from .trajectory import VolumeRecorder

        recorder = VolumeRecorder(prepared.grid.shape, calibration.last_k)
    working = translate_prepared(denoiser, prepared, seed=seed, batch_size=batch_size, progress=progress,
                                 sample_batch=baseline_sampler(sampler, steps, rods=rods_config), recorder=recorder)
    output = prepared.to_input_brain(working)
    risk_output = None
    if risk_map is not None:
        from .ood.volume import probability_volume
        from .risk import risk_volume

        risk = risk_volume(calibration, probability_volume(bank, prepared), recorder, prepared.brain)
        risk_output = prepared.to_input_brain(risk)
    save_volume(out_path, output, prepared.input_affine, protect=[input_path])
    if risk_output is not None:
        save_volume(risk_map, risk_output, prepared.input_affine, protect=[input_path, out_path])
    return Translation(prepared, working, output)
