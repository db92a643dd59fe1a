"""Segment one volume file with the tumour U-Net (the MONAI Label ``tumour_segmentation`` model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from localdiffusion.jobs.inputs import prepare_input
from localdiffusion.network.segmenter import CLASS_TO_BRATS, Segmenter


@torch.no_grad()
def segment_volume(segmenter: Segmenter, input_path: str | Path, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Segment one NIfTI volume of the segmenter's contrast; returns (labels, affine) on the
    input's grid, labels in the BraTS convention (1 necrosis, 2 oedema, 4 enhancing)."""
    cfg = segmenter.config
    prepared = prepare_input(input_path, cfg.modality, cfg.spacing_mm, cfg.in_plane)
    ks = prepared.brain_slices()
    image = prepared.images[cfg.modality]
    labels = np.zeros(prepared.grid.shape, np.uint8)
    for start in range(0, len(ks), batch_size):
        part = ks[start:start + batch_size]
        slices = torch.as_tensor(np.moveaxis(image[:, :, part], 2, 0)[:, None])
        labels[:, :, part] = np.moveaxis(CLASS_TO_BRATS[segmenter(slices).numpy()], 0, 2)
    labels[~prepared.brain] = 0
    on_input = prepared.to_input_grid(labels.astype(np.float32), order=0).astype(np.uint8)
    return np.where(prepared.input_brain, on_input, 0).astype(np.uint8), prepared.input_affine
