"""Version-checked Python dependencies of the module (no Qt, no Slicer imports).

The module needs ``localdiffusion`` at exactly the version it was released with (the
package carries the weights, so an older package means older models) and PyTorch at
least as new as the package requires. ``localdiffusion`` is not on the Python Package
Index; :func:`package_source` names what ``pip install`` gets instead:

1. the clone this module runs from (its root holds ``pyproject.toml``): a normal,
   non-editable install that copies the shipped weights into the package;
2. a wheel ``localdiffusion-<VERSION>-py3-none-any.whl`` in ``Resources/wheels`` (an
   extension package built with ``make wheel`` and copied there);
3. otherwise :class:`DependencyError` says how to get one.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

#: the ``localdiffusion`` release this module is written for (tests check it against pyproject.toml)
LOCALDIFFUSION_VERSION = "0.27.0"
#: the oldest PyTorch the package supports (tests check it against pyproject.toml)
MINIMUM_TORCH_VERSION = "2.4"

MODULE_DIR = Path(__file__).resolve().parents[1]


class DependencyError(RuntimeError):
    """A dependency is missing, too old, or cannot be installed from here."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.4.1+cu121"`` -> ``(2, 4, 1)``: numeric release parts only."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def package_source(module_dir: Path = MODULE_DIR) -> str:
    """What to hand to ``pip install`` for ``localdiffusion`` (see the module docstring)."""
    clone = module_dir.parent
    if (clone / "pyproject.toml").is_file() and (clone / "monai_bundle" / "models").is_dir():
        return str(clone)
    wheels = sorted((module_dir / "Resources" / "wheels").glob(f"localdiffusion-{LOCALDIFFUSION_VERSION}-*.whl"))
    if wheels:
        return str(wheels[-1])
    raise DependencyError(
        f"the localdiffusion {LOCALDIFFUSION_VERSION} package is not installed and is not on the Python Package "
        f"Index: clone the SlicerLocalDiffusion repository and add its SlicerLocalDiffusion folder as a module path, "
        f"or put localdiffusion-{LOCALDIFFUSION_VERSION}-py3-none-any.whl (make wheel) in "
        f"{module_dir / 'Resources' / 'wheels'}")


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def problems() -> list[str]:
    """What is missing or has the wrong version; empty when the module can run locally."""
    found = []
    torch = installed_version("torch")
    if torch is None:
        found.append(f"PyTorch >= {MINIMUM_TORCH_VERSION} is not installed")
    elif version_tuple(torch) < version_tuple(MINIMUM_TORCH_VERSION):
        found.append(f"PyTorch {torch} is older than the required {MINIMUM_TORCH_VERSION}")
    package = installed_version("localdiffusion")
    if package is None:
        found.append(f"localdiffusion {LOCALDIFFUSION_VERSION} is not installed")
    elif package != LOCALDIFFUSION_VERSION:
        found.append(f"localdiffusion {package} is installed, this module needs {LOCALDIFFUSION_VERSION}")
    return found


def ensure(confirm, install_torch, pip_install) -> bool:
    """Install what :func:`problems` reports, after ``confirm(message)``; False if declined.

    ``install_torch(requirement)`` installs PyTorch (in Slicer: the PyTorch extension, which
    picks the CUDA build); ``pip_install(spec)`` installs a package. Raises
    :class:`DependencyError` when something cannot be installed from here or is still wrong
    afterwards.
    """
    found = problems()
    if not found:
        return True
    if not confirm("Local Diffusion needs: " + "; ".join(found) + ". Install now? (it may take several minutes)"):
        return False
    if any(p.startswith("PyTorch") for p in found):
        install_torch(f">={MINIMUM_TORCH_VERSION}")
    if any(p.startswith("localdiffusion") for p in found):
        pip_install(f"--upgrade {package_source()}")
    still = problems()
    if still:
        raise DependencyError("after installing: " + "; ".join(still) + " (restart Slicer if a package was upgraded)")
    return True
