"""Volume translation: NIfTI in, NIfTI out, on the input's grid and affine.

normalise -> working grid -> brain slices in batches -> reverse process -> reassemble ->
map back to the input grid -> write atomically. Slices without brain are left as
background and never sampled. Output intensities are on the normalised [0, 1] scale of
the target contrast (``slices.NORMALISATION``: FLAIR median -> 0.5, T1 99.5th percentile -> 1);
voxels outside the input's foreground are 0.

Slice ``k`` of the working grid is sampled with seed ``seed * 1_000_003 + k`` on its brain
crop (:data:`BRAIN_CROP_MARGIN`): the bounding box of its brain plus a margin, sides rounded
up to :data:`BRAIN_CROP_MULTIPLE` pixels; slices whose crops have one size are batched
together. The network was trained on 64 x 64 crops, so a crop is nothing new to it; it
skips the background, and the global attention at the lowest level costs the square of
the crop's area. Noise is drawn on the whole slice and cropped (the same x_T as without
the crop, there). A slice's window and noise depend on the slice alone: results do not
depend on the batch size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .crop import Box, box_shape, crop_box, downsampling_factor
from .diffusion.model import Denoiser, load_denoiser
from .diffusion.sampling import SliceNoise, translate_slices
from .diffusion.train import from_model_scale, select_device
from .io import InputError, load_volume, save_volume
from .readers import Case
from .shipped import ood_bank_path
from .slices import PreparedCase, prepare_case


#: pixels of background kept around each slice's brain; None = sample whole slices
BRAIN_CROP_MARGIN: int | None = 4
#: crop sides are multiples of this (few distinct shapes, so slices batch together)
BRAIN_CROP_MULTIPLE = 16


def slice_seed(seed: int, k: int) -> int:
    return int(seed) * 1_000_003 + int(k)


@dataclass
class SliceBatch:
    """Slices ``ks`` of a working-grid volume, each on its own window (all of one size) with its own seed."""

    ks: np.ndarray
    seeds: list[int]
    windows: list[Box]
    plane: tuple[int, int]  # (H, W) of a whole slice

    def take(self, volume: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """Working-grid volume (X, Y, Z) -> float32 (B, 1, h, w): each slice's window."""
        return torch.stack([torch.as_tensor(np.ascontiguousarray(volume[rows, cols, k]), dtype=torch.float32)
                            for k, (rows, cols) in zip(self.ks, self.windows)])[:, None].to(device)

    def put(self, volume: np.ndarray, values: torch.Tensor) -> None:
        """Write (B, 1, h, w) ``values`` into each slice's window of ``volume`` (X, Y, Z)."""
        values = values[:, 0].float().cpu().numpy()
        for b, (k, (rows, cols)) in enumerate(zip(self.ks, self.windows)):
            volume[rows, cols, k] = values[b]

    def noise(self, device: str | torch.device = "cpu") -> SliceNoise:
        return SliceNoise(self.seeds, device, self.windows, self.plane)


def plan_batches(brain: np.ndarray, ks: np.ndarray, seed: int, batch_size: int, multiple: int,
                 margin: int | None = BRAIN_CROP_MARGIN) -> list[SliceBatch]:
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
            batches.append(SliceBatch(chunk, [slice_seed(seed, k) for k in chunk], [windows[k] for k in chunk], plane))
    return batches


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


#: ``sample_batch(denoiser, condition01 (B, 1, h, w), batch: SliceBatch, hooks) -> x0 (B, 1, h, w) in [-1, 1]``;
#: ``hooks`` are observers of the (B, 1, h, w) trajectory (e.g. trajectory-variance recording)
SampleBatch = Callable[[Denoiser, torch.Tensor, SliceBatch, list], torch.Tensor]


def baseline_sampler(sampler: str = "ddim", steps: int | None = 25, rods=None) -> SampleBatch:
    """The plain reverse process; ``rods`` (a :class:`~localdiffusion.rods.RODSConfig`) makes it robust."""

    def sample(denoiser, cond01, batch, hooks=()):
        return translate_slices(denoiser, cond01 * 2.0 - 1.0, batch.noise(cond01.device), sampler=sampler,
                                steps=steps, hooks=hooks, rods=rods)

    return sample


@torch.no_grad()
def translate_prepared(denoiser: Denoiser, prepared: PreparedCase, *, sampler: str = "ddim", steps: int | None = 25,
                       seed: int = 0, batch_size: int = 8, progress: bool = True,
                       sample_batch: SampleBatch | None = None, slices: np.ndarray | None = None,
                       recorder=None, crop_margin: int | None = BRAIN_CROP_MARGIN) -> np.ndarray:
    """Translate every brain slice of ``prepared``; returns the working-grid volume in [0, 1].

    ``sample_batch`` replaces the baseline sampler (e.g. Local Diffusion); the batching,
    seeding and reassembly stay here. ``slices`` restricts sampling to those indices k
    (evaluation); the other slices stay 0. ``recorder`` (e.g.
    :class:`~localdiffusion.trajectory.VolumeRecorder`) observes every batch's trajectory.
    ``crop_margin``: each slice runs on its brain crop with this margin; None = whole slices.
    """
    sample_batch = sample_batch or baseline_sampler(sampler, steps)
    source = prepared.images[denoiser.config.source]
    device = next(denoiser.parameters()).device
    result = np.zeros(prepared.grid.shape, np.float32)
    ks = prepared.brain_slices() if slices is None else np.asarray(slices)
    multiple = int(np.lcm(BRAIN_CROP_MULTIPLE, downsampling_factor(denoiser)))
    batches = plan_batches(prepared.brain, ks, seed, batch_size, multiple, crop_margin)
    for batch in tqdm(batches, desc=f"translate {prepared.case_id}", unit="batch", disable=not progress):
        cond = batch.take(source, device)
        hooks = [recorder.begin(batch)] if recorder is not None else []
        pred = sample_batch(denoiser, cond, batch, hooks)
        if recorder is not None:
            recorder.end()
        batch.put(result, from_model_scale(pred))
    result[~prepared.brain] = 0.0
    return result


def translate_file(input_path: str | Path, out_path: str | Path, model_dir: str | Path, *, sampler: str = "ddim",
                   steps: int | None = 25, seed: int = 0, batch_size: int = 8, device: str = "auto",
                   progress: bool = True, risk_map: str | Path | None = None, ood_bank: str | Path | None = None,
                   rods: bool = False, crop_margin: int | None = BRAIN_CROP_MARGIN) -> Translation:
    """Translate one NIfTI volume with the model in ``model_dir`` and write ``out_path``.

    ``risk_map``: also write the calibrated per-voxel hallucination risk (needs
    ``<model_dir>/risk_calibration.json`` and the source-modality OOD bank, by default
    ``ood_<source>.pt`` beside the model folder). ``rods``: sample with RODS at the
    calibrated ``eps``. ``crop_margin``: see :func:`translate_prepared`. Nothing is written
    unless everything succeeded.
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
                                 sample_batch=baseline_sampler(sampler, steps, rods=rods_config), recorder=recorder,
                                 crop_margin=crop_margin)
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
