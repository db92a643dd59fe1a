"""A non-editable install (what ``pip install .`` and the Slicer module's first run do) carries
the shipped weights: from outside the clone it translates an NRRD file and a DICOM series
with the shipped models and keeps their geometry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_series import write_dicom_series

from localdiffusion.data.io import load_volume, save_volume

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, capture_output=True, text=True)
    return target


def _run(installed: Path, cwd: Path, *args: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(installed), **env}
    return subprocess.run([sys.executable, "-m", "localdiffusion.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_the_installed_package_uses_its_own_copy_of_the_weights(installed, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import localdiffusion.shipped as s; print(s.__file__); "
                            "print(s.MODELS_ROOT); print(s.LABEL_APP)"], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(installed)}, check=True)
    module, models, app = (Path(line) for line in probe.stdout.split())
    assert module.is_relative_to(installed) and models.is_relative_to(installed) and app.is_relative_to(installed)
    assert (models / "t1_to_flair" / "model.pt").stat().st_size > 1e6 and (app / "main.py").is_file()
    assert not (installed / "localdiffusion" / "bundle" / "models" / "t1_to_flair" / "__pycache__").exists()
    # a models folder elsewhere, named by the environment variable
    save_volume(tmp_path / "x.nrrd", np.ones((40, 40, 40), np.float32), np.eye(4))
    elsewhere = _run(installed, tmp_path, "run", "--input", str(tmp_path / "x.nrrd"), "--out-dir", str(tmp_path),
                     LOCALDIFFUSION_MODELS=str(tmp_path / "no_models"))
    assert elsewhere.returncode == 2 and "no_models" in elsewhere.stderr


@pytest.mark.parametrize("kind", ["nrrd", "dicom"])
def test_the_installed_package_translates_nrrd_and_dicom_keeping_geometry(installed, tmp_path, tumour_case, kind):
    t1 = tumour_case.images["t1"]
    affine = tumour_case.affine.copy()
    affine[:3, 3] += [3.0, -2.0, 5.0]  # not the phantom's own origin
    if kind == "nrrd":
        source = save_volume(tmp_path / "case_t1.nrrd", t1, affine)
    else:
        source = tmp_path / "case_t1"
        write_dicom_series(np.round(t1 * 1000.0 / t1.max()), affine, source, "1.2.826.0.1.3680043.2.1125.77")
    out = tmp_path / "out"
    proc = _run(installed, tmp_path, "run", "--input", str(source), "--out-dir", str(out), "--steps", "1",
                "--no-baseline", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = {e["name"]: Path(e["path"]) for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "output"}
    suffix = ".nrrd" if kind == "nrrd" else ".nii.gz"
    assert set(written) == {"ood", "local", "ood_mask", "provenance"}
    assert all(p.name.endswith(suffix) for name, p in written.items() if name != "provenance")
    translated, out_affine = load_volume(written["local"])
    assert translated.shape == t1.shape and np.allclose(out_affine, affine, atol=1e-4)
    assert np.any(translated[tumour_case.brain_mask > 0] != 0)
