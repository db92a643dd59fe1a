"""The module's Sample Data entry: a phantom glioma case, made on this computer.

Nothing is downloaded: ``localdiffusion phantom`` (the installed package, run by Slicer's Python in a
child process) generates one test-split glioma case from nilearn's MNI152 template, and its T1, FLAIR
and tumour labels are loaded as nodes. Slicer's Sample Data module calls :func:`load_phantom_case`
through the entry the module registers (``customDownloader``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: the Sample Data category and entry
CATEGORY = "Local Diffusion"
SAMPLE_NAME = "LocalDiffusionPhantomGlioma"
#: contrast -> node name (the tumour labels load as a label map)
NODE_NAMES = {"t1": "PhantomGlioma_T1", "flair": "PhantomGlioma_FLAIR", "seg": "PhantomGlioma_tumour"}


class SampleDataError(RuntimeError):
    """The phantom case could not be made (the message says why, for the user)."""


def generate_phantom_case(python: str, folder: str | Path, seed: int = 0, timeout: float = 600.0) -> dict[str, Path]:
    """Write one phantom glioma case under ``folder`` (reused when already there).

    Args:
        python: a Python with the ``localdiffusion`` package (Slicer's own after the first-use install).
        folder: where the case folder goes (Slicer's cache folder).
        seed: the cohort seed (0: the same case every time).
    Returns:
        contrast -> file, for ``t1``, ``flair`` and ``seg``.
    """
    folder = Path(folder)
    existing = _case_files(folder)
    if existing:
        return existing
    cmd = [python, "-m", "localdiffusion.cli", "phantom", "--out", str(folder), "--healthy", "0", "--tumour", "1",
           "--split", "test", "--seed", str(seed)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SampleDataError(f"could not run {python} to make the phantom case: {exc}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SampleDataError(f"making the phantom case failed: {last}")
    files = _case_files(folder)
    if not files:
        raise SampleDataError(f"the phantom case was not written to {folder}")
    return files


def _case_files(folder: Path) -> dict[str, Path] | None:
    for case in sorted(folder.glob("*_test_t*")) if folder.is_dir() else []:
        files = {key: case / f"{case.name}_{key}.nii.gz" for key in NODE_NAMES}
        if all(path.is_file() for path in files.values()):
            return files
    return None


def load_phantom_case(scene, python: str, folder: str | Path, seed: int = 0) -> list:
    """Make (or reuse) the phantom case and load it into ``scene``: T1 and FLAIR volumes, tumour label map."""
    from .nodes import nifti_to_node

    files = generate_phantom_case(python, folder, seed)
    return [nifti_to_node(files[key], scene, name, label=(key == "seg")) for key, name in NODE_NAMES.items()]
