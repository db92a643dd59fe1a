"""Map one volume file: the OOD probability map (input geometry) and the binary mask at the
calibrated threshold (``localdiffusion ood map``, the MONAI Label ``ood_map`` model)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from localdiffusion.data.formats import split_suffix
from localdiffusion.data.io import save_volumes
from localdiffusion.jobs.inputs import check_outputs, gate_input, prepare_input
from localdiffusion.network.device import select_device
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.ood.volume import OodMap, bank_grid, bank_map
from localdiffusion.shipped import robust_calibration_path

log = logging.getLogger("localdiffusion")


def probability_map(input_path: str | Path, bank_path: str | Path, modality: str | None = None,
                    model_root: str | Path | None = None, device: str = "auto", robust: bool = False,
                    gate_root: str | Path | None = None, force: bool = False, warnings: list[str] | None = None
                    ) -> tuple[OodMap, np.ndarray]:
    """The OOD map of one volume on its own grid.

    Args:
        input_path: a volume file or DICOM series folder of the bank's contrast.
        bank_path: a PatchCore bank (``ood_<contrast>.pt``).
        modality: the input's contrast, checked against the bank's (default: the bank's).
        model_root, device: where the bank's backbone weights are; where the network runs.
        robust: the bank's acquisition-robust calibration (:mod:`~localdiffusion.ood.robust`) instead
            of its own.
        gate_root: a models folder whose input gate checks the contrast and distribution first
            (:func:`~localdiffusion.jobs.inputs.gate_input`; a refusal is an :class:`InputError` unless
            ``force``); its warnings are appended to ``warnings``.
    Returns:
        (the map on the input's grid with its calibrated threshold, the input's (4, 4) affine).
    """
    calibration = RobustCalibration.load(robust_calibration_path(bank_path)) if robust else None
    model = PatchCore.load(bank_path, modality=modality, model_root=model_root).to(select_device(device))
    contrast = model.meta["modality"]
    prepared = prepare_input(input_path, contrast, *bank_grid(model))
    if gate_root is not None:  # the wrong contrast is refused before the volume is mapped
        found = gate_input(input_path, prepared, contrast, gate_root, bank=model, force=force)
        if warnings is not None:
            warnings.extend(found)
    if calibration is None:
        ood = bank_map(model, prepared)
    else:
        robust_map = calibration.ood_map(model, prepared.images[contrast], prepared.brain, prepared.grid.affine)
        ood = robust_map.map
        if robust_map.unlocated:
            log.warning("warning: %s: the OOD map does not know where each voxel lies: %s; it is the patch map "
                        "alone, blind to lesions that look like normal tissue elsewhere", input_path,
                        robust_map.unlocated)
    return OodMap(prepared.to_input_brain(ood.probability), float(ood.threshold)), prepared.input_affine


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
    ood, affine = probability_map(input_path, bank_path, modality, device=device, robust=robust)
    save_volumes({out_path: (ood.probability, affine), mask_path: (ood.flagged().astype(np.uint8), affine)},
                 protect=[input_path])
    return out_path, Path(mask_path)
