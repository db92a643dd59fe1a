"""MONAI Label inference tasks: thin adapters from a request to the ``localdiffusion`` core.

A request holds ``image`` (the uploaded NIfTI, saved by MONAI Label to a temporary file) and
the client's ``params``. Each task validates its parameters (:class:`~localdiffusion.errors.InputError`
names the problem; the server answers 400), runs the core on the file and returns
``(result NIfTI path, JSON)``; MONAI Label sends the file back and deletes it.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from localdiffusion.data.io import load_volume, save_volume
from localdiffusion.errors import InputError
from localdiffusion.jobs.ood_map import probability_map
from localdiffusion.jobs.run import JobOptions, run_job
from localdiffusion.options import DIRECTIONS, EXTRA_OUTPUTS, OPTIONS, parse_params
from localdiffusion.shipped import ood_bank_path

#: the main job's parameters a MONAI Label client may set (validated by the options table)
JOB_PARAMS = ("direction", "sampler", "steps", "seed", "t_intermediate", "mask_mode", "ind_floor", "device")
OOD_MODALITIES = tuple(sorted({m for pair in DIRECTIONS.values() for m in pair}))


def _result_file() -> Path:
    """A temporary result path; MONAI Label deletes the file after sending it (no folder left behind)."""
    handle, path = tempfile.mkstemp(prefix="ld_label_", suffix=".nii.gz")
    os.close(handle)
    return Path(path)


def _messages_name_the_upload(call):
    """A user-fault message names "the uploaded image", not the server's temporary copy of it."""

    @functools.wraps(call)
    def wrapped(self, request: dict[str, Any]):
        try:
            return call(self, request)
        except InputError as exc:
            image = str(request.get("image", ""))
            if image and image in str(exc):
                raise InputError(str(exc).replace(image, "the uploaded image")) from exc
            raise

    return wrapped


def _modality(request: dict, default: str) -> str:
    value = str(request.get("modality", default))
    if value not in OOD_MODALITIES:
        raise InputError(f"parameter 'modality' must be one of {list(OOD_MODALITIES)}, got {value!r}")
    return value


class LocalDiffusionTask(InferTask):
    """The main job; the result image is the Local Diffusion translation, or a 4D volume
    ``[local, *extra_outputs]`` (channels last) when ``extra_outputs`` asks for more."""

    def __init__(self, models_root: Path):
        super().__init__(InferType.OTHERS, None, 3, "Local Diffusion T1 <-> FLAIR translation (research use only)",
                         {**{name: OPTIONS[name].default for name in JOB_PARAMS}, "extra_outputs": []})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return all((self.models_root / d).is_dir() for d in DIRECTIONS)

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        options = JobOptions(**parse_params(request, JOB_PARAMS))
        extras = request.get("extra_outputs", [])
        every = extras == "all"  # every output these models and settings produce
        if isinstance(extras, str):
            extras = list(EXTRA_OUTPUTS) if every else [e for e in extras.split(",") if e]
        if not isinstance(extras, list) or any(e not in EXTRA_OUTPUTS for e in extras):
            raise InputError(f"parameter 'extra_outputs' must be 'all' or a list from {list(EXTRA_OUTPUTS)}, "
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
        return any(ood_bank_path(self.models_root, m).exists() for m in OOD_MODALITIES)

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        modality = _modality(request, "t1")
        bank_path = ood_bank_path(self.models_root, modality)
        prob, affine, threshold = probability_map(request["image"], bank_path, modality, self.models_root)
        result = _result_file()
        save_volume(result, prob, affine)
        return str(result), {"modality": modality, "threshold": threshold}


class TumourSegmentationTask(InferTask):
    """Tumour segmentation U-Net of the input contrast; BraTS labels (1 necrosis, 2 oedema, 4 enhancing)."""

    LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4}

    def __init__(self, models_root: Path):
        super().__init__(InferType.SEGMENTATION, dict(self.LABELS), 3, "Glioma segmentation (BraTS labels)",
                         {"modality": "flair"})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return (self.models_root / "seg_flair").is_dir()

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        from localdiffusion.jobs.segment import segment_volume
        from localdiffusion.network.segmenter import load_segmenter

        modality = _modality(request, "flair")
        load_volume(request["image"])  # a clear error for a non-NIfTI or broken upload
        labels, affine = segment_volume(load_segmenter(self.models_root / f"seg_{modality}"), request["image"])
        result = _result_file()
        save_volume(result, labels, affine)
        return str(result), {"modality": modality, "labels": self.LABELS}
