"""Crop boxes: where on a slice the network needs to run.

A box is the support's bounding box grown by a margin, each side rounded up to a multiple
(the U-Net's downsampling factor, or a coarser bucket so that crops share shapes and
batch together) and shifted to stay inside the slice. Used for every slice's brain crop
(:mod:`~localdiffusion.volume.batching`) and for the OOD branch's crop (:mod:`~localdiffusion.methods.local_diffusion`).
"""

from __future__ import annotations

import numpy as np
import torch

Box = tuple[slice, slice]  # (rows, cols)


def downsampling_factor(denoiser) -> int:
    """How many times the U-Net of ``denoiser`` halves a slice: crop sides must divide by it."""
    levels = len(getattr(getattr(denoiser, "config", None), "channels", (0,)))
    return 2 ** (levels - 1)


def crop_box(support: np.ndarray | torch.Tensor, margin: int, multiple: int) -> Box:
    """(rows, cols) around ``support`` (H, W) bool: bounding box + ``margin`` pixels per side,
    each length rounded up to ``multiple`` (at most the slice), kept inside the slice.
    An empty support gives the whole slice."""
    support = support.cpu().numpy() if isinstance(support, torch.Tensor) else np.asarray(support)
    if support.ndim != 2:
        raise ValueError(f"support must be (H, W), got shape {support.shape}")
    if not support.any():
        return slice(0, support.shape[0]), slice(0, support.shape[1])
    box = []
    for axis, size in ((1, support.shape[0]), (0, support.shape[1])):
        idx = np.flatnonzero(support.any(axis))
        lo, hi = max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, size)
        length = min(-(-(hi - lo) // multiple) * multiple, size)
        lo = max(min(lo, size - length), 0)
        box.append(slice(lo, lo + length))
    return box[0], box[1]


def box_shape(box: Box) -> tuple[int, int]:
    return box[0].stop - box[0].start, box[1].stop - box[1].start


def paste(values: torch.Tensor, windows: list[Box], plane: tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """Crops (n, C, h, w), one window each, back on whole (n, C, H, W) slices filled with ``fill``."""
    whole = values.new_full((*values.shape[:2], *plane), fill)
    for b, (rows, cols) in enumerate(windows):
        whole[b, :, rows, cols] = values[b]
    return whole
