"""Cohorts of volumes: resolve the inputs (a file, a folder, a MONAI datalist, a BraTS or MSD
release) and run the main job on each, on one process or sharded across ``torchrun`` ranks.

No logic lives in the bundle: configs build these objects and call ``run()``.

A cohort run is resumable and keeps going: a case whose outputs all exist is skipped (outputs
are written all-or-nothing, so existing means complete), a failing case is recorded and the
others still run, and ``cohort_report.json`` / ``.csv`` in the output folder list every case
with its status (``done``, ``skipped``, ``failed`` for a user fault, ``error`` for anything
else), error and seconds. Under ``torchrun`` each rank takes a disjoint shard (case ``i`` goes
to rank ``i % world``), on GPU ``r`` when there are GPUs; rank 0 merges the reports.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from localdiffusion.data.formats import holds_dicom_series, split_suffix
from localdiffusion.data.io import atomic_path, check_exists
from localdiffusion.errors import InputError
from localdiffusion.jobs.run import JobOptions, planned_outputs, run_job
from localdiffusion.options import DIRECTIONS

log = logging.getLogger("localdiffusion")
REPORT = "cohort_report"


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


@dataclass(frozen=True)
class CohortItem:
    """One volume of a cohort: a 3D file or DICOM folder, or channel ``channel`` of an MSD 4D image."""

    case: str
    path: Path
    channel: int | None = None


def resolve_cohort(input_spec, source: str) -> list[CohortItem]:
    """The volumes of the source contrast in ``input_spec``: a BraTS 2020/2021/2023 release
    (case folders), an MSD Task01 folder (``imagesTr/``), or anything :func:`resolve_inputs` takes."""
    from localdiffusion.data.readers import MSD_CHANNEL, detect_layout, list_cases, source_file

    root = Path(str(input_spec)) if isinstance(input_spec, (str, Path)) else None
    if root is not None and root.is_dir():
        if (root / "imagesTr").is_dir():
            return [CohortItem(split_suffix(p)[0], p, MSD_CHANNEL[source]) for p in list_cases(root)]
        cases = [p for p in list_cases(root) if detect_layout(p) != "msd"]
        if cases:
            return [CohortItem(case.name, source_file(case, source)) for case in cases]
    return [CohortItem(split_suffix(p)[0], p) for p in resolve_inputs(input_spec)]


def distributed_context() -> tuple[int, int]:
    """(rank, world) under ``torchrun`` (process group: NCCL on GPU, gloo on CPU), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch

    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank(), world


def is_cohort(items: list[CohortItem], world: int) -> bool:
    """Whether a run is a cohort run (report, resume, keep going) rather than one volume."""
    return len(items) > 1 or items[0].channel is not None or world > 1


@dataclass
class CaseResult:
    case: str
    input: str
    status: str  # done | skipped | failed (a user fault) | error (anything else)
    error: str
    seconds: float
    rank: int


class CohortTranslator:
    """Runs :func:`~localdiffusion.jobs.run.run_job` on every case of this process's shard.

    ``run()`` returns the written paths by input; :attr:`exit_code` is 0 when every case is
    done or skipped, 2 when a case failed on a user fault, 1 when one failed otherwise. A
    single input (not a cohort) keeps the one-volume behaviour: its user fault is raised.
    ``items``: the cohort already resolved from ``inputs`` (the CLI resolves it to decide).
    """

    def __init__(self, inputs, output_dir: str | Path, options: JobOptions, models_root: str | Path | None = None,
                 items: list[CohortItem] | None = None):
        self.inputs, self.options, self.items = inputs, options, items
        self.output_dir, self.models_root = Path(output_dir), Path(models_root) if models_root else None
        self.exit_code = 0
        self.results: list[CaseResult] = []

    def run(self) -> dict[str, dict[str, Path]]:
        rank, world = distributed_context()
        items = self.items if self.items is not None else resolve_cohort(self.inputs,
                                                                          DIRECTIONS[self.options.direction][0])
        if not is_cohort(items, world):
            outputs = run_job(items[0].path, self.output_dir, self.options, self.models_root, progress=True)
            return {str(items[0].path): outputs}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        mine = items[rank::world]
        written = {}
        for item in tqdm(mine, desc=f"cohort (rank {rank} of {world})" if world > 1 else "cohort", unit="case"):
            outputs = self._one(item, rank)
            if outputs:
                written[str(item.path)] = outputs
        self._write_report(rank, world)
        return written

    def _one(self, item: CohortItem, rank: int) -> dict[str, Path] | None:
        start = time.monotonic()
        status, error, outputs = "done", "", None
        workdir = None
        try:
            source = item.path
            if item.channel is not None:  # an MSD 4D image: its source channel as a 3D file of its own
                source, workdir = _extract_channel(item, DIRECTIONS[self.options.direction][0])
            planned = planned_outputs(source, self.output_dir, self.options, self.models_root)
            if all(p.is_file() and p.stat().st_size > 0 for p in planned.values()):
                status, outputs = "skipped", planned
            else:
                outputs = run_job(source, self.output_dir, self.options, self.models_root, progress=False)
        except InputError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # not the user's fault: its traceback goes to the log, the cohort goes on
            status, error = "error", f"{exc.__class__.__name__}: {exc}"
            log.error("%s: %s", item.path, traceback.format_exc())
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        if status in ("failed", "error"):
            log.warning("error: %s", error if error.startswith(str(item.path)) else f"{item.path}: {error}")
        self.results.append(CaseResult(item.case, str(item.path), status, error,
                                       round(time.monotonic() - start, 2), rank))
        return outputs

    def _write_report(self, rank: int, world: int) -> None:
        part = self.output_dir / f".{REPORT}.rank{rank}.json"
        with atomic_path(part) as tmp:
            tmp.write_text(json.dumps([asdict(r) for r in self.results]), encoding="utf-8")
        if world > 1:
            import torch

            torch.distributed.barrier()
        rows = []
        for r in range(world):
            rows += json.loads((self.output_dir / f".{REPORT}.rank{r}.json").read_text(encoding="utf-8"))
        rows.sort(key=lambda row: row["case"])
        statuses = {row["status"] for row in rows}
        self.exit_code = 1 if "error" in statuses else 2 if "failed" in statuses else 0
        if world > 1:
            torch.distributed.barrier()  # every rank has read every part
        if rank != 0:
            return
        with atomic_path(self.output_dir / f"{REPORT}.json") as tmp:
            tmp.write_text(json.dumps({"cases": rows, "world_size": world,
                                       "counts": {s: sum(r["status"] == s for r in rows) for s in sorted(statuses)}},
                                      indent=1), encoding="utf-8")
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(CaseResult.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(self.output_dir / f"{REPORT}.csv") as tmp:
            tmp.write_text(text.getvalue(), encoding="utf-8")
        for r in range(world):
            (self.output_dir / f".{REPORT}.rank{r}.json").unlink(missing_ok=True)


def _extract_channel(item: CohortItem, source: str) -> tuple[Path, Path]:
    from localdiffusion.data.io import load_volume, save_volume

    data, affine = load_volume(item.path, expect_3d=False)
    if data.ndim != 4 or data.shape[3] <= item.channel:
        raise InputError(f"{item.path}: MSD Task01 expects a 4D volume with 4 channels, got {data.shape}")
    workdir = Path(tempfile.mkdtemp(prefix="ld_msd_"))
    return save_volume(workdir / f"{item.case}_{source}.nii.gz", np.ascontiguousarray(data[..., item.channel]),
                       affine), workdir


def exit_with(code: int) -> None:
    """End a bundle run with the cohort's exit code (0 when every case is done or skipped)."""
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


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
