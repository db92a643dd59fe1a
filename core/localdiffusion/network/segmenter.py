"""Downstream tumour segmentation: a MONAI 2D U-Net on one contrast (FLAIR or T1).

Measures hallucination as lost tumour: Dice of the segmentation of a translated image
against the segmentation of the true image (or the label). Classes: 0 background,
1 necrosis, 2 oedema, 3 enhancing (BraTS 1, 2, 4); "tumour" = any class > 0.
Training: :mod:`localdiffusion.training.segmenter`; segmenting a file:
:mod:`localdiffusion.jobs.segment`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet

from localdiffusion.errors import InputError

BRATS_TO_CLASS = np.zeros(256, np.int64)
BRATS_TO_CLASS[[1, 2, 4]] = [1, 2, 3]
CLASS_WEIGHTS = (0.1, 1.0, 1.0, 1.0)


@dataclass
class SegConfig:
    modality: str = "flair"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    in_plane: tuple[int, int] = (96, 112)
    spacing_mm: float = 2.0

    def __post_init__(self):
        self.channels, self.strides, self.in_plane = tuple(self.channels), tuple(self.strides), tuple(self.in_plane)

    def at_spacing(self, spacing_mm: float) -> "SegConfig":
        """This network on a grid of ``spacing_mm``, its in-plane size covering the same field of view (rounded up
        to what the strides divide)."""
        step = int(np.prod(self.strides))
        fov = [n * self.spacing_mm for n in self.in_plane]
        in_plane = tuple(int(step * np.ceil(mm / spacing_mm / step)) for mm in fov)
        return dataclasses.replace(self, spacing_mm=float(spacing_mm), in_plane=in_plane)


def build_segmenter(cfg: SegConfig) -> UNet:
    return UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=cfg.channels, strides=cfg.strides,
                num_res_units=cfg.num_res_units)


class Segmenter(torch.nn.Module):
    """``segmenter(slices (B, 1, H, W) in [0, 1]) -> class map (B, H, W)``."""

    def __init__(self, cfg: SegConfig, network: torch.nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self.network = network or build_segmenter(cfg)

    @torch.no_grad()
    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.network(slices.float()).argmax(1)

    def tumour(self, slices: torch.Tensor) -> torch.Tensor:
        return self(slices) > 0

    @torch.no_grad()
    def tumour_probability(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) probability that a pixel is tumour of any class: 1 - softmax P(background)."""
        return 1.0 - torch.softmax(self.network(slices.float()), 1)[:, 0]


@torch.no_grad()
def on_slices(segmenter: Segmenter, image: np.ndarray, ks: np.ndarray, per_batch, dtype, batch_size: int = 32
              ) -> np.ndarray:
    """``per_batch`` over the axial slices ``ks`` of ``image``, a batch at a time on the segmenter's device.

    Args:
        segmenter: the tumour U-Net whose device the slices go to.
        image: (X, Y, Z) on the segmenter's working grid.
        ks: the slice indices to compute.
        per_batch: (B, 1, H, W) tensor -> (B, H, W) numpy array.
        dtype: the output's dtype.
        batch_size: slices per call.
    Returns:
        (X, Y, Z) array of ``dtype``; 0 on every other slice.
    """
    device = next(segmenter.network.parameters()).device
    out = np.zeros(image.shape, dtype)
    for start in range(0, len(ks), batch_size):
        part = ks[start:start + batch_size]
        slices = torch.as_tensor(np.ascontiguousarray(np.moveaxis(image[:, :, part], 2, 0)[:, None])).to(device)
        out[:, :, part] = np.moveaxis(per_batch(slices), 0, 2)
    return out


def tumour_probability_volume(segmenter: Segmenter, image: np.ndarray, brain: np.ndarray, batch_size: int = 32
                              ) -> np.ndarray:
    """A working-grid volume's tumour probability, slice by slice (:meth:`Segmenter.tumour_probability`).

    Args:
        segmenter: the tumour U-Net of the volume's contrast.
        image: (X, Y, Z) the contrast on the segmenter's working grid, in [0, 1].
        brain: (X, Y, Z) bool.
        batch_size: slices per network call.
    Returns:
        (X, Y, Z) float32 in [0, 1]; 0 outside the brain and on slices without brain.
    """
    out = on_slices(segmenter, image, np.flatnonzero(brain.any((0, 1))),
                    lambda slices: segmenter.tumour_probability(slices).float().cpu().numpy(), np.float32, batch_size)
    return np.where(brain, out, 0.0).astype(np.float32)


def load_segmenter(folder: str | Path) -> Segmenter:
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.pt"
    if not cfg_path.exists() or not weights.exists():
        raise InputError(f"{folder}: segmentation model not found (need config.json and model.pt)")
    cfg = SegConfig(**json.loads(cfg_path.read_text(encoding="utf-8")))
    seg = Segmenter(cfg)
    try:
        seg.network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise InputError(f"{weights}: weights do not match {cfg_path} ({exc.__class__.__name__})") from exc
    return seg.eval()


CLASS_TO_BRATS = np.array([0, 1, 2, 4], np.uint8)
