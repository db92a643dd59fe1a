"""Segment one volume file with the tumour U-Net (the MONAI Label ``tumour_segmentation`` model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from localdiffusion.jobs.inputs import gate_input, prepare_input
from localdiffusion.network.segmenter import CLASS_TO_BRATS, Segmenter, on_slices


@torch.no_grad()
def segment_volume(segmenter: Segmenter, input_path: str | Path, batch_size: int = 32,
                   gate_root: str | Path | None = None, force: bool = False,
                   warnings: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment one volume of the segmenter's contrast.

    Args:
        segmenter: the tumour U-Net of the input's contrast.
        input_path: a volume file or DICOM series folder.
        gate_root: a models folder whose input gate checks the contrast first
            (:func:`~localdiffusion.jobs.inputs.gate_input`; a refusal is an :class:`InputError` unless
            ``force``); its warnings are appended to ``warnings``.
    Returns:
        (labels, affine) on the input's grid, labels in the BraTS convention (1 necrosis, 2 oedema,
        4 enhancing).
    """
    cfg = segmenter.config
    prepared = prepare_input(input_path, cfg.modality, cfg.spacing_mm, cfg.in_plane)
    if gate_root is not None:
        found = gate_input(input_path, prepared, cfg.modality, gate_root, force=force)
        if warnings is not None:
            warnings.extend(found)
    labels = on_slices(segmenter, prepared.images[cfg.modality], prepared.brain_slices(),
                       lambda slices: CLASS_TO_BRATS[segmenter(slices).cpu().numpy()], np.uint8, batch_size)
    labels[~prepared.brain] = 0
    on_input = prepared.to_input_grid(labels.astype(np.float32), order=0).astype(np.uint8)
    return np.where(prepared.input_brain, on_input, 0).astype(np.uint8), prepared.input_affine
