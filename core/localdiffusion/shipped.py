"""Where the shipped weights live: ``monai_bundle/models`` of this repository.

Kept free of heavy imports: the CLI and the bundle configs resolve it at start-up.
"""

from __future__ import annotations

from pathlib import Path

MODELS_ROOT = Path(__file__).resolve().parents[2] / "monai_bundle" / "models"


def shipped_model_dir(source: str = "t1", target: str = "flair") -> Path:
    """``monai_bundle/models/<source>_to_<target>``."""
    return MODELS_ROOT / f"{source}_to_{target}"


def ood_bank_path(models_root: str | Path, modality: str) -> Path:
    """The PatchCore bank of ``modality`` in a models folder: ``<models_root>/ood_<modality>.pt``
    (a diffusion model folder's default bank is ``ood_bank_path(model_dir.parent, source)``)."""
    return Path(models_root) / f"ood_{modality}.pt"
