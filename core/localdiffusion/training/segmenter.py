"""Training the tumour-segmentation U-Net (``localdiffusion train-seg``).

Loss: Dice + class-weighted cross-entropy (MONAI ``DiceCELoss``). Trained on all brain
slices of the tumour *training* cases of one or more cohorts (tumour and tumour-free slices), random
left-right flips and, optionally, an intensity augmentation that changes a slice's contrast so the network
cannot rely on one scanner's grey levels (the random gamma and noise of nnU-Net's and SynthSeg's
augmentation, Isensee et al. 2021, Billot et al. 2023): ``x ** exp(N(0, s))`` on the [0, 1] slice, plus
Gaussian noise of a standard deviation drawn in [0, 0.03].
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.metrics import dice
from localdiffusion.network.segmenter import BRATS_TO_CLASS, CLASS_WEIGHTS, SegConfig, Segmenter, build_segmenter
from localdiffusion.volume.cohort import load_slice_set


def train_segmenter(data: str | Path | Sequence[str | Path], out: str | Path, cfg: SegConfig, *, steps: int = 1500,
                    batch_size: int = 16, lr: float = 1e-3, seed: int = 0, gamma_sd: float = 0.0,
                    val_data: str | Path | None = None, progress: bool = True) -> dict:
    """Train on the tumour training split of every cohort in ``data``, report Dice on the first cohort's tumour
    validation slices.

    Args:
        data: a phantom cohort folder (with ``manifest.json``), or several; every one's *train* tumour cases are
            pooled, the first one's *val* tumour cases are the validation set.
        out: the model folder written (``model.pt``, ``config.json``, ``metrics.json``), atomically.
        cfg: the network and its grid.
        gamma_sd: standard deviation of the log-gamma of the intensity augmentation; 0 turns it off.
        val_data: the cohort whose *val* tumour cases validate (default: the first of ``data``).

    Returns:
        The metrics written to ``metrics.json``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    grid = {"spacing": cfg.spacing_mm, "in_plane": cfg.in_plane}
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    parts = [load_slice_set(root, "train", (cfg.modality,), kind="tumour", **grid) for root in roots]
    val = load_slice_set(val_data or roots[0], "val", (cfg.modality,), kind="tumour", **grid)
    net = build_segmenter(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor(CLASS_WEIGHTS))
    images = np.concatenate([part.images[cfg.modality] for part in parts])
    labels = BRATS_TO_CLASS[np.concatenate([part.seg for part in parts])]
    tumour_idx = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    t0 = time.time()
    for step in tqdm(range(steps), desc=f"train seg ({cfg.modality})", disable=not progress):
        # half the batch from tumour slices so the rare classes are seen every step
        idx = np.concatenate([rng.choice(tumour_idx, batch_size // 2), rng.integers(len(images), size=batch_size - batch_size // 2)])
        x, y = images[idx][:, None].copy(), labels[idx][:, None].copy()
        flip = rng.random(batch_size) < 0.5
        x[flip], y[flip] = x[flip][..., ::-1, :], y[flip][..., ::-1, :]
        if gamma_sd > 0:
            x = augment_contrast(x, rng, gamma_sd)
        loss = loss_fn(net(torch.as_tensor(x)), torch.as_tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    seg = Segmenter(cfg, net)
    metrics = {"val_tumour_dice": tumour_dice(seg, val.images[cfg.modality], val.seg > 0),
               "steps": steps, "gamma_sd": gamma_sd, "cohorts": len(roots), "seconds": round(time.time() - t0, 1),
               "train_slices": int(len(images)),
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


def augment_contrast(x: np.ndarray, rng: np.random.Generator, gamma_sd: float, max_noise: float = 0.03) -> np.ndarray:
    """Random gamma and Gaussian noise per slice of a batch (B, 1, H, W) in [0, 1]; background stays 0.

    Args:
        x: the batch, intensities in [0, 1].
        rng: the random generator (seeded by the caller).
        gamma_sd: standard deviation of log(gamma).
        max_noise: the noise's standard deviation is drawn uniformly in [0, max_noise].

    Returns:
        The augmented batch, float32, clipped to [0, 1].
    """
    gamma = np.exp(rng.normal(0.0, gamma_sd, (len(x), 1, 1, 1)))
    noise = rng.uniform(0.0, max_noise, (len(x), 1, 1, 1)) * rng.standard_normal(x.shape)
    out = np.clip(x, 0.0, 1.0) ** gamma + noise
    return np.where(x > 0, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


def tumour_dice(seg: Segmenter, slices: np.ndarray, truth: np.ndarray, batch_size: int = 64) -> float:
    """Whole-tumour Dice pooled over all given slices (N, H, W)."""
    pred = np.concatenate([seg.tumour(torch.as_tensor(slices[i:i + batch_size, None])).numpy()
                           for i in range(0, len(slices), batch_size)])
    return float(dice(torch.as_tensor(pred[None]), torch.as_tensor(truth[None]))[0])
