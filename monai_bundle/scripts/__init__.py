"""The bundle's custom code: the ``localdiffusion`` package, and where the bundle lies.

A standalone bundle (``make bundle``: this folder with the package copied to ``scripts/localdiffusion``)
runs after ``pip install`` of its ``required_packages_version``: importing this module puts ``scripts/``
first on the import path, so the configs' ``$import localdiffusion`` finds the copy. In a clone, or where
the product is installed, there is no copy and the installed package is used.

The configs read :data:`BUNDLE_ROOT` (the folder holding ``configs/``, ``models/`` and this folder) for
``bundle_root``, and :func:`output_dir` for the default ``output_dir``.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if (_HERE / "localdiffusion").is_dir() and str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

#: the bundle folder, as a string (MONAI configs join paths with ``+``)
BUNDLE_ROOT = str(_HERE.parent)


def output_dir(bundle_root: str) -> str:
    """``<bundle_root>/eval``, the model zoo's default, unless the bundle lies inside an installed package
    (site-packages) or a folder the user cannot write: then ``eval`` in the working folder."""
    root = Path(bundle_root).resolve()
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    inside_package = any(root.is_relative_to(folder) for folder in installed)
    if inside_package or not os.access(root, os.W_OK):
        return str(Path.cwd() / "eval")
    return str(root / "eval")
