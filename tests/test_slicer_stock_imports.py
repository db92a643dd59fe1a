"""The Slicer module's library imports in a Python that has only what a stock 3D Slicer bundles (numpy, scipy,
SimpleITK, pydicom, requests, vtk/MRML): the packages Slicer lacks are made unimportable in a fresh
interpreter, and every Lib module is imported."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel (test extra) provides MRML")

#: what a stock Slicer does not bundle (the module installs them on first use, for local runs only)
NOT_IN_SLICER = ("nibabel", "torch", "monai", "timm", "faiss", "localdiffusion", "monailabel", "matplotlib",
                 "sklearn", "nilearn")

SCRIPT = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {NOT_IN_SLICER!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not bundled with 3D Slicer")
        return None

sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion")!r})
import SlicerLocalDiffusionLib
names = [m.name for m in pkgutil.iter_modules(SlicerLocalDiffusionLib.__path__)]
for name in names:
    importlib.import_module("SlicerLocalDiffusionLib." + name)
print("imported", sorted(names))
"""


def test_every_lib_module_imports_with_only_slicers_bundled_packages():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("dependencies", "jobs", "label_client", "nodes", "views"):
        assert name in done.stdout
