"""Downstream tumour segmentation: a MONAI 2D U-Net on one contrast (FLAIR or T1).

Measures hallucination as lost tumour: Dice of the segmentation of a translated image
against the segmentation of the true image (or the label). Classes: 0 background,
1 necrosis, 2 oedema, 3 enhancing (BraTS 1, 2, 4); "tumour" = any class > 0.
Loss: Dice + class-weighted cross-entropy (MONAI ``DiceCELoss``). Trained on all brain
slices of the tumour *training* cases (tumour and tumour-free slices), random flips.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from tqdm import tqdm

from .io import InputError, atomic_path
from .metrics import dice
from .slice_data import load_slice_set

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


def load_segmenter(folder: str | Path) -> Segmenter:
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.pt"
    if not cfg_path.exists() or not weights.exists():
        raise InputError(f"{folder}: segmentation model not found (need config.json and model.pt)")
    cfg = SegConfig(**json.loads(cfg_path.read_text()))
    seg = Segmenter(cfg)
    try:
        seg.network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise InputError(f"{weights}: weights do not match {cfg_path} ({exc.__class__.__name__})") from exc
    return seg.eval()


def train_segmenter(data: str | Path, out: str | Path, cfg: SegConfig, *, steps: int = 1500, batch_size: int = 16,
                    lr: float = 1e-3, seed: int = 0, progress: bool = True) -> dict:
    """Train on the tumour training split, report Dice on tumour validation slices."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    grid = {"spacing": cfg.spacing_mm, "in_plane": cfg.in_plane}
    train = load_slice_set(data, "train", (cfg.modality,), kind="tumour", **grid)
    val = load_slice_set(data, "val", (cfg.modality,), kind="tumour", **grid)
    net = build_segmenter(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor(CLASS_WEIGHTS))
    images, labels = train.images[cfg.modality], BRATS_TO_CLASS[train.seg]
    tumour_idx = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    t0 = time.time()
    for step in tqdm(range(steps), desc=f"train seg ({cfg.modality})", disable=not progress):
        # half the batch from tumour slices so the rare classes are seen every step
        idx = np.concatenate([rng.choice(tumour_idx, batch_size // 2), rng.integers(len(images), size=batch_size - batch_size // 2)])
        x, y = images[idx][:, None].copy(), labels[idx][:, None].copy()
        flip = rng.random(batch_size) < 0.5
        x[flip], y[flip] = x[flip][..., ::-1, :], y[flip][..., ::-1, :]
        loss = loss_fn(net(torch.as_tensor(x)), torch.as_tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    seg = Segmenter(cfg, net)
    metrics = {"val_tumour_dice": tumour_dice(seg, val.images[cfg.modality], val.seg > 0),
               "steps": steps, "seconds": round(time.time() - t0, 1), "train_slices": int(len(images)),
               "val_slices": int(len(val))}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(asdict(cfg), indent=1))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def tumour_dice(seg: Segmenter, slices: np.ndarray, truth: np.ndarray, batch_size: int = 64) -> float:
    """Whole-tumour Dice pooled over all given slices (N, H, W)."""
    pred = np.concatenate([seg.tumour(torch.as_tensor(slices[i:i + batch_size, None])).numpy()
                           for i in range(0, len(slices), batch_size)])
    return float(dice(torch.as_tensor(pred[None]), torch.as_tensor(truth[None]))[0])


CLASS_TO_BRATS = np.array([0, 1, 2, 4], np.uint8)


@torch.no_grad()
def segment_volume(segmenter: Segmenter, input_path: str | Path, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Segment one NIfTI volume of the segmenter's contrast; returns (labels, affine) on the
    input's grid, labels in the BraTS convention (1 necrosis, 2 oedema, 4 enhancing)."""
    from .translate import prepare_input

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
