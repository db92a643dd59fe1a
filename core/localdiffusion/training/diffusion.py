"""Training the conditional denoiser on healthy slices (single process or torchrun DDP).

Objective (:mod:`.objectives`): ``plain``, the MSE between the network output and its target
(x0 for ``sample``), or ``vsm``, which adds a learned variance, its variational term and
the VSM smoothness regulariser; t ~ U{0..T-1}, random crops of healthy training slices
(random left-right flips). Fine-tuning (``init_from``) may widen the shipped network (a
learned-variance head), see :func:`~localdiffusion.network.denoiser.adapt_state_dict`.
AdamW, EMA of the weights, gradient clipping, bf16 autocast on CPU / fp16 AMP on CUDA,
channels_last. Checkpoints (``checkpoint.pt``) hold everything needed to resume;
the EMA weights are exported as ``model.pt`` + ``config.json`` (see :mod:`.model`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.engine.assemble import sample_slices
from localdiffusion.engine.scale import from_model_scale, to_model_scale
from localdiffusion.errors import InputError
from localdiffusion.metrics import psnr, ssim
from localdiffusion.network.denoiser import Denoiser, DiffusionConfig, adapt_state_dict, build_network, save_model
from localdiffusion.network.device import select_device
from localdiffusion.training.objectives import Objective, losses
from localdiffusion.volume.cohort import SliceSet, has_manifest, load_slice_set

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    data: str
    out: str
    steps: int = 3000
    batch_size: int = 16
    crop: int = 64
    lr: float = 2e-4
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    val_every: int = 500
    val_slices: int = 32
    val_steps: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: leave torch's default
    objective: str = "plain"  # "plain" or "vsm" (training/objectives.py)
    vsm_rho: float = 0.1
    vsm_time_aware: bool = False

    @property
    def training_objective(self) -> Objective:
        return Objective(self.objective, self.vsm_rho, self.vsm_time_aware)


class CropSampler:
    """Random (source, target) crops of ``size`` centred near brain pixels, random L-R flips.

    ``offsets``: the condition's slices relative to the target slice (2.5D: (0, -1, 1, ...));
    neighbours come from the whole ``among`` set (every slice of the training cases, healthy or
    not) and are zero where the slice is not a brain slice."""

    def __init__(self, slices: SliceSet, source: str, target: str, size: int, seed: int,
                 offsets: tuple[int, ...] = (0,), among: SliceSet | None = None):
        self.src, self.tgt, self.brain = slices.images[source], slices.images[target], slices.brain
        among = slices if among is None else among
        self.neighbours, self.among = slices.neighbours(offsets, among), among.images[source]
        self.size = size
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w = self.src.shape
        s = min(self.size, h, w)
        c = self.neighbours.shape[1]
        src, tgt = np.zeros((n, c, s, s), np.float32), np.empty((n, 1, s, s), np.float32)
        for b in range(n):
            i = self.rng.integers(len(self.src))
            ys, xs = np.nonzero(self.brain[i])
            k = self.rng.integers(len(ys))
            y0 = int(np.clip(ys[k] - s // 2, 0, h - s))
            x0 = int(np.clip(xs[k] - s // 2, 0, w - s))
            flip = self.rng.random() < 0.5
            for ch, j in enumerate(self.neighbours[i]):
                if j >= 0:
                    a = self.among[j, y0:y0 + s, x0:x0 + s]
                    src[b, ch] = a[::-1] if flip else a
            t = self.tgt[i, y0:y0 + s, x0:x0 + s]
            tgt[b, 0] = t[::-1] if flip else t
        return to_model_scale(src), to_model_scale(tgt)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _logger(out: Path, rank: int) -> logging.Logger:
    log = logging.getLogger(f"localdiffusion.train.{out}")
    log.setLevel(logging.INFO)
    if rank == 0 and not log.handlers:
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


@torch.no_grad()
def validate(denoiser: Denoiser, val: SliceSet, source: str, target: str, steps: int, seed: int = 0,
             batch_size: int = 16, among: SliceSet | None = None) -> dict[str, float]:
    """DDIM translation of validation slices (neighbours for a 2.5D model from ``among``); mean
    PSNR and SSIM over the brain."""
    device = next(denoiser.parameters()).device
    scores = {"psnr": [], "ssim": []}
    for start in range(0, len(val), batch_size):
        part = val.subset(slice(start, start + batch_size))
        cond = torch.as_tensor(part.stacked(source, denoiser.config.condition_offsets, among)).to(device)
        seeds = [seed * 1_000_003 + start + b for b in range(len(part))]
        pred = from_model_scale(sample_slices(denoiser, cond, seeds, sampler="ddim", steps=steps)).cpu()
        truth = torch.as_tensor(part.images[target][:, None])
        region = torch.as_tensor(part.brain[:, None])
        scores["psnr"].append(psnr(pred, truth, region))
        scores["ssim"].append(ssim(pred, truth, region))
    return {k: float(torch.cat(v).mean()) for k, v in scores.items()}


def train(cfg: TrainConfig, model_cfg: DiffusionConfig, resume: bool = False, progress: bool = True,
          init_from: str | Path | None = None) -> Path:
    """Train (or resume) and export the EMA model to ``cfg.out``; returns that folder.

    ``init_from``: a model folder (``config.json`` + ``model.pt``, e.g. shipped weights) whose
    weights initialise the network and its EMA (fine-tuning; the optimizer starts fresh).
    """
    objective = cfg.training_objective
    model_cfg = replace(model_cfg, learned_variance=objective.learned_variance,
                        extra={**model_cfg.extra, **objective.describe()})
    rank, world = _distributed()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _logger(out, rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.manual_seed(cfg.seed + rank)

    kind = "healthy" if has_manifest(cfg.data) else None  # phantom: healthy subjects only
    train_all = load_slice_set(cfg.data, "train", (model_cfg.source, model_cfg.target), kind=kind,
                               spacing=model_cfg.spacing_mm, in_plane=model_cfg.in_plane)
    train_set = train_all.healthy()
    if len(train_set) == 0:
        raise InputError(f"{cfg.data}: no healthy training slices")
    val_set = val_among = None
    if rank == 0 and cfg.val_every > 0:
        val_all = load_slice_set(cfg.data, "val", (model_cfg.source, model_cfg.target), kind=kind,
                                 spacing=model_cfg.spacing_mm, in_plane=model_cfg.in_plane).healthy()
        pick = np.random.default_rng(0).permutation(len(val_all))[: cfg.val_slices]
        val_set = val_all.subset(np.sort(pick)) if len(val_all) else None
        val_among = val_all

    network = build_network(model_cfg).to(device).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(network).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_step = 0
    if init_from is not None:
        from localdiffusion.network.denoiser import load_denoiser

        init = load_denoiser(init_from, autocast=False)
        widened = ("learned_variance", "condition_slices", "extra")
        if {k: v for k, v in asdict(init.config).items() if k not in widened} != \
                {k: v for k, v in asdict(model_cfg).items() if k not in widened}:
            raise InputError(f"{init_from}: its configuration does not match the requested model")
        weights = adapt_state_dict(init.network.state_dict(), network)
        network.load_state_dict(weights)
        ema.load_state_dict(weights)
        log.info("initialised from %s%s", init_from, " (widened)" if asdict(init.config) != asdict(model_cfg) else "")
    ckpt_path = out / CHECKPOINT_FILE
    sampler = CropSampler(train_set, model_cfg.source, model_cfg.target, cfg.crop, seed=cfg.seed * 1000 + rank,
                          offsets=model_cfg.condition_offsets, among=train_all)
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        saved_cfg = DiffusionConfig(**state["model_config"])
        if asdict(saved_cfg) != asdict(model_cfg):
            raise InputError(f"{ckpt_path}: checkpoint configuration does not match the requested model")
        network.load_state_dict(state["network"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the requested learning rate wins (e.g. a lower one to finish)
            group["lr"] = cfg.lr
        start_step = int(state["step"])
        sampler.rng = np.random.default_rng(cfg.seed * 1000 + rank + 7919 * start_step)
        torch.manual_seed(cfg.seed + rank + 7919 * start_step)
        log.info("resumed from step %d (learning rate %g)", start_step, cfg.lr)
    model = network
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    schedule = Denoiser(model_cfg, network).schedule
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    log.info("training %s -> %s: %d healthy slices, world %d, device %s, config %s", model_cfg.source,
             model_cfg.target, len(train_set), world, device, json.dumps(asdict(cfg)))

    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="train",
               disable=not progress or rank != 0)
    t_start = time.time()
    for step in bar:
        cond, target = (x.to(device) for x in sampler.batch(cfg.batch_size))
        t = torch.randint(0, model_cfg.num_train_timesteps, (cfg.batch_size,), device=device)
        noise = torch.randn_like(target)
        x_t = schedule.add_noise(target, noise, t)
        inputs = torch.cat([x_t, cond], 1).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype):
            output = model(inputs, timesteps=t)
        terms = losses(objective, schedule, output.float(), x_t, target, noise, t, model_cfg.prediction_type)
        loss = terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), network.parameters()):
                e.lerp_(p, 1 - decay)
            for e, b in zip(ema.buffers(), network.buffers()):
                e.copy_(b)
        done = step + 1
        if rank == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if done % 50 == 0:
                parts = " ".join(f"{k} {v.item():.5f}" for k, v in terms.items() if k != "loss")
                log.info("step %d loss %.5f (%s) (%.2f s/step)", done, loss.item(), parts,
                         (time.time() - t_start) / (done - start_step))
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _save_checkpoint(ckpt_path, network, ema, optimizer, done, model_cfg)
            if val_set is not None and (done % cfg.val_every == 0 or done == cfg.steps):
                scores = validate(Denoiser(model_cfg, ema), val_set, model_cfg.source, model_cfg.target,
                                  cfg.val_steps, among=val_among)
                log.info("step %d validation (DDIM-%d, %d healthy val slices): PSNR %.2f dB SSIM %.4f",
                         done, cfg.val_steps, len(val_set), scores["psnr"], scores["ssim"])
                bar.write(f"step {done}: val PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}")
    if rank == 0:
        save_model(out, model_cfg, {k: v.detach().cpu() for k, v in ema.state_dict().items()})
        log.info("exported EMA weights to %s after %d steps", out, cfg.steps)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return out


@dataclass
class BundleTrainer:
    """``train#trainer`` of the bundle's train config, named as MONAI's train-workflow properties
    expect (``train#trainer#max_epochs``; ``train#dataset`` is the data folder the slices are
    drawn from and ``train#inferer`` the validation sampler). One "epoch" here is one optimiser
    step: training draws random crops, it does not sweep a dataset."""

    config: TrainConfig
    model_config: DiffusionConfig
    max_epochs: int
    resume: bool = True

    def run(self) -> Path:
        return train(replace(self.config, steps=int(self.max_epochs)), self.model_config,
                     resume=self.resume)


def _save_checkpoint(path: Path, network, ema, optimizer, step: int, model_cfg: DiffusionConfig) -> None:
    with atomic_path(path) as tmp:
        torch.save({"network": network.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "model_config": asdict(model_cfg)}, tmp)
