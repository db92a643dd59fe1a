"""Reading a user's input volume onto a model's working grid (shared by every job)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from localdiffusion.data.formats import WRITABLE_SUFFIXES, split_suffix
from localdiffusion.data.io import load_volume, volume_stem
from localdiffusion.data.readers import Case
from localdiffusion.errors import InputError
from localdiffusion.volume.grid import PreparedCase, prepare_case

log = logging.getLogger("localdiffusion")


def prepare_input(path: str | Path, modality: str, spacing: float, in_plane: tuple[int, int]) -> PreparedCase:
    """Load one 3D input volume and put it on its working grid.

    Args:
        path: a volume file or a DICOM series folder.
        modality: the contrast it is read as.
        spacing, in_plane: the working grid (mm, in-plane size) of the model that will read it.
    Returns:
        the :class:`~localdiffusion.volume.grid.PreparedCase`; :class:`InputError` naming ``path``
        for an unreadable, invalid or unstripped input.
    """
    data, affine = load_volume(path)
    refuse_label_map(data, path)
    case = Case(volume_stem(path), {modality: data}, affine, None, "volume", {modality: Path(path)})
    try:
        prepared = prepare_case(case, spacing, in_plane)
    except InputError as exc:  # the grid's messages name the case; the user knows the file
        message = str(exc)
        raise InputError(f"{path}{message[len(case.case_id):]}" if message.startswith(case.case_id) else
                         f"{path}: {message}") from None
    if prepared.brain_slices().size == 0:
        raise InputError(f"{path}: no slice holds enough brain for the {in_plane} working grid "
                         f"at {spacing} mm (volume too small for the network)")
    return prepared




def _writable_folder(path: Path) -> str | None:
    """Why files cannot be created in folder ``path`` (created on demand), or None."""
    folder = path
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None


def _resolved(path: str | Path) -> Path:
    """``path`` with links followed; a link loop is the reader's to report, not a crash here."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def check_outputs(inputs: list[str | Path], outputs: dict[str, str | Path | None]) -> None:
    """Before any work: every output (``{option name: path}``) can be written, is not a folder,
    not an input, and no two outputs share a path. One :class:`InputError` naming the first fault."""
    seen: dict[Path, str] = {}
    resolved_inputs = {_resolved(p) for p in inputs}
    for option, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path}: {option} is an existing folder, not a file name")
        if len(path.name.encode()) > MAX_NAME_BYTES - 16:  # the atomic writer's temporary name adds a few bytes
            raise InputError(f"{path}: {option}'s file name is {len(path.name.encode())} bytes, too long for the "
                             f"file system (at most {MAX_NAME_BYTES - 16} here)")
        if split_suffix(path)[1].lower() not in WRITABLE_SUFFIXES:
            raise InputError(f"{path}: {option} must end in one of {', '.join(WRITABLE_SUFFIXES)}")
        if _resolved(path) in resolved_inputs:
            raise InputError(f"{path}: refusing to overwrite the input volume")
        if _resolved(path) in seen:
            raise InputError(f"{path}: {option} and {seen[_resolved(path)]} name the same file")
        seen[_resolved(path)] = option
        problem = _writable_folder(path.parent)
        if problem:
            raise InputError(f"{path}: cannot write {option} ({problem})")


def check_out_dir(path: str | Path) -> None:
    """Before any work: ``path`` is (or can become) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: --out-dir is a file, not a folder")
    problem = _writable_folder(path)
    if problem:
        raise InputError(f"{path}: cannot write outputs there ({problem})")


def refuse_label_map(data: np.ndarray, path: str | Path, max_labels: int = 8) -> None:
    """An input whose voxels take a handful of integer values is a segmentation, not an MR image."""
    sample = data[::3, ::3, ::3]
    foreground = sample[sample != 0]
    if foreground.size < 100:
        return  # too small to tell (and too small for the network: prepare_input says so)
    values = np.unique(foreground)
    if len(values) == 1:
        raise InputError(f"{path}: constant volume (every non-zero voxel is {values[0]:g}), not an MR image")
    if len(values) <= max_labels and np.all(values == np.round(values)):
        raise InputError(f"{path}: looks like a label map ({len(values)} distinct integer values "
                         f"{values[:8].astype(int).tolist()}), not an MR image")


def check_sampling(denoiser, steps: int | None, t_intermediate: int = -1) -> None:
    """Before any work: the step count and fusion timestep fit the model's training timesteps."""
    T = denoiser.schedule.num_train_timesteps
    if steps is not None and not 1 <= int(steps) <= T:
        raise InputError(f"steps must be between 1 and the model's {T} training timesteps, got {steps}")
    if not -1 <= int(t_intermediate) < T:
        raise InputError(f"t_intermediate must be -1 (the model's) or between 0 and {T - 1}, got {t_intermediate}")


#: the longest file name most file systems take, in bytes
MAX_NAME_BYTES = 255
#: the brain's smallest extent along the slices for the contrast check (twice the depth window's 15 mm)
MIN_GATE_SPAN_MM = 30.0


def gate_input(path: str | Path, prepared: PreparedCase, contrast: str, models_root: str | Path, *,
               probability: np.ndarray | None = None, bank=None, force: bool = False,
               robust_map: bool = False) -> list[str]:
    """The input gate (:mod:`~localdiffusion.detectors.input_gate`) before a translation.

    A refusal raises :class:`InputError` naming ``path`` unless ``force``; warnings (and a
    forced refusal) are logged and returned. ``probability``: the OOD map already computed on
    the working grid; else, with a ``bank``, every third brain slice is mapped for the gate.
    ``robust_map``: the job writes the robust OOD map (the warnings say what that map means).
    A models folder without ``input_gate.json`` is not gated, and says so.
    """
    from localdiffusion.detectors.input_gate import GATE_FILE, InputGate, map_summary

    gate_path = Path(models_root) / GATE_FILE
    if not gate_path.exists():
        warnings = [f"{gate_path} not found: the input was not checked for contrast and distribution"]
    else:
        gate = InputGate.load(gate_path)
        span = int(prepared.brain.any(axis=(0, 1)).sum())  # brain slices
        if span * prepared.grid.spacing < MIN_GATE_SPAN_MM:
            thin = (f"too few slices to judge the contrast: the brain spans {span} slices of {prepared.grid.spacing:g} "
                    f"mm ({span * prepared.grid.spacing:g} mm); the check needs {MIN_GATE_SPAN_MM:g} mm")
            if not force:
                raise InputError(f"{path}: {thin} (--force translates anyway)")
            log.warning("warning: %s: translated although %s (--force)", path, thin)
            return [f"translated although {thin} (--force)"]
        correlation, strength = gate.measure(contrast, prepared.images[contrast], prepared.brain, prepared.grid.spacing)
        summary = None
        if gate.judge(contrast, correlation, None).refusal and not force:
            pass  # the wrong contrast is clear already: refuse without mapping the volume
        elif bank is not None:
            summary = map_summary(prepared, contrast, bank, probability)
        report = gate.judge(contrast, correlation, summary, strength, robust_map=robust_map)
        if report.refusal and not force:
            raise InputError(f"{path}: {report.refusal} (--force translates anyway)")
        warnings = report.warnings + ([f"translated although {report.refusal} (--force)"] if report.refusal else [])
    for warning in warnings:
        log.warning("warning: %s: %s", path, warning)
    return warnings
