"""Training the tumour-segmentation U-Net (``localdiffusion train-seg``).

Loss: Dice + class-weighted cross-entropy (MONAI ``DiceCELoss``). Trained on all brain
slices of the tumour *training* cases of one or more cohorts (tumour and tumour-free slices), random
left-right flips and, optionally, an intensity augmentation that changes a slice's contrast so the network
cannot rely on one scanner's grey levels (the random gamma and noise of nnU-Net's and SynthSeg's
augmentation, Isensee et al. 2021, Billot et al. 2023): ``x ** exp(N(0, s))`` on the [0, 1] slice, plus
Gaussian noise of a standard deviation drawn in [0, 0.03].

The slices are held per cohort as float16 images and uint8 classes, never concatenated, so a 1 mm grid over
several hundred subjects fits in memory (about 2.6 bytes a voxel). A checkpoint (``checkpoint.pt``) is written every
``checkpoint_every`` steps and at the end; ``resume`` continues from it (to a longer schedule, too).
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
from localdiffusion.errors import InputError
from localdiffusion.metrics import dice
from localdiffusion.network.segmenter import BRATS_TO_CLASS, CLASS_WEIGHTS, SegConfig, Segmenter, build_segmenter
from localdiffusion.volume.cohort import load_slice_set

CHECKPOINT_FILE = "checkpoint.pt"


def train_segmenter(data: str | Path | Sequence[str | Path], out: str | Path, cfg: SegConfig, *, steps: int = 1500,
                    batch_size: int = 16, lr: float = 1e-3, seed: int = 0, gamma_sd: float = 0.0,
                    val_data: str | Path | None = None, progress: bool = True, resume: bool = False,
                    checkpoint_every: int = 500) -> dict:
    """Train on the tumour training split of every cohort in ``data``, report Dice on the tumour validation
    slices of ``val_data`` (default: the first cohort).

    Args:
        data: a phantom cohort folder (with ``manifest.json``), or several; every one's *train* tumour cases are
            pooled, the first one's *val* tumour cases are the validation set.
        out: the model folder written (``model.pt``, ``config.json``, ``metrics.json``), atomically.
        cfg: the network and its grid.
        gamma_sd: standard deviation of the log-gamma of the intensity augmentation; 0 turns it off.
        val_data: the cohort whose *val* tumour cases validate (default: the first of ``data``).
        resume: continue from ``out/checkpoint.pt`` when it is there (its configuration must match ``cfg``).
        checkpoint_every: steps between checkpoints.

    Returns:
        The metrics written to ``metrics.json``.
    """
    grid = {"spacing": cfg.spacing_mm, "in_plane": cfg.in_plane}
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    val = load_slice_set(val_data or roots[0], "val", (cfg.modality,), kind="tumour", **grid)  # first: fail early
    store = SliceStore()
    for root in roots:
        store.add(load_slice_set(root, "train", (cfg.modality,), kind="tumour", **grid), cfg.modality)
    out = Path(out)
    ckpt_path = out / CHECKPOINT_FILE
    net = build_segmenter(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start = 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["config"] != asdict(cfg):
            raise InputError(f"{ckpt_path}: checkpoint configuration does not match the requested U-Net")
        net.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    # a resumed run draws from a generator seeded by its step, as the diffusion trainer does
    torch.manual_seed(seed + 7919 * start)
    rng = np.random.default_rng(seed + 7919 * start)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor(CLASS_WEIGHTS))
    tumour_idx = store.tumour_index()
    t0 = time.time()
    for step in tqdm(range(start, steps), desc=f"train seg ({cfg.modality})", disable=not progress,
                     initial=start, total=steps):
        # half the batch from tumour slices so the rare classes are seen every step
        idx = np.concatenate([rng.choice(tumour_idx, batch_size // 2),
                              rng.integers(len(store), size=batch_size - batch_size // 2)])
        x, y = store.take(idx)
        flip = rng.random(batch_size) < 0.5
        x[flip], y[flip] = x[flip][..., ::-1, :], y[flip][..., ::-1, :]
        if gamma_sd > 0:
            x = augment_contrast(x, rng, gamma_sd)
        loss = loss_fn(net(torch.as_tensor(x)), torch.as_tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            out.mkdir(parents=True, exist_ok=True)
            with atomic_path(ckpt_path) as tmp:
                torch.save({"network": net.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                            "config": asdict(cfg)}, tmp)
    net.eval()
    seg = Segmenter(cfg, net)
    metrics = {"val_tumour_dice": tumour_dice(seg, val.images[cfg.modality], val.seg > 0),
               "steps": steps, "resumed_from": start, "gamma_sd": gamma_sd, "cohorts": len(roots),
               "seconds": round(time.time() - t0, 1), "train_slices": int(len(store)), "val_slices": int(len(val))}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(asdict(cfg), indent=1), encoding="utf-8")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


class SliceStore:
    """Training slices of several cohorts, kept per cohort (float16 images, uint8 classes) and drawn by a global
    index, so no concatenated copy is ever made."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.offsets = np.zeros(1, np.int64)

    def add(self, slices, modality: str) -> None:
        """Keep one cohort's slices (a ``SliceSet``): its ``modality`` images and its labels as classes."""
        self.images.append(slices.images[modality].astype(np.float16))
        self.classes.append(BRATS_TO_CLASS[slices.seg].astype(np.uint8))
        self.offsets = np.append(self.offsets, self.offsets[-1] + len(slices))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def tumour_index(self) -> np.ndarray:
        """Global indices of the slices that hold any tumour class."""
        return np.concatenate([off + np.flatnonzero(c.reshape(len(c), -1).any(1))
                               for off, c in zip(self.offsets, self.classes)])

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch (B, 1, H, W) of float32 images and int64 classes at global indices ``idx``."""
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        local = idx - self.offsets[part]
        x = np.stack([self.images[p][i] for p, i in zip(part, local)]).astype(np.float32)
        y = np.stack([self.classes[p][i] for p, i in zip(part, local)]).astype(np.int64)
        return x[:, None], y[:, None]


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
