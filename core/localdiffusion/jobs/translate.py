"""Translate one volume file (``localdiffusion translate``): NIfTI in, NIfTI out.

normalise -> working grid -> brain slices in batches -> reverse process -> reassemble ->
map back to the input grid -> write atomically. Output intensities are on the normalised
[0, 1] scale of the target contrast (:data:`~localdiffusion.volume.grid.NORMALISATION`);
voxels outside the input's foreground are 0. Optionally the calibrated hallucination-risk
map and RODS sampling (both need a ``<model>/risk_calibration*.json`` fitted for the step count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localdiffusion.data.io import save_volumes
from localdiffusion.detectors.given import GivenMaps
from localdiffusion.detectors.maps import VolumeRecorder
from localdiffusion.detectors.risk import calibration_for, risk_volume
from localdiffusion.errors import InputError
from localdiffusion.jobs.inputs import check_outputs, check_sampling, gate_input, prepare_input
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.network.device import select_device
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.options import check_values, default
from localdiffusion.shipped import ood_bank_path
from localdiffusion.volume.batching import BRAIN_CROP_MARGIN, batch_sampler, translate_prepared
from localdiffusion.volume.grid import PreparedCase


@dataclass
class Translation:
    """A translated volume on the working grid and on the input grid."""

    prepared: PreparedCase
    working: np.ndarray  # (X, Y, Z) in [0, 1], working grid
    output: np.ndarray  # input grid

    @property
    def affine(self) -> np.ndarray:
        return self.prepared.input_affine


def translate_file(input_path: str | Path, out_path: str | Path, model_dir: str | Path, *,
                   sampler: str = default("sampler"), steps: int = default("steps"), seed: int = default("seed"),
                   batch_size: int = default("batch_size"), device: str = default("device"), progress: bool = True,
                   risk_map: str | Path | None = None, ood_bank: str | Path | None = None, rods: bool = False,
                   crop_margin: int | None = BRAIN_CROP_MARGIN, force: bool = default("force"),
                   noise_sigma_z: float = default("noise_sigma_z"),
                   z_harmonise: float = default("z_harmonise")) -> Translation:
    """Translate one NIfTI volume with the model in ``model_dir`` and write ``out_path``.

    ``risk_map``: also write the calibrated per-voxel hallucination risk (needs
    a ``<model_dir>/risk_calibration*.json`` fitted for the step count, the source-modality OOD bank, by default
    ``ood_<source>.pt`` beside the model folder, for the robust OOD map its robust calibration beside
    the bank, and for the cycle residual the reverse model beside the model folder). ``rods``: sample
    with RODS at the calibrated ``eps``. ``crop_margin``: see :func:`~localdiffusion.volume.batching.translate_prepared`.
    The input gate runs first (``force``: translate a refused input with a warning). Nothing
    is written unless everything succeeded.
    """
    check_outputs([input_path], {"--out": out_path, "--risk-map": risk_map})
    check_values(sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, device=device,
                 noise_sigma_z=noise_sigma_z, z_harmonise=z_harmonise)
    device = select_device(device)
    denoiser = load_denoiser(model_dir, device)
    cfg = denoiser.config
    steps = cfg.sampling_steps(steps)  # 0: the model's validated count
    calibration, bank, rods_config = None, None, None
    if risk_map is not None or rods:
        calibration, why = calibration_for(model_dir, sampler, steps)
        if calibration is None:
            raise InputError(f"--risk-map/--rods: {why}")
    if rods:
        if calibration.rods is None:
            raise InputError(f"{model_dir}: the risk calibration for DDIM-{steps} was fitted without RODS; "
                             f"run `localdiffusion calibrate-risk --rods --steps {steps}` first")
        rods_config = calibration.rods
    bank_path = Path(ood_bank) if ood_bank else ood_bank_path(Path(model_dir).parent, cfg.source)
    if risk_map is not None or bank_path.exists():  # the gate uses the bank when there is one
        bank = PatchCore.load(bank_path, modality=cfg.source).to(device)
    given = GivenMaps.load(calibration.needs, bank, bank_path, model_dir, cfg, device) if risk_map is not None else None
    prepared = prepare_input(input_path, cfg.source, cfg.spacing_mm, cfg.in_plane)
    check_sampling(denoiser, steps)
    gate_input(input_path, prepared, cfg.source, Path(model_dir).parent, bank=bank, force=force)
    recorder = VolumeRecorder(prepared.grid.shape, calibration.last_k) if calibration is not None else None
    working = translate_prepared(denoiser, prepared, seed=seed, batch_size=batch_size, progress=progress,
                                 sample_batch=batch_sampler(sampler, steps, rods=rods_config), recorder=recorder,
                                 crop_margin=crop_margin, noise_sigma_z=noise_sigma_z,
                                 z_harmonise=z_harmonise)
    output = prepared.to_input_brain(working)
    risk_output = None
    if risk_map is not None:
        maps = recorder.volumes(given.maps(prepared, working, steps=steps, seed=seed, batch_size=batch_size,
                                           progress=progress))
        risk_output = prepared.to_input_brain(risk_volume(calibration, maps, prepared.brain, prepared.voxel_ml))
    written = {out_path: (output, prepared.input_affine)}
    if risk_output is not None:
        written[risk_map] = (risk_output, prepared.input_affine)
    save_volumes(written, protect=[input_path])
    return Translation(prepared, working, output)


