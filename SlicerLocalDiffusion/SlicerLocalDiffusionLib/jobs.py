"""Translation jobs that run outside the GUI thread, with progress and cancel.

* :class:`LocalTranslation`: the ``localdiffusion`` package in a background process; the
  input is written to a temporary folder, ``localdiffusion run --json`` reports progress,
  the written outputs and any error as JSON lines (its documented machine interface),
  results are read back and the folder removed.
* :class:`ServerTranslation`: a MONAI Label server (``local_diffusion`` model) over HTTP in
  a background thread; needs nothing but the standard library on the Slicer side.

Both are polled (the widget does so from a QTimer): :meth:`poll` returns ``running``,
``done`` or ``failed``; :meth:`load_results` turns the outputs into volume nodes.
"""

from __future__ import annotations

import codecs
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .nodes import OUTPUTS, node_to_nifti, output_nodes, read_nifti, region_nodes


@dataclass
class TranslationRequest:
    """What the clinician chose in the panel (mirrors the parameter node)."""

    direction: str = "t1_to_flair"
    steps: int = 0  # the model's validated step count
    seed: int = 0
    local_diffusion: str = "model"  # model: the direction's validated choice; on / off force it
    t_intermediate: int = -1  # Local Diffusion's fusion timestep; -1: the model's validated value
    sampler: str = "ddim"
    device: str = "auto"  # auto: CUDA when available; cpu / cuda force the choice
    force: bool = False  # translate even an input the input gate refuses (with a warning)
    python: str = field(default_factory=lambda: sys.executable)
    models: str = ""  # empty: the package's shipped models
    server: str = ""  # MONAI Label server URL; empty: run locally
    token: str = field(default="", repr=False)  # the server's access token (never stored in the scene)

    def command(self, input_path: Path, out_dir: Path) -> list[str]:
        """``localdiffusion run`` for the local background process."""
        cmd = [self.python, "-m", "localdiffusion.cli", "run", "--input", str(input_path), "--out-dir", str(out_dir),
               "--direction", self.direction, "--steps", str(self.steps), "--seed", str(self.seed),
               "--sampler", self.sampler, "--device", self.device, "--json"]
        if self.force:
            cmd.append("--force")
        cmd += ["--local-diffusion", self.local_diffusion, "--t-intermediate", str(self.t_intermediate)]
        if self.models:
            cmd += ["--models", self.models]
        return cmd

    def server_params(self) -> dict:
        """Parameters of the MONAI Label ``local_diffusion`` model (every available output)."""
        return {"direction": self.direction, "steps": self.steps, "seed": self.seed,
                "local_diffusion": self.local_diffusion, "t_intermediate": self.t_intermediate,
                "sampler": self.sampler, "device": self.device,
                "force": self.force,
                "extra_outputs": "all"}


class TranslationJob:
    """Temporary folder, progress, log and the common result handling of both job kinds."""

    def __init__(self, input_node, request: TranslationRequest):
        self.input_node, self.request = input_node, request
        self.workdir = Path(tempfile.mkdtemp(prefix="SlicerLocalDiffusion-"))
        self.input_path = self.workdir / "input.nii.gz"
        self.progress = 0.0
        self.log: list[str] = []
        self.volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # output name -> (array, affine), when done
        self.warnings: list[str] = []  # the input gate's warnings (a borderline input), when done
        self.regions: list[dict] = []  # the risk map's flagged regions (the run's region report), when done

    def start(self) -> None:
        node_to_nifti(self.input_node, self.input_path)

    def wait(self, timeout: float | None = None) -> str:
        raise NotImplementedError

    def error_message(self) -> str:
        """The job's last error line, the temporary copy of the input named as the volume the user picked."""
        text = "".join(self.log)
        errors = [f"error: {e['message']}" for e in read_events(text) if e.get("event") == "error"]
        errors += [line for line in text.splitlines() if line.startswith("error:")]
        message = errors[-1] if errors else text[-2000:]
        return message.replace(str(self.input_path), f"volume '{self.input_node.GetName()}'")

    def load_results(self, scene) -> dict[str, object]:
        """Result nodes keyed like :data:`~.nodes.OUTPUTS`, named after the input node; with flagged regions
        also ``regions`` (a segmentation) and ``region_table`` (:func:`~.nodes.region_nodes`)."""
        nodes = output_nodes(self.volumes, scene, self.input_node.GetName())
        if nodes.get("risk_regions") is not None:
            nodes["regions"], nodes["region_table"] = region_nodes(
                nodes["risk_regions"], self.regions, scene, f"{self.input_node.GetName()} flagged regions")
        return nodes

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class LocalTranslation(TranslationJob):
    """``localdiffusion run`` in a background process."""

    def __init__(self, input_node, request: TranslationRequest):
        super().__init__(input_node, request)
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self.process = subprocess.Popen(self.request.command(self.input_path, self.workdir / "out"),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read_output, daemon=True)  # pipes cannot poll on Windows
        self._reader.start()

    def _read_output(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := self.process.stdout.read1(65536):
            self.log.append(decoder.decode(chunk))
        self.log.append(decoder.decode(b"", final=True))

    def poll(self) -> str:
        """``running``, ``done`` or ``failed``; updates :attr:`progress` (0..1)."""
        self.progress = max(self.progress, run_progress(read_events("".join(self.log))))
        if self.process.poll() is None:
            return "running"
        self._reader.join()
        if self.process.returncode != 0:
            return "failed"
        if not self.volumes:
            events = read_events("".join(self.log))
            self.warnings = [e["message"] for e in events if e.get("event") == "warning"]
            self.regions = [e for e in events if e.get("event") == "region"]
            for name, path in written_outputs(events).items():
                self.volumes[name] = read_nifti(path)
        self.progress = 1.0
        return "done"

    def wait(self, timeout: float | None = None) -> str:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # still running: poll says so
        return self.poll()

    def cancel(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.cleanup()


class ServerTranslation(TranslationJob):
    """The MONAI Label server's ``local_diffusion`` model, called from a background thread."""

    def __init__(self, input_node, request: TranslationRequest, timeout: float = 3600.0):
        super().__init__(input_node, request)
        self.timeout = timeout
        self._thread: threading.Thread | None = None
        self._failed = False

    def start(self) -> None:
        super().start()
        self._thread = threading.Thread(target=self._call, daemon=True)
        self._thread.start()

    def _call(self) -> None:
        from .label_client import infer

        try:
            image_path, params = infer(self.request.server, "local_diffusion", self.input_path,
                                       self.request.server_params(), self.workdir, self.timeout,
                                       token=self.request.token)
            data, affine = read_nifti(image_path)
            channels = params.get("channels", ["local"])
            data = data[..., None] if data.ndim == 3 else data
            if data.shape[-1] != len(channels):
                raise ValueError(f"server returned {data.shape[-1]} channels for {channels}")
            self.volumes = {name: (data[..., i], affine) for i, name in enumerate(channels)}
            self.warnings = list(params.get("warnings", []))
            self.regions = list(params.get("regions", []))
        except Exception as exc:  # reported through error_message(), never raised in the thread
            self.log.append(f"error: {exc}\n")
            self._failed = True

    def poll(self) -> str:
        if self._thread.is_alive():
            return "running"
        if self._failed:
            return "failed"
        self.progress = 1.0
        return "done"

    def wait(self, timeout: float | None = None) -> str:
        self._thread.join(timeout)
        return self.poll()

    def cancel(self) -> None:
        """Stop waiting: the result is discarded (the server finishes its own work)."""
        self._failed = True
        self.cleanup()


def start_translation(input_node, request: TranslationRequest) -> TranslationJob:
    """Start the job the request asks for: a MONAI Label server if it names one, else local."""
    job = ServerTranslation(input_node, request) if request.server else LocalTranslation(input_node, request)
    job.start()
    return job


def read_events(text: str) -> list[dict]:
    """The JSON-line events of ``localdiffusion run --json`` in ``text`` (other lines, e.g. warnings, are skipped)."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line still being written
            if isinstance(event, dict):
                events.append(event)
    return events


def written_outputs(events: list[dict]) -> dict[str, Path]:
    """The files the job reported as written (``output`` events), known outputs only."""
    return {e["name"]: Path(e["path"]) for e in events
            if e.get("event") == "output" and e.get("name") in OUTPUTS and Path(e["path"]).is_file()}


def run_progress(events: list[dict], phases: tuple[str, ...] = ("local", "baseline")) -> float:
    """Progress (0..1) from the ``progress`` events: the sampling phases the job announced in its
    ``phases`` event (Local Diffusion, the risk map's back-translation, the baseline; ``phases``
    when it announced none) count equally, each from 0 to 1."""
    announced = [e["phases"] for e in events if e.get("event") == "phases" and e.get("phases")]
    phases = tuple(announced[-1]) if announced else phases
    latest = {e["phase"]: float(e["fraction"]) for e in events if e.get("event") == "progress" and e.get("phase") in phases}
    return min(1.0, sum(latest.values()) / len(phases))


def run_translation(input_node, request: TranslationRequest, scene, timeout: float | None = None) -> dict[str, object]:
    """Synchronous helper (tests, scripting): run, load results, clean up; a job still running
    after ``timeout`` seconds is cancelled."""
    job = start_translation(input_node, request)
    try:
        status = job.wait(timeout)
        if status == "running":
            job.cancel()
            raise RuntimeError(f"translation did not finish within {timeout} s (cancelled)")
        if status != "done":
            raise RuntimeError(f"translation failed: {job.error_message()}")
        return job.load_results(scene)
    finally:
        job.cleanup()
