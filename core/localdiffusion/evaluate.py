"""Translation quality on a cohort split: PSNR and SSIM over the whole brain.

Each case is translated on its working grid with the default sampler; PSNR and SSIM
(:mod:`.metrics`, intensities on the normalised [0, 1] scale, region = brain mask) are
computed per brain slice and averaged per case; the report gives the mean and standard
deviation over cases.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .diffusion.model import Denoiser
from .metrics import psnr, ssim
from .readers import read_case
from .slice_data import cases_in_split, has_manifest
from .slices import prepare_case
from .translate import translate_prepared


def slice_scores(pred: np.ndarray, truth: np.ndarray, region: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice PSNR and SSIM for working-grid volumes (X, Y, Z) restricted to ``region``."""
    to_t = lambda v: torch.as_tensor(np.moveaxis(v, 2, 0)[:, None].astype(np.float32))  # noqa: E731
    keep = region.any(axis=(0, 1))
    p, t, r = to_t(pred[:, :, keep]), to_t(truth[:, :, keep]), to_t(region[:, :, keep]) > 0
    return {"psnr": psnr(p, t, r).numpy(), "ssim": ssim(p, t, r).numpy()}


def evaluate_translation(denoiser: Denoiser, data: str | Path, split: str = "test", kind: str | None = "healthy", *,
                         sampler: str = "ddim", steps: int | None = 25, seed: int = 0, batch_size: int = 8,
                         max_cases: int | None = None) -> dict:
    """Translate every case of ``split`` (phantom ``kind``) and score it against the truth."""
    cfg = denoiser.config
    cases = cases_in_split(data, split, kind if has_manifest(data) else None)[:max_cases]
    per_case = []
    for path in tqdm(cases, desc=f"evaluate {cfg.source}->{cfg.target}", unit="case"):
        prepared = prepare_case(read_case(path, (cfg.source, cfg.target)), cfg.spacing_mm, cfg.in_plane)
        t0 = time.perf_counter()
        pred = translate_prepared(denoiser, prepared, sampler=sampler, steps=steps, seed=seed,
                                  batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - t0
        scores = slice_scores(pred, prepared.images[cfg.target], prepared.brain)
        per_case.append({"case_id": prepared.case_id, "psnr": float(scores["psnr"].mean()),
                         "ssim": float(scores["ssim"].mean()), "seconds": seconds,
                         "slices": int(prepared.brain_slices().size)})
    summary = {k: (float(np.mean([c[k] for c in per_case])), float(np.std([c[k] for c in per_case])))
               for k in ("psnr", "ssim", "seconds")}
    return {"direction": f"{cfg.source}->{cfg.target}", "split": split, "kind": kind, "sampler": sampler,
            "steps": steps, "seed": seed, "cases": len(per_case), "mean_std": summary, "per_case": per_case}


def write_report(result: dict, path: str | Path) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
