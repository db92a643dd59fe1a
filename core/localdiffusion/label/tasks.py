"""MONAI Label inference tasks: thin adapters from a request to the ``localdiffusion`` core.

A request holds ``image`` (the uploaded NIfTI, saved by MONAI Label to a temporary file) and
the client's ``params``. Each task validates its parameters (:class:`~localdiffusion.io.InputError`
names the problem; the server answers 400), runs the core on the file and returns
``(result NIfTI path, JSON)``; MONAI Label sends the file back and deletes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..io import InputError, load_volume, save_volume
from ..pipeline import DIRECTIONS, JobOptions, run_job
from ..shipped import ood_bank_path

OUTPUT_CHOICES = ("baseline", "ood", "ood_mask", "risk")


def _int(params: dict, key: str, default, low: int, high: int) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"parameter {key!r} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise InputError(f"parameter {key!r} must be between {low} and {high}, got {number}")
    return number


def _choice(params: dict, key: str, default: str, choices) -> str:
    value = str(params.get(key, default))
    if value not in choices:
        raise InputError(f"parameter {key!r} must be one of {sorted(choices)}, got {value!r}")
    return value


def _result_file() -> Path:
    """A temporary result path; MONAI Label deletes the file after sending it (no folder left behind)."""
    handle, path = tempfile.mkstemp(prefix="ld_label_", suffix=".nii.gz")
    os.close(handle)
    return Path(path)


class LocalDiffusionTask(InferTask):
    """The main job; the result image is the Local Diffusion translation, or a 4D volume
    ``[local, *extra_outputs]`` (channels last) when ``extra_outputs`` asks for more."""

    def __init__(self, models_root: Path):
        super().__init__(InferType.OTHERS, None, 3, "Local Diffusion T1 <-> FLAIR translation (research use only)",
                         {"direction": "t1_to_flair", "steps": 25, "seed": 0, "t_intermediate": -1, "sampler": "ddim",
                          "extra_outputs": []})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return all((self.models_root / d).is_dir() for d in DIRECTIONS)

    def __call__(self, request: dict[str, Any]):
        t_intermediate = _int(request, "t_intermediate", -1, -1, 10_000)
        options = JobOptions(direction=_choice(request, "direction", "t1_to_flair", DIRECTIONS),
                             sampler=_choice(request, "sampler", "ddim", ("ddim", "ddpm")),
                             steps=_int(request, "steps", 25, 1, 1000), seed=_int(request, "seed", 0, 0, 2**31 - 1),
                             t_intermediate=None if t_intermediate == -1 else t_intermediate, device="auto")
        extras = request.get("extra_outputs", [])
        every = extras == "all"  # every output these models and settings produce
        if isinstance(extras, str):
            extras = list(OUTPUT_CHOICES) if every else [e for e in extras.split(",") if e]
        if not isinstance(extras, list) or any(e not in OUTPUT_CHOICES for e in extras):
            raise InputError(f"parameter 'extra_outputs' must be 'all' or a list from {list(OUTPUT_CHOICES)}, "
                             f"got {extras!r}")
        options.baseline = "baseline" in extras
        work = Path(tempfile.mkdtemp(prefix="ld_job_"))
        try:
            outputs = run_job(request["image"], work, options, self.models_root, progress=False)
            if every:
                extras = [e for e in extras if e in outputs]
            missing = [e for e in extras if e not in outputs]
            if missing:
                raise InputError(f"{missing} not available for these models or settings (risk needs the calibrated "
                                 "DDIM step count)")
            names = ["local", *extras]
            images = [nib.load(str(outputs[n])) for n in names]
            data = images[0].get_fdata(dtype=np.float32) if len(names) == 1 else np.stack(
                [im.get_fdata(dtype=np.float32) for im in images], axis=-1)
            result = _result_file()
            save_volume(result, data, images[0].affine)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return str(result), {"channels": names, "direction": options.direction, "steps": options.steps,
                             "sampler": options.sampler, "seed": options.seed}


class OodMapTask(InferTask):
    """Calibrated PatchCore OOD probability of the input contrast (``modality`` t1 or flair)."""

    def __init__(self, models_root: Path):
        super().__init__(InferType.OTHERS, None, 3, "PatchCore OOD probability map", {"modality": "t1"})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return (self.models_root / "ood_t1.pt").exists() or (self.models_root / "ood_flair.pt").exists()

    def __call__(self, request: dict[str, Any]):
        from ..ood.patchcore import PatchCore
        from ..ood.volume import bank_grid, probability_volume
        from ..translate import prepare_input

        modality = _choice(request, "modality", "t1", ("t1", "flair"))
        bank = PatchCore.load(ood_bank_path(self.models_root, modality), modality=modality, model_root=self.models_root)
        prepared = prepare_input(request["image"], modality, *bank_grid(bank))
        prob = prepared.to_input_brain(probability_volume(bank, prepared))
        result = _result_file()
        save_volume(result, prob, prepared.input_affine)
        return str(result), {"modality": modality, "threshold": float(bank.threshold)}


class TumourSegmentationTask(InferTask):
    """Tumour segmentation U-Net of the input contrast; BraTS labels (1 necrosis, 2 oedema, 4 enhancing)."""

    LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4}

    def __init__(self, models_root: Path):
        super().__init__(InferType.SEGMENTATION, dict(self.LABELS), 3, "Glioma segmentation (BraTS labels)",
                         {"modality": "flair"})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return (self.models_root / "seg_flair").is_dir()

    def __call__(self, request: dict[str, Any]):
        from ..segmentation import load_segmenter, segment_volume

        modality = _choice(request, "modality", "flair", ("t1", "flair"))
        load_volume(request["image"])  # a clear error for a non-NIfTI or broken upload
        labels, affine = segment_volume(load_segmenter(self.models_root / f"seg_{modality}"), request["image"])
        result = _result_file()
        save_volume(result, labels, affine)
        return str(result), {"modality": modality, "labels": self.LABELS}
