"""The standalone bundle (``make bundle``): its own code under ``scripts/``, its own folder as
``bundle_root``, run from another folder by ``python -m monai.bundle run``."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # copies the shipped weights and runs them


def _builder():
    spec = importlib.util.spec_from_file_location("build_bundle", ROOT / "tools" / "build_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _builder().build(tmp_path_factory.mktemp("dist"))


def test_the_bundle_carries_its_code_and_the_zoos_preferred_files(bundle):
    assert (bundle / "scripts" / "localdiffusion" / "jobs" / "run.py").is_file()
    assert (bundle / "models" / "model.pt").is_file() and not (bundle / "models" / "model.pt").is_symlink()
    assert (bundle / "models" / "model.pt").read_bytes() == (bundle / "models" / "t1_to_flair" / "model.pt").read_bytes()
    assert not (bundle / "configs" / "evaluate.json").exists()  # the research harness is not in the bundle
    for config in (bundle / "configs").glob("*.json"):
        if config.name != "metadata.json" and "import localdiffusion" in config.read_text():
            imports = json.loads(config.read_text())["imports"]
            assert imports.index("$import scripts") < imports.index("$import localdiffusion"), config.name
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import scripts, localdiffusion; "
             "print(localdiffusion.__file__); print(scripts.BUNDLE_ROOT)")
    proc = subprocess.run([sys.executable, "-c", probe, str(bundle)], capture_output=True, text=True, timeout=120,
                          cwd="/")
    package, root = proc.stdout.split()
    assert Path(package).is_relative_to(bundle / "scripts") and Path(root) == bundle


def test_bundle_root_moves_the_models_and_the_outputs(bundle, tmp_path):
    """In a fresh interpreter, as ``monai.bundle run`` does: the bundle folder on the path, the config parsed."""
    probe = """
import json, sys
sys.path.insert(1, sys.argv[1])
from monai.bundle import ConfigParser
out = {}
for root in (None, sys.argv[2]):
    parser = ConfigParser()
    parser.read_config(sys.argv[1] + "/configs/inference.json")
    if root:
        parser["bundle_root"] = root
    out[str(root)] = [str(parser.get_parsed_content(k)) for k in ("bundle_root", "models_root", "output_dir")]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", probe, str(bundle), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [Path(p) for p in found["None"]] == [bundle, bundle / "models", bundle / "eval"]
    assert [Path(p) for p in found[str(tmp_path)]] == [tmp_path, tmp_path / "models", tmp_path / "eval"]


def test_the_bundle_runs_from_another_folder_on_its_own_weights(bundle, cohort, tmp_path):
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = case / f"{case.name}_t1.nii.gz"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--input", str(t1), "--steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {p.name for p in (bundle / "eval").iterdir()}
    assert f"{case.name}_t1_flair_local_diffusion.nii.gz" in written or \
        f"{case.name}_t1_flair.nii.gz" in written, written
    provenance = json.loads(next((bundle / "eval").glob("*_localdiffusion.json")).read_text())
    assert Path(provenance["models"]) == bundle / "models"
