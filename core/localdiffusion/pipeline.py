"""The main job on one volume: OOD map, baseline and Local Diffusion translations.

``run_job`` is what the CLI (``localdiffusion run``), the MONAI bundle, the MONAI Label app
and the Slicer module call. Models come from one folder (default: the shipped
``monai_bundle/models``): ``<source>_to_<target>/`` (diffusion model) and
``ood_<modality>.pt`` (PatchCore banks; the target-modality bank is the gate's classifier).
Everything is computed before anything is written; outputs are written atomically, on the
input's grid and affine, and never over the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .diffusion.model import load_denoiser
from .diffusion.train import select_device
from .io import InputError, save_volume
from .local_diffusion import LocalDiffusionConfig, PatchCoreGate, local_diffusion_sampler
from .ood.patchcore import PatchCore
from .ood.volume import probability_volume
from .shipped import MODELS_ROOT
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
    device: str = "auto"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {sorted(DIRECTIONS)}, got {self.direction!r}")
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")


def model_paths(models_root: str | Path, direction: str) -> dict[str, Path]:
    source, target = DIRECTIONS[direction]
    root = Path(models_root)
    return {"diffusion": root / direction, "ood": root / f"ood_{source}.pt", "gate": root / f"ood_{target}.pt"}


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
    prepared = prepare_input(input_path, source, denoiser.config.spacing_mm, denoiser.config.in_plane)

    ood = probability_volume(ood_bank, prepared)
    common = dict(seed=options.seed, batch_size=options.batch_size, progress=progress)
    ld_config = LocalDiffusionConfig(mask_mode=options.mask_mode, threshold=ood_bank.threshold,
                                     ind_floor=options.ind_floor, shared_noise=options.shared_noise,
                                     t_intermediate=options.t_intermediate, max_rebranch=options.max_rebranch)
    volumes = {"ood": ood,
               "local": translate_prepared(denoiser, prepared, **common, sample_batch=local_diffusion_sampler(
                   ood, ld_config, gate, sampler=options.sampler, steps=options.steps))}
    if options.baseline:
        volumes["baseline"] = translate_prepared(denoiser, prepared, sampler=options.sampler, steps=options.steps,
                                                 **common)
    outputs = {}
    stem = Path(input_path).name.removesuffix(".nii.gz").removesuffix(".nii")
    out_dir = Path(out_dir)
    on_input = {name: prepared.to_input_brain(volume) for name, volume in volumes.items()}
    for name in volumes:
        suffix = {"ood": "ood_probability", "local": f"{target}_local_diffusion", "baseline": f"{target}_baseline"}[name]
        outputs[name] = out_dir / f"{stem}_{suffix}.nii.gz"
        save_volume(outputs[name], on_input[name], prepared.input_affine, protect=[input_path])
    outputs["ood_mask"] = out_dir / f"{stem}_ood_mask.nii.gz"
    mask = on_input["ood"] >= ood_bank.threshold
    save_volume(outputs["ood_mask"], mask.astype(np.uint8), prepared.input_affine, protect=[input_path])
    return outputs
