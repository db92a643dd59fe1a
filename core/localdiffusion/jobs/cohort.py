"""Cohorts of volumes: resolve inputs (a file, a folder, a MONAI datalist) and run the main job on each (the bundle's inference).

No logic lives in the bundle: configs build these objects and call ``run()``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from localdiffusion.data.formats import holds_dicom_series, split_suffix
from localdiffusion.data.io import check_exists
from localdiffusion.errors import InputError
from localdiffusion.jobs.run import JobOptions, run_job


def resolve_inputs(input_spec: str | Path | list) -> list[Path]:
    """An image file, a folder of image files (NIfTI, NRRD, MetaImage, MGZ), a folder holding
    one DICOM series, a datalist JSON (list of paths or of ``{"image": path}``, or
    ``{"testing": [...]}`` as in MONAI datalists), or a list."""
    if isinstance(input_spec, (list, tuple)):
        return [p for item in input_spec for p in resolve_inputs(item)]
    if isinstance(input_spec, dict):
        return resolve_inputs(input_spec["image"])
    path = Path(str(input_spec))
    if not str(input_spec):
        raise InputError("no input given (override --input with an image file, a folder or a datalist JSON)")
    check_exists(path)  # names a broken link or a link loop as such
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and split_suffix(p)[1] and not p.name.startswith("."))
        if files:
            return files
        if holds_dicom_series(path):
            return [path]
        raise InputError(f"{path}: folder holds no image files (NIfTI, NRRD, MetaImage, MGZ) and no DICOM series")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not a valid datalist JSON ({exc})") from exc
        items = data.get("testing", data.get("data", [])) if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise InputError(f"{path}: datalist holds no entries")
        entries = [item["image"] if isinstance(item, dict) else item for item in items]
        return resolve_inputs([e if Path(e).is_absolute() else str(path.parent / e) for e in entries])
    return [path]


class CohortTranslator:
    """Runs :func:`~localdiffusion.jobs.run.run_job` on every input, with progress.

    Every input is checked (readable, 3D, finite, non-empty) before any output is
    written, so a bad case in a cohort stops the run without partial outputs.
    """

    def __init__(self, inputs, output_dir: str | Path, options: JobOptions, models_root: str | Path):
        self.inputs = inputs
        self.output_dir, self.options, self.models_root = Path(output_dir), options, Path(models_root)

    def run(self) -> dict[str, dict[str, Path]]:
        from localdiffusion.data.io import load_volume

        inputs = resolve_inputs(self.inputs)
        for path in inputs:
            load_volume(path)
        results = {}
        for path in tqdm(inputs, desc="cohort", unit="volume", disable=len(inputs) < 2):
            results[str(path)] = run_job(path, self.output_dir, self.options, self.models_root,
                                         progress=len(inputs) < 2)
        return results


def report_user_faults() -> None:
    """Make an *uncaught* user fault end the process with one ``error:`` line and exit code 2.

    For ``python -m monai.bundle run``, which would otherwise print MONAI's wrapped traceback
    (the :class:`InputError` sits in the exception's cause chain). Only the interpreter's
    last-resort handler changes: code that calls the workflow and catches exceptions sees them
    unchanged, and any other exception keeps its traceback.
    """
    previous = sys.excepthook

    def hook(kind, exc, tb):
        fault = exc
        while fault is not None and not isinstance(fault, InputError):
            fault = fault.__cause__ or fault.__context__
        if fault is None:
            return previous(kind, exc, tb)
        print(f"error: {fault}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2)  # the exit code of a user fault; outputs are written atomically, nothing is pending

    sys.excepthook = hook
