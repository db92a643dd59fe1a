"""Hallucination benchmark: baseline samplers against Local Diffusion with three masks.

Evaluated on the tumour cases of a split, on slices whose tumour covers at least 1% of the
slice (as in the paper). Per row and seed: PSNR/SSIM over the whole brain, the IND region
(brain minus tumour) and the OOD region (tumour label); tumour Dice of the target-modality
segmentation U-Net on the translation against the label; misdiagnosis rate (evaluated
slices where the U-Net finds no tumour pixel inside the true tumour); seconds per
evaluated slice and the implied seconds per volume (x the case's brain slices).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .local_diffusion import LocalDiffusionConfig, local_diffusion_sampler
from .evaluate import axial_stack
from .metrics import psnr, ssim
from .readers import read_case
from .slice_data import cases_in_split
from .slices import prepare_case
from .translate import baseline_sampler, translate_prepared

MIN_TUMOUR_FRACTION = 0.01


def evaluation_slices(seg: np.ndarray, min_fraction: float = MIN_TUMOUR_FRACTION) -> np.ndarray:
    area = (seg > 0).mean(axis=(0, 1))
    return np.flatnonzero(area >= min_fraction)


def row_metrics(pred: np.ndarray, truth: np.ndarray, brain: np.ndarray, tumour: np.ndarray, ks: np.ndarray,
                segmenter) -> dict:
    p, t = axial_stack(pred, ks), axial_stack(truth, ks)
    b, tu = axial_stack(brain, ks) > 0, axial_stack(tumour, ks) > 0
    out = {}
    for name, region in (("brain", b), ("ind", b & ~tu), ("ood", tu)):
        keep = region.flatten(1).any(1)
        out[f"psnr_{name}"] = float(psnr(p[keep], t[keep], region[keep]).mean())
        out[f"ssim_{name}"] = float(ssim(p[keep], t[keep], region[keep]).mean())
    seg = segmenter.tumour(p)[:, None]
    inter = (seg & tu).flatten(1).sum(1).float()
    out["tumour_dice"] = float(2 * inter.sum() / (seg.sum() + tu.sum()).clamp_min(1))
    out["misdiagnosis_rate"] = float((inter == 0).float().mean())
    return out


def run_benchmark(denoiser, data: str | Path, segmenter, *, split: str = "test", ood_bank=None, source_segmenter=None,
                  seeds=(0,), max_cases: int | None = None, ld_config: LocalDiffusionConfig | None = None,
                  progress: bool = True) -> dict:
    """Rows x seeds x cases; returns per-row mean and std over seeds of the pooled metrics."""
    from .ood.volume import probability_volume

    cfg = denoiser.config
    cases = cases_in_split(data, split, "tumour")[:max_cases]
    ld_config = ld_config or LocalDiffusionConfig()
    rows = {"DDPM-100": ("baseline", "ddpm", 100), "DDIM-25": ("baseline", "ddim", 25),
            "DDIM-50": ("baseline", "ddim", 50), "LD oracle mask (DDIM-25)": ("oracle", "ddim", 25)}
    if ood_bank is not None:
        rows["LD PatchCore mask (DDIM-25)"] = ("patchcore", "ddim", 25)
    if source_segmenter is not None:
        rows["LD U-Net mask (DDIM-25)"] = ("unet", "ddim", 25)
    T = denoiser.schedule.num_train_timesteps
    rows = {name: (kind, sampler, min(steps, T)) for name, (kind, sampler, steps) in rows.items()}
    per_seed = {name: [] for name in rows}
    upper = []
    for seed in seeds:
        acc = {name: {"pred": [], "seconds": 0.0, "slices": 0, "volume_seconds": []} for name in rows}
        truth_all = []
        for path in cases:
            prepared = prepare_case(read_case(path, (cfg.source, cfg.target)), cfg.spacing_mm, cfg.in_plane)
            ks = evaluation_slices(prepared.seg)
            if ks.size == 0:
                continue
            tumour = prepared.seg > 0
            masks = {"oracle": tumour.astype(np.float32)}
            if ood_bank is not None:
                masks["patchcore"] = probability_volume(ood_bank, prepared)
            if source_segmenter is not None:
                src = axial_stack(prepared.images[cfg.source], ks)
                vol = np.zeros(prepared.grid.shape, np.float32)
                vol[:, :, ks] = np.moveaxis(source_segmenter.tumour(src).numpy().astype(np.float32), 0, 2)
                masks["unet"] = vol
            truth_all.append((prepared, ks))
            for name, (kind, sampler, steps) in rows.items():
                if kind == "baseline":
                    sample = baseline_sampler(sampler, steps)
                else:
                    # binary masks (oracle, U-Net) at 0.5; PatchCore at its calibrated threshold
                    mask_cfg = ld_config if kind == "patchcore" else LocalDiffusionConfig(
                        **{**asdict(ld_config), "threshold": 0.5})
                    sample = local_diffusion_sampler(masks[kind], mask_cfg, sampler=sampler, steps=steps)
                t0 = time.perf_counter()
                pred = translate_prepared(denoiser, prepared, seed=seed, batch_size=8, progress=False,
                                          sample_batch=sample, slices=ks)
                dt = time.perf_counter() - t0
                acc[name]["pred"].append(pred)
                acc[name]["seconds"] += dt
                acc[name]["slices"] += len(ks)
                acc[name]["volume_seconds"].append(dt / len(ks) * prepared.brain_slices().size)
            if progress:
                print(f"seed {seed} {prepared.case_id}: {len(ks)} slices", flush=True)
        for name in rows:
            merged = _pooled(acc[name]["pred"], truth_all, cfg.target, segmenter)
            merged["seconds_per_volume"] = float(np.mean(acc[name]["volume_seconds"]))
            per_seed[name].append(merged)
        if seed == seeds[0]:
            upper = _pooled([p.images[cfg.target] for p, _ in truth_all], truth_all, cfg.target, segmenter)
    summary = {name: {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
                      for k in runs[0]} for name, runs in per_seed.items()}
    return {"direction": f"{cfg.source}->{cfg.target}", "split": split, "seeds": list(seeds), "cases": len(cases),
            "evaluated_slices": int(sum(len(ks) for _, ks in truth_all)), "rows": summary,
            "upper_bound_true_target": upper, "ld_config": asdict(ld_config)}


def _pooled(preds, truth_all, target, segmenter) -> dict:
    """Concatenate the evaluated slices of all cases and compute the row metrics once."""
    vols_p, vols_t, vols_b, vols_s = [], [], [], []
    for pred, (prepared, ks) in zip(preds, truth_all):
        vols_p.append(pred[:, :, ks])
        vols_t.append(prepared.images[target][:, :, ks])
        vols_b.append(prepared.brain[:, :, ks])
        vols_s.append(prepared.seg[:, :, ks] > 0)
    cat = lambda v: np.concatenate(v, axis=2)  # noqa: E731
    p, t, b, s = cat(vols_p), cat(vols_t), cat(vols_b), cat(vols_s)
    return row_metrics(p, t, b, s, np.arange(p.shape[2]), segmenter)


def markdown_table(result: dict) -> str:
    cols = ["psnr_brain", "ssim_brain", "psnr_ind", "ssim_ind", "psnr_ood", "ssim_ood", "tumour_dice",
            "misdiagnosis_rate", "seconds_per_volume"]
    head = "| method | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    lines = []
    for name, metrics in result["rows"].items():
        cells = [f"{metrics[c][0]:.3f} ± {metrics[c][1]:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    up = result["upper_bound_true_target"]
    lines.append(f"| true {result['direction'].split('->')[1]} (upper bound) | - | - | - | - | - | - | "
                 f"{up['tumour_dice']:.3f} | {up['misdiagnosis_rate']:.3f} | - |")
    return head + "\n".join(lines) + "\n"


def write_results(result: dict, out_json: str | Path) -> None:
    from .io import atomic_path

    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
