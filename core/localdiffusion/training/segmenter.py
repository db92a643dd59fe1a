"""Training the tumour-segmentation U-Net (``localdiffusion train-seg``).

Loss: Dice + class-weighted cross-entropy (MONAI ``DiceCELoss``). Trained on all brain
slices of the tumour *training* cases (tumour and tumour-free slices), random flips.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.metrics import dice
from localdiffusion.network.segmenter import BRATS_TO_CLASS, CLASS_WEIGHTS, SegConfig, Segmenter, build_segmenter
from localdiffusion.volume.cohort import load_slice_set


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
        tmp.write_text(json.dumps(asdict(cfg), indent=1), encoding="utf-8")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


def tumour_dice(seg: Segmenter, slices: np.ndarray, truth: np.ndarray, batch_size: int = 64) -> float:
    """Whole-tumour Dice pooled over all given slices (N, H, W)."""
    pred = np.concatenate([seg.tumour(torch.as_tensor(slices[i:i + batch_size, None])).numpy()
                           for i in range(0, len(slices), batch_size)])
    return float(dice(torch.as_tensor(pred[None]), torch.as_tensor(truth[None]))[0])
