"""The main job on one volume: OOD map, baseline and Local Diffusion translations.

``run_job`` is what the CLI (``localdiffusion run``), the MONAI bundle, the MONAI Label app
and the Slicer module call. Models come from one folder (default: the shipped
``monai_bundle/models``): ``<source>_to_<target>/`` (diffusion model) and
``ood_<modality>.pt`` (PatchCore banks; the target-modality bank is the gate's classifier);
with ``<source>_to_<target>/risk_calibration.json`` the job also writes the per-voxel
hallucination risk of the Local Diffusion translation (:mod:`localdiffusion.risk`).
Everything is computed before anything is written; outputs are written atomically, on the
input's grid and affine, and never over the input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .diffusion.model import load_denoiser
from .diffusion.train import select_device
from .io import InputError, save_volume
from .local_diffusion import LocalDiffusionConfig, PatchCoreGate, branch_weight_volume, local_diffusion_sampler
from .ood.patchcore import PatchCore
from .ood.volume import probability_volume
from .risk import RiskCalibration, risk_volume
from .shipped import MODELS_ROOT, ood_bank_path
from .trajectory import VolumeRecorder
from .translate import prepare_input, translate_prepared

DIRECTIONS = {"t1_to_flair": ("t1", "flair"), "flair_to_t1": ("flair", "t1")}


@dataclass
class JobOptions:
    direction: str = "t1_to_flair"
    sampler: str = "ddim"
    steps: int = 25
    seed: int = 0
    batch_size: int = 8
    t_intermediate: int | None = None
    mask_mode: str = "hard"
    ind_floor: float = 0.95
    shared_noise: bool = True
    max_rebranch: int = 2
    gate: bool = True
    baseline: bool = True
    risk_map: bool = True  # when the model folder holds risk_calibration.json
    device: str = "auto"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {sorted(DIRECTIONS)}, got {self.direction!r}")
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")


def model_paths(models_root: str | Path, direction: str) -> dict[str, Path]:
    source, target = DIRECTIONS[direction]
    root = Path(models_root)
    return {"diffusion": root / direction, "ood": ood_bank_path(root, source), "gate": ood_bank_path(root, target),
            "risk": root / direction / "risk_calibration.json"}


def output_suffix(name: str, direction: str) -> str:
    """File-name suffix of output ``name``: ``<input stem>_<suffix>.nii.gz``."""
    target = DIRECTIONS[direction][1]
    return {"ood": "ood_probability", "ood_mask": "ood_mask", "local": f"{target}_local_diffusion",
            "baseline": f"{target}_baseline", "risk": "hallucination_risk"}[name]


def run_job(input_path: str | Path, out_dir: str | Path, options: JobOptions | None = None,
            models_root: str | Path | None = None, progress: bool = True) -> dict[str, Path]:
    """Translate one volume; returns the written paths keyed by output name."""
    options = options or JobOptions()
    models_root = Path(models_root) if models_root else MODELS_ROOT
    paths = model_paths(models_root, options.direction)
    source, target = DIRECTIONS[options.direction]
    denoiser = load_denoiser(paths["diffusion"], select_device(options.device))
    if (denoiser.config.source, denoiser.config.target) != (source, target):
        raise InputError(f"{paths['diffusion']}: model translates {denoiser.config.source} -> "
                         f"{denoiser.config.target}, not {source} -> {target}")
    ood_bank = PatchCore.load(paths["ood"], modality=source, model_root=models_root)
    gate = PatchCoreGate(PatchCore.load(paths["gate"], modality=target, model_root=models_root)) if options.gate else None
    calibration = RiskCalibration.load(paths["risk"]) if options.risk_map and paths["risk"].exists() else None
    if calibration is not None and (options.sampler, options.steps) != ("ddim", calibration.steps):
        calibration = None  # fitted for another sampler: no risk map rather than a miscalibrated one
    prepared = prepare_input(input_path, source, denoiser.config.spacing_mm, denoiser.config.in_plane)

    ood = probability_volume(ood_bank, prepared)
    recorder = VolumeRecorder(prepared.grid.shape, calibration.last_k) if calibration is not None else None
    common = dict(seed=options.seed, batch_size=options.batch_size, progress=progress)
    ld_config = LocalDiffusionConfig(mask_mode=options.mask_mode, threshold=ood_bank.threshold,
                                     ind_floor=options.ind_floor, shared_noise=options.shared_noise,
                                     t_intermediate=options.t_intermediate, max_rebranch=options.max_rebranch)
    local = local_diffusion_sampler(ood, ld_config, gate, sampler=options.sampler, steps=options.steps,
                                    brain_volume=prepared.brain)
    volumes = {"ood": ood, "local": translate_prepared(denoiser, prepared, **common, recorder=recorder, sample_batch=local)}
    if recorder is not None:
        volumes["risk"] = risk_volume(calibration, ood, recorder, prepared.brain)
    if options.baseline:
        volumes["baseline"] = translate_prepared(denoiser, prepared, sampler=options.sampler, steps=options.steps,
                                                 **common)
    outputs = {}
    stem = Path(input_path).name.removesuffix(".nii.gz").removesuffix(".nii")
    out_dir = Path(out_dir)
    on_input = {name: prepared.to_input_brain(volume) for name, volume in volumes.items()}
    branch_mask = branch_weight_volume(ood, dataclasses.replace(ld_config, mask_mode="hard"), prepared.brain)
    on_input["ood_mask"] = (prepared.to_input_brain(branch_mask) >= 0.5).astype(np.uint8)  # where LD branches
    for name, volume in on_input.items():
        outputs[name] = out_dir / f"{stem}_{output_suffix(name, options.direction)}.nii.gz"
        save_volume(outputs[name], volume, prepared.input_affine, protect=[input_path])
    return outputs
