"""Build the standalone MONAI bundle: ``monai_bundle`` with the product's code under ``scripts/``.

    python tools/build_bundle.py --out dist/bundle      # make bundle

The result, ``<out>/slicer_local_diffusion_mri_translation/``, runs from its own folder after
``pip install`` of the packages its ``configs/metadata.json`` lists (``required_packages_version``
beside MONAI), without this repository or the ``localdiffusion`` wheel:

    cd <out>/slicer_local_diffusion_mri_translation
    python -m monai.bundle run --config_file configs/inference.json --input case_t1.nii.gz

``scripts/__init__.py`` puts the copied package first on the import path. Left out: the
benchmark config (``configs/evaluate.json`` runs the research harness of the repository) and
run-time folders (``eval``, ``logs``, caches).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE, PACKAGE = ROOT / "monai_bundle", ROOT / "core" / "localdiffusion"
NAME = "slicer_local_diffusion_mri_translation"
#: bundle files that need the repository and stay out of the standalone bundle
REPOSITORY_ONLY = ("evaluate.json",)
RUNTIME = shutil.ignore_patterns("eval", "logs", "__pycache__", "*.pyc", "bundle", *REPOSITORY_ONLY)


def build(out: str | Path) -> Path:
    """Write the standalone bundle to ``<out>/<NAME>`` (replacing an earlier build); returns its folder."""
    target = Path(out) / NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(BUNDLE, target, ignore=RUNTIME)  # links (models/model.pt) become files
    shutil.copytree(PACKAGE, target / "scripts" / "localdiffusion", ignore=RUNTIME)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "bundle")
    args = parser.parse_args(argv)
    target = build(args.out)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"wrote {target} ({size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
