"""The Slicer module's dependency handler: pinned package version, torch minimum, install source."""

import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SlicerLocalDiffusion"))

from SlicerLocalDiffusionLib import dependencies  # noqa: E402
from SlicerLocalDiffusionLib.dependencies import DependencyError, ensure, package_source, version_tuple  # noqa: E402


def test_pinned_versions_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert dependencies.LOCALDIFFUSION_VERSION == project["version"]
    torch_req = next(d for d in project["dependencies"] if d.startswith("torch>="))
    assert torch_req == f"torch>={dependencies.MINIMUM_TORCH_VERSION}"


def test_version_tuple_ignores_local_build_tags():
    assert version_tuple("2.4.1+cu121") == (2, 4, 1) and version_tuple("2.10.0") > version_tuple("2.4")


def test_install_source_is_the_clone_then_a_bundled_wheel(tmp_path):
    assert package_source() == str(ROOT)  # this module runs from a clone
    module = tmp_path / "SlicerLocalDiffusion"  # an extension package: no clone around it
    with pytest.raises(DependencyError, match="not on the Python Package Index"):
        package_source(module)
    wheel = module / "Resources" / "wheels" / f"localdiffusion-{dependencies.LOCALDIFFUSION_VERSION}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"")
    (wheel.parent / "localdiffusion-0.0.1-py3-none-any.whl").write_bytes(b"")  # another version is not taken
    assert package_source(module) == str(wheel)


def test_this_environment_has_what_the_module_needs():
    assert dependencies.problems() == []


def test_ensure_installs_what_is_missing_and_reports_what_is_still_wrong(monkeypatch):
    calls = []
    state = {"torch": None, "localdiffusion": "0.4.0"}
    monkeypatch.setattr(dependencies, "installed_version", lambda name: state[name])

    def install_torch(requirement):
        calls.append(("torch", requirement))
        state["torch"] = "2.5.0+cpu"

    def pip_install(spec):
        calls.append(("pip", spec))
        state["localdiffusion"] = dependencies.LOCALDIFFUSION_VERSION

    assert ensure(lambda message: False, install_torch, pip_install) is False and calls == []  # declined
    assert ensure(lambda message: True, install_torch, pip_install) is True
    assert calls == [("torch", f">={dependencies.MINIMUM_TORCH_VERSION}"), ("pip", f"--upgrade {ROOT}")]
    state["torch"] = "2.1.0"  # an install that did not bring a new enough torch
    with pytest.raises(DependencyError, match="older than the required"):
        ensure(lambda message: True, lambda requirement: None, pip_install)
