"""Work of the Slicer module without any GUI: MRML nodes <-> NIfTI, the background job.

Only needs ``slicer`` (MRML, ``slicer.util`` array helpers), ``vtk``, ``numpy`` and
``nibabel``; it runs inside 3D Slicer and, for tests, with the ``slicer-core`` wheel.

Geometry: a NIfTI affine maps voxel (i, j, k) to RAS mm, exactly Slicer's IJKToRAS
matrix; ``slicer.util.arrayFromVolume`` returns (k, j, i) arrays, so arrays are transposed
on the way in and out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

#: output name of ``localdiffusion run`` -> (node name suffix, is label map)
OUTPUTS = {
    "local": ("Local Diffusion", False),
    "baseline": ("baseline", False),
    "ood": ("OOD probability", False),
    "ood_mask": ("OOD mask", True),
    "risk": ("hallucination risk", False),
}


def node_to_nifti(node, path: str | os.PathLike) -> Path:
    """Write a scalar volume node as NIfTI with its IJKToRAS geometry."""
    import slicer
    import vtk

    array = slicer.util.arrayFromVolume(node)
    if array is None or array.size == 0:
        raise ValueError(f"volume {node.GetName()!r} holds no image data")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    affine = slicer.util.arrayFromVTKMatrix(matrix)
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.float32), affine)
    nib.save(image, str(path))
    return Path(path)


def nifti_to_node(path: str | os.PathLike, scene, name: str, label: bool = False):
    """Load a NIfTI file into a new scalar (or label map) volume node of ``scene``."""
    import slicer
    import vtk

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    data = data.astype(np.uint8 if label else np.float32)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(image.affine[r, c]))
    node.SetIJKToRASMatrix(matrix)
    return node


@dataclass
class TranslationRequest:
    """What the clinician chose in the panel (mirrors the parameter node)."""

    direction: str = "t1_to_flair"
    steps: int = 25
    seed: int = 0
    t_intermediate: int = -1  # -1: the default (10% of T)
    sampler: str = "ddim"
    python: str = field(default_factory=lambda: sys.executable)
    models: str = ""  # empty: the package's shipped models

    def command(self, input_path: Path, out_dir: Path) -> list[str]:
        cmd = [self.python, "-m", "localdiffusion.cli", "run", "--input", str(input_path), "--out-dir", str(out_dir),
               "--direction", self.direction, "--steps", str(self.steps), "--seed", str(self.seed),
               "--sampler", self.sampler]
        if self.t_intermediate >= 0:
            cmd += ["--t-intermediate", str(self.t_intermediate)]
        if self.models:
            cmd += ["--models", self.models]
        return cmd


class BackgroundTranslation:
    """One translation in a background process: inputs written to a temporary folder,
    ``localdiffusion run`` started, progress read from its output, results loaded back
    into nodes with the input's geometry, the temporary folder removed.

    Poll with :meth:`poll` (the widget does so from a QTimer); :meth:`cancel` stops it.
    """

    def __init__(self, input_node, request: TranslationRequest):
        self.input_node, self.request = input_node, request
        self.workdir = Path(tempfile.mkdtemp(prefix="SlicerLocalDiffusion-"))
        self.process: subprocess.Popen | None = None
        self.progress = 0.0
        self.log: list[str] = []

    def start(self) -> None:
        source = self.workdir / "input.nii.gz"
        node_to_nifti(self.input_node, source)
        self.process = subprocess.Popen(self.request.command(source, self.workdir / "out"), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)
        os.set_blocking(self.process.stdout.fileno(), False)

    def poll(self) -> str:
        """``running``, ``done`` or ``failed``; updates :attr:`progress` (0..1)."""
        chunk = self.process.stdout.read() if self.process and self.process.stdout else ""
        if chunk:
            self.log.append(chunk)
            self.progress = max(self.progress, _last_percent(chunk))
        code = self.process.poll()
        if code is None:
            return "running"
        rest = self.process.stdout.read() or ""
        self.log.append(rest)
        return "done" if code == 0 else "failed"

    def wait(self, timeout: float | None = None) -> str:
        self.process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.cleanup()

    def error_message(self) -> str:
        text = "".join(self.log)
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        return errors[-1] if errors else text[-2000:]

    def load_results(self, scene) -> dict[str, object]:
        """Result nodes keyed like :data:`OUTPUTS`, named after the input node."""
        out_dir = self.workdir / "out"
        nodes = {}
        for key, (suffix, label) in OUTPUTS.items():
            matches = sorted(out_dir.glob(f"*_{_file_suffix(key, self.request.direction)}.nii.gz"))
            if matches:
                nodes[key] = nifti_to_node(matches[0], scene, f"{self.input_node.GetName()} {suffix}", label)
        return nodes

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _file_suffix(key: str, direction: str) -> str:
    target = direction.split("_to_")[1]
    return {"local": f"{target}_local_diffusion", "baseline": f"{target}_baseline",
            "ood": "ood_probability", "ood_mask": "ood_mask", "risk": "hallucination_risk"}[key]


def _last_percent(text: str) -> float:
    """Last tqdm percentage in ``text`` as a fraction (0 when none)."""
    import re

    found = re.findall(r"(\d{1,3})%\|", text)
    return int(found[-1]) / 100.0 if found else 0.0


def run_translation(input_node, request: TranslationRequest, scene, timeout: float | None = None) -> dict[str, object]:
    """Synchronous helper (tests, scripting): run, load results, clean up."""
    job = BackgroundTranslation(input_node, request)
    try:
        job.start()
        status = job.wait(timeout)
        if status != "done":
            raise RuntimeError(f"translation failed: {job.error_message()}")
        return job.load_results(scene)
    finally:
        job.cleanup()
