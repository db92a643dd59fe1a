"""Where the shipped bundle (weights, configs, MONAI Label app) lives.

Three places, first match wins:

1. ``$LOCALDIFFUSION_MODELS`` (or a command's ``--models``): a models folder elsewhere;
2. ``monai_bundle/`` of the clone this package runs from (an editable install, ``make``);
3. ``localdiffusion/bundle/`` inside an installed package: ``pip install .`` (non-editable,
   the Slicer module's first run, a wheel) copies ``monai_bundle/{models,configs,
   monailabel_app,scripts}`` there (see ``setup.py``), so the weights are found after any install.

Kept free of heavy imports: the CLI and the bundle configs resolve it at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable naming a models folder that replaces the shipped one
MODELS_ENV = "LOCALDIFFUSION_MODELS"

_PACKAGE = Path(__file__).resolve().parent
_CLONE_BUNDLE = _PACKAGE.parents[1] / "monai_bundle"
#: the bundle folder: the clone's ``monai_bundle`` or the installed copy
BUNDLE_ROOT = _CLONE_BUNDLE if (_CLONE_BUNDLE / "models").is_dir() else _PACKAGE / "bundle"


def _models_root() -> Path:
    override = os.environ.get(MODELS_ENV, "").strip()
    return Path(override).expanduser() if override else BUNDLE_ROOT / "models"


#: the models folder every command uses unless given ``--models``/``--model``
MODELS_ROOT = _models_root()
#: the MONAI Label app folder (``monailabel start_server --app``)
LABEL_APP = BUNDLE_ROOT / "monailabel_app"


def direction_name(source: str, target: str) -> str:
    """A translation direction's name, ``<source>_to_<target>``: its model folder and its key in the
    per-direction tables (options.DIRECTIONS, detectors.risk.RISK_DEFAULTS)."""
    return f"{source}_to_{target}"


def shipped_model_dir(source: str = "t1", target: str = "flair") -> Path:
    """``<models root>/<source>_to_<target>``."""
    return MODELS_ROOT / direction_name(source, target)


def robust_calibration_path(bank_path: str | Path) -> Path:
    """Where a bank's acquisition-robust calibration lives: beside it, ``<bank stem>_robust.json``."""
    bank_path = Path(bank_path)
    return bank_path.with_name(f"{bank_path.stem}_robust.json")


def ood_bank_path(models_root: str | Path, modality: str) -> Path:
    """The PatchCore bank of ``modality`` in a models folder: ``<models_root>/ood_<modality>.pt``
    (a diffusion model folder's default bank is ``ood_bank_path(model_dir.parent, source)``)."""
    return Path(models_root) / f"ood_{modality}.pt"


def segmenter_dir(models_root: str | Path, modality: str) -> Path:
    """The tumour-segmentation U-Net of ``modality`` in a models folder: ``<models_root>/seg_<modality>`` (the
    ``segment`` job's, and the benchmarks' fixed yardstick of tumour Dice on translations)."""
    return Path(models_root) / f"seg_{modality}"


#: the risk map's lesion U-Nets: detector name -> folder prefix in a models folder (``<prefix>_<modality>``)
LESION_MODELS = {"tumour": "lesion", "wm_lesion": "wm_lesion"}


def lesion_model_dir(models_root: str | Path, modality: str, detector: str = "tumour") -> Path:
    """A risk-map lesion U-Net of ``modality`` in a models folder, by the detector that reads it
    (:data:`LESION_MODELS`): ``<models_root>/lesion_<modality>`` for ``tumour`` (trained on every lesion kind and
    acquisition, more than ``seg_<modality>``; same format), ``<models_root>/wm_lesion_<modality>`` for
    ``wm_lesion`` (small white-matter lesions alone)."""
    return Path(models_root) / f"{LESION_MODELS[detector]}_{modality}"
