"""MONAI Label inference tasks: thin adapters from a request to the ``localdiffusion`` core.

A request holds ``image`` (the uploaded volume in any format the readers take, saved by
MONAI Label to a temporary file with the upload's suffix) and the client's ``params``. Each
task validates its parameters (:class:`~localdiffusion.errors.InputError` names the problem;
the server answers 400), runs the core on the file and returns ``(result path, JSON)``;
MONAI Label sends the file back and deletes it. The result is written as the client's
``result_extension`` and ``result_dtype`` ask (MONAI Label's own parameters; the stock Slicer
plugin asks for ``.nrrd``), NIfTI otherwise.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from localdiffusion.data.formats import WRITABLE_SUFFIXES
from localdiffusion.data.io import load_volume, save_volume
from localdiffusion.errors import InputError
from localdiffusion.jobs.ood_map import probability_map
from localdiffusion.jobs.run import JobOptions, compute_job
from localdiffusion.options import DIRECTIONS, EXTRA_OUTPUTS, OPTIONS, parse_params
from localdiffusion.ood.volume import OodMap
from localdiffusion.shipped import ood_bank_path, segmenter_dir

#: the main job's parameters a MONAI Label client may set (validated by the options table)
JOB_PARAMS = ("direction", "sampler", "steps", "seed", "noise_sigma_z", "z_harmonise", "local_diffusion",
              "t_intermediate", "mask_mode", "ind_floor", "device", "force")
OOD_MODALITIES = tuple(sorted({m for pair in DIRECTIONS.values() for m in pair}))


#: ``result_dtype`` values a client may ask for
RESULT_DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")


#: the integer ``result_dtype`` values: a continuous map (a translation, a probability) would lose its values
INTEGER_DTYPES = ("uint8", "int16", "uint16", "int32")


def result_format(request: dict, continuous: bool) -> tuple[str, str | None]:
    """The requested ``result_extension`` and ``result_dtype``, checked before any work; an integer dtype is
    refused for a ``continuous`` result. :class:`InputError` naming the parameter otherwise."""
    suffix = str(request.get("result_extension") or ".nii.gz")
    suffix = suffix if suffix.startswith(".") else "." + suffix
    if suffix.lower() not in WRITABLE_SUFFIXES:
        raise InputError(f"parameter 'result_extension' must be one of {list(WRITABLE_SUFFIXES)}, got {suffix!r}")
    dtype = request.get("result_dtype") or None
    if dtype is not None and str(dtype) not in RESULT_DTYPES:
        raise InputError(f"parameter 'result_dtype' must be one of {list(RESULT_DTYPES)}, got {dtype!r}")
    if continuous and dtype in INTEGER_DTYPES:
        raise InputError(f"parameter 'result_dtype' {dtype!r} would round this model's continuous result; ask for "
                         f"float32 or float64")
    return suffix, dtype


def _write_result(request: dict, data: np.ndarray, affine: np.ndarray, continuous: bool = False) -> Path:
    """Write the result where MONAI Label expects it: a temporary file it deletes after sending
    (no folder left behind), in the requested ``result_extension`` and ``result_dtype``."""
    suffix, dtype = result_format(request, continuous)
    handle, path = tempfile.mkstemp(prefix="ld_label_", suffix=suffix)
    os.close(handle)
    return save_volume(path, data, affine, dtype=dtype)


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


class JobCancelled(Exception):
    """The client went away: the server stops the job (nobody is left to read its result)."""


#: the ``cancel_token`` of every request whose client went away (MONAI Label deep-copies a request, so the
#: server hands a task a token, not an event)
_CANCELLED: set[str] = set()
_CANCELLED_LOCK = threading.Lock()


def cancel(token: str, cancelled: bool = True) -> None:
    """Mark the job of ``token`` cancelled (the server: its client disconnected), or forget it when it ends."""
    with _CANCELLED_LOCK:
        (_CANCELLED.add if cancelled else _CANCELLED.discard)(token)


def _cancellable(request: dict):
    """A job's report hook that stops it at its next progress event once its ``cancel_token`` is cancelled."""
    token = request.get("cancel_token")

    def report(event: dict) -> None:
        if token is not None and token in _CANCELLED:
            raise JobCancelled("the client disconnected")

    return report


class _MainJobTask(InferTask):
    """A task that runs the main job (:func:`~localdiffusion.jobs.run.compute_job`) with the client's job
    parameters, checked with the result format before any work."""

    def __init__(self, models_root: Path, kind, labels, description: str, config: dict):
        super().__init__(kind, labels, 3, description, {**{name: OPTIONS[name].default for name in JOB_PARAMS},
                                                        **config})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return all((self.models_root / d).is_dir() for d in DIRECTIONS)

    @staticmethod
    def options(request: dict[str, Any], continuous: bool) -> JobOptions:
        """The request's job options; :class:`InputError` for a bad one or a bad result format."""
        options = JobOptions(**parse_params(request, JOB_PARAMS))
        result_format(request, continuous)
        return options


class LocalDiffusionTask(_MainJobTask):
    """The main job; the result image is the Local Diffusion translation, or a 4D volume
    ``[local, *extra_outputs]`` (channels last) when ``extra_outputs`` asks for more."""

    def __init__(self, models_root: Path):
        super().__init__(models_root, InferType.OTHERS, None,
                         "Local Diffusion T1 <-> FLAIR translation (research use only)", {"extra_outputs": []})

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        options = self.options(request, continuous=True)
        extras = request.get("extra_outputs", [])
        every = extras == "all"  # every output these models and settings produce
        if isinstance(extras, str):
            extras = list(EXTRA_OUTPUTS) if every else [e for e in extras.split(",") if e]
        if not isinstance(extras, list) or any(e not in EXTRA_OUTPUTS for e in extras):
            raise InputError(f"parameter 'extra_outputs' must be 'all' or a list from {list(EXTRA_OUTPUTS)}, "
                             f"got {extras!r}")
        options.baseline = "baseline" in extras
        options.risk_map = bool({"risk", "risk_regions"} & set(extras))  # its back-translation: one more translation
        job = compute_job(request["image"], options, self.models_root, progress=False,
                          report=_cancellable(request))
        if every:
            extras = [e for e in extras if e in job.volumes]
        missing = [e for e in extras if e not in job.volumes]
        if missing:
            raise InputError(f"{missing} not available for these models or settings (risk needs the calibrated "
                             "DDIM step count and the reverse model)")
        names = ["local", *extras]
        volumes = [job.volumes[n] for n in names]
        data = volumes[0] if len(names) == 1 else np.stack([v.astype(np.float32) for v in volumes], axis=-1)
        result = _write_result(request, data, job.affine, continuous=True)
        params = {"channels": names, "direction": options.direction, "steps": job.steps,
                  "sampler": options.sampler, "seed": options.seed, "warnings": job.warnings}
        if job.regions is not None:  # the risk map's flagged regions, numbered as in the risk_regions channel
            params["regions"] = job.region_report()["regions"]
        return str(result), params


class RiskSegmentationTask(_MainJobTask):
    """The main job's flagged regions as a segmentation (label 1 inside every region where the translation must
    not be trusted), so that clients that list only segmentation models (the stock Slicer MONAILabel plugin)
    show them; the answer's ``regions`` is the region report (each region's number in the job's own
    ``risk_regions`` label map, volume, centre, largest risk, detectors)."""

    LABELS = {"do_not_trust_translation": 1}

    def __init__(self, models_root: Path):
        super().__init__(models_root, InferType.SEGMENTATION, dict(self.LABELS),
                         "Where the T1 <-> FLAIR translation must not be trusted (the risk map's flagged regions)", {})

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        options = self.options(request, continuous=False)
        options.baseline, options.risk_map = False, True
        job = compute_job(request["image"], options, self.models_root, progress=False, report=_cancellable(request))
        if job.regions is None:
            raise InputError("no risk map for these models or settings (it needs the calibrated DDIM step count "
                             "and the reverse model)")
        labels = (job.volumes["risk_regions"] > 0).astype(np.uint8)
        return str(_write_result(request, labels, job.affine)), {
            "labels": self.LABELS, "direction": options.direction, "steps": job.steps, "warnings": job.warnings,
            "regions": job.region_report()["regions"]}


class OodMapTask(InferTask):
    """Calibrated PatchCore OOD probability of the input contrast (``modality`` t1 or flair); the input gate
    checks first that the upload is a brain of that contrast (``force`` maps it anyway)."""

    def __init__(self, models_root: Path):
        super().__init__(InferType.OTHERS, None, 3, "PatchCore OOD probability map",
                         {"modality": "t1", "robust_ood": False, "force": False})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return any(ood_bank_path(self.models_root, m).exists() for m in OOD_MODALITIES)

    def _map(self, request: dict[str, Any]) -> tuple[OodMap, np.ndarray, dict]:
        """The request's OOD map, its affine and the result parameters they share."""
        modality = _modality(request, "t1")
        robust = OPTIONS["robust_ood"].check(request.get("robust_ood"))
        force = OPTIONS["force"].check(request.get("force"))
        warnings: list[str] = []
        ood, affine = probability_map(request["image"], ood_bank_path(self.models_root, modality), modality,
                                      self.models_root, robust=robust, gate_root=self.models_root, force=force,
                                      warnings=warnings)
        return ood, affine, {"modality": modality, "threshold": ood.threshold, "robust_ood": robust,
                             "warnings": warnings}

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        result_format(request, continuous=True)
        ood, affine, params = self._map(request)
        return str(_write_result(request, ood.probability, affine, continuous=True)), params


class OodSegmentationTask(OodMapTask):
    """The OOD region as a label (probability >= the bank's calibrated threshold): a segmentation
    model, so that clients that list only segmentation models (the stock Slicer MONAILabel
    plugin) show where the input is out of distribution."""

    LABELS = {"out_of_distribution": 1}

    def __init__(self, models_root: Path):
        InferTask.__init__(self, InferType.SEGMENTATION, dict(self.LABELS), 3,
                           "Where the input is out of distribution (thresholded PatchCore map)",
                           {"modality": "t1", "robust_ood": False, "force": False})
        self.models_root = Path(models_root)

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        result_format(request, continuous=False)
        ood, affine, params = self._map(request)
        return str(_write_result(request, ood.flagged().astype(np.uint8), affine)), {**params, "labels": self.LABELS}


class TumourSegmentationTask(InferTask):
    """Tumour segmentation U-Net of the input contrast; BraTS labels (1 necrosis, 2 oedema, 4 enhancing). The
    input gate checks first that the upload is a brain of that contrast (``force`` segments it anyway)."""

    LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4}

    def __init__(self, models_root: Path):
        super().__init__(InferType.SEGMENTATION, dict(self.LABELS), 3, "Glioma segmentation (BraTS labels)",
                         {"modality": "flair", "force": False})
        self.models_root = Path(models_root)

    def is_valid(self) -> bool:
        return segmenter_dir(self.models_root, "flair").is_dir()

    @_messages_name_the_upload
    def __call__(self, request: dict[str, Any]):
        from localdiffusion.jobs.segment import segment_volume
        from localdiffusion.network.segmenter import load_segmenter

        modality = _modality(request, "flair")
        force = OPTIONS["force"].check(request.get("force"))
        result_format(request, continuous=False)
        load_volume(request["image"])  # a clear error for an unreadable or broken upload
        warnings: list[str] = []
        labels, affine = segment_volume(load_segmenter(segmenter_dir(self.models_root, modality)), request["image"],
                                        gate_root=self.models_root, force=force, warnings=warnings)
        return str(_write_result(request, labels, affine)), {"modality": modality, "labels": self.LABELS,
                                                             "warnings": warnings}
