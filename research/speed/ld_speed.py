"""Local Diffusion cost against the baseline on whole volumes, and the OOD-branch crop's effect.

For each tumour case of the split (default: the first two test cases), with the shipped
models and the product defaults (PatchCore mask post-processed, target-modality gate):

* wall time of the baseline DDIM-25 and of Local Diffusion (DDIM-25) on every brain slice
  of the volume, with the OOD branch on a crop (default margin 16 px) and on full slices;
* how far the crop moves the result: mean and 99th percentile of |crop - full| inside the
  branching mask, next to the same statistic between two seeds of the full-slice run (the
  sampler's own variability) as the yardstick.

    python -m research.speed.ld_speed --data data/phantom --direction t1_to_flair --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from localdiffusion.data.readers import read_case
from localdiffusion.jobs.run import model_paths
from localdiffusion.methods.local_diffusion import (LocalDiffusionConfig, LocalDiffusionPlan, PatchCoreGate,
                                                    branch_weight_volume)
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import bank_map
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.volume.batching import batch_sampler, translate_prepared
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/phantom")
    ap.add_argument("--split", default="test")
    ap.add_argument("--direction", default="t1_to_flair", choices=sorted(DIRECTIONS))
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--crop-margin", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source, target = DIRECTIONS[args.direction]
    paths = model_paths(MODELS_ROOT, args.direction)
    den = load_denoiser(paths["diffusion"])
    bank = PatchCore.load(paths["ood"], modality=source)
    gate = PatchCoreGate(PatchCore.load(paths["gate"], modality=target))
    config = LocalDiffusionConfig(crop_margin=args.crop_margin)
    full_config = dataclasses.replace(config, crop_margin=None)
    rows = []
    for path in cases_in_split(args.data, args.split, "tumour")[:args.cases]:
        prepared = prepare_case(read_case(path, (source, target)), den.config.spacing_mm, den.config.in_plane)
        prob = bank_map(bank, prepared)
        weight = branch_weight_volume(prob, config, prepared.brain) > 0
        run = lambda cfg, seed=0: translate_prepared(den, prepared, seed=seed, progress=False,  # noqa: E731
                                                     sample_batch=batch_sampler("ddim", 25, method=LocalDiffusionPlan(
                                                         prob, cfg, gate, brain_volume=prepared.brain)))
        _, base_s = timed(lambda: translate_prepared(den, prepared, steps=25, seed=0, progress=False))
        crop, crop_s = timed(lambda: run(config))
        full, full_s = timed(lambda: run(full_config))
        other_seed = run(full_config, seed=1)
        d_crop, d_seed = np.abs(crop - full)[weight], np.abs(other_seed - full)[weight]
        row = {"case_id": prepared.case_id, "brain_slices": int(prepared.brain_slices().size),
               "branching_slices": int(weight.any(axis=(0, 1)).sum()), "baseline_s": base_s, "ld_crop_s": crop_s,
               "ld_full_s": full_s, "ratio_crop": crop_s / base_s, "ratio_full": full_s / base_s,
               "crop_vs_full_mean": float(d_crop.mean()) if d_crop.size else 0.0,
               "crop_vs_full_p99": float(np.quantile(d_crop, 0.99)) if d_crop.size else 0.0,
               "seed_vs_seed_mean": float(d_seed.mean()) if d_seed.size else 0.0,
               "seed_vs_seed_p99": float(np.quantile(d_seed, 0.99)) if d_seed.size else 0.0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "case_id"}
    print("mean", json.dumps(summary))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "cases": rows, "mean": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
