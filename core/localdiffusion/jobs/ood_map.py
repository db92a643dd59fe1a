"""Map one volume file: the OOD probability map (input geometry) and the binary mask at the
calibrated threshold (``localdiffusion ood map``, the MONAI Label ``ood_map`` model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from localdiffusion.data.formats import split_suffix
from localdiffusion.data.io import save_volumes
from localdiffusion.jobs.inputs import check_outputs, prepare_input
from localdiffusion.network.device import select_device
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.ood.volume import bank_grid, probability_volume
from localdiffusion.shipped import robust_calibration_path


def probability_map(input_path: str | Path, bank_path: str | Path, modality: str | None = None,
                    model_root: str | Path | None = None, device: str = "auto", robust: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """The OOD probability of one volume on its own grid: (probability, affine, calibrated threshold).
    ``robust``: the bank's acquisition-robust calibration (:mod:`~localdiffusion.ood.robust`) instead of its own."""
    calibration = RobustCalibration.load(robust_calibration_path(bank_path)) if robust else None
    model = PatchCore.load(bank_path, modality=modality, model_root=model_root).to(select_device(device))
    contrast = model.meta["modality"]
    prepared = prepare_input(input_path, contrast, *bank_grid(model))
    if calibration is None:
        return prepared.to_input_brain(probability_volume(model, prepared)), prepared.input_affine, float(model.threshold)
    prob = calibration.probability(model, prepared.images[contrast], prepared.brain)
    return prepared.to_input_brain(prob), prepared.input_affine, float(calibration.threshold)


def map_volume(input_path: str | Path, bank_path: str | Path, out_path: str | Path,
               mask_path: str | Path | None = None, modality: str | None = None, device: str = "auto",
               robust: bool = False) -> tuple[Path, Path]:
    """Write the OOD probability map and the binary mask (``<out stem>_mask<out suffix>`` by default).

    ``modality`` (optional) is the input's contrast; it must match the bank's.
    """
    out_path = Path(out_path)
    if mask_path is None:
        stem, suffix = split_suffix(out_path)
        mask_path = out_path.with_name(f"{stem}_mask{suffix or '.nii.gz'}")
    check_outputs([input_path], {"--out": out_path, "--mask-out": mask_path})
    prob, affine, threshold = probability_map(input_path, bank_path, modality, device=device, robust=robust)
    save_volumes({out_path: (prob, affine), mask_path: ((prob >= threshold).astype(np.uint8), affine)},
                 protect=[input_path])
    return out_path, Path(mask_path)
