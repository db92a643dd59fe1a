"""Build hook: a non-editable install carries the shipped bundle.

``pip install .`` (and every wheel) copies ``monai_bundle/{models,configs,monailabel_app,scripts}``
into ``localdiffusion/bundle/``; ``localdiffusion.shipped`` finds it there when the package
does not run from a clone. Editable installs use the clone's ``monai_bundle`` directly.
Everything else is declared in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLE_PARTS = ("models", "configs", "monailabel_app", "scripts")


class BuildWithBundle(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = Path(__file__).resolve().parent / "monai_bundle"
        target = Path(self.build_lib) / "localdiffusion" / "bundle"
        for part in BUNDLE_PARTS:
            shutil.rmtree(target / part, ignore_errors=True)
            shutil.copytree(source / part, target / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "eval", "logs"))


setup(cmdclass={"build_py": BuildWithBundle})
