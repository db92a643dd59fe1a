"""RODS cost and the finite-difference curvature estimator against autograd, on a trained model.

For the first healthy cases of a split (default: 16 brain slices of validation case 0),
with the shipped model, every configuration samples DDIM-25 with ``eps`` out of reach, so
all of them follow the plain trajectory and record H at the same (slice, step) points:

* wall time of each configuration against the plain sampler, timed right before it (after
  a warm-up), so that both see the same background load;
* agreement of the finite-difference H with the autograd H of the same mode: Spearman
  correlation over all (slice, step) points, the median over steps of the Spearman
  correlation across slices (what a per-step threshold sees), and the median ratio; the
  same for CAS with the network in fp32 (autocast off) on the first batch, to separate the
  estimator's error from bf16 rounding.

Writes JSON to ``--out`` (default research/results/rods_estimator_<direction>.json).

    python -m research.rods.rods_estimator --data data/phantom --direction flair_to_t1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import read_case
from localdiffusion.engine.assemble import sample_slices
from localdiffusion.methods.rods import RODS, RODSConfig
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

CONFIGS = {
    "CAS autograd, every step": RODSConfig(mode="cas", estimator="autograd", stride=1),
    "SAS autograd, every step": RODSConfig(mode="sas", estimator="autograd", stride=1),
    "CAS finite difference, every step": RODSConfig(mode="cas", estimator="finite_difference", stride=1),
    "SAS finite difference, every step": RODSConfig(mode="sas", estimator="finite_difference", stride=1),
    "CAS autograd, every 2nd step (default)": RODSConfig(),
    "CAS autograd, every 3rd step": RODSConfig(mode="cas", estimator="autograd", stride=3),
    "CAS autograd, every 5th step": RODSConfig(mode="cas", estimator="autograd", stride=5),
}


def agreement_of(exact: np.ndarray, approx: np.ndarray) -> dict:
    """Spearman over all (slice, step) points, across slices per step (median), median ratio."""
    per_step = [spearmanr(exact[:, j], approx[:, j])[0] for j in range(exact.shape[1])]
    return {"spearman_all_points": float(spearmanr(exact.ravel(), approx.ravel())[0]),
            "spearman_across_slices_median_over_steps": float(np.median(per_step)),
            "spearman_across_slices_per_step": [float(r) for r in per_step],
            "median_ratio_fd_over_autograd": float(np.median(approx / exact))}


class CurvatureProbe:
    """Hook that keeps the RODS object of the run (its per-step curvature)."""

    rods: RODS | None = None

    def watch_denoiser(self, rods: RODS) -> None:
        self.rods = rods

    def __call__(self, step):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/phantom")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default="flair_to_t1")
    p.add_argument("--split", default="val")
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    denoiser = load_denoiser(Path(MODELS_ROOT) / args.direction)
    cfg = denoiser.config
    case = cases_in_split(args.data, args.split, "healthy")[0]
    prepared = prepare_case(read_case(case, (cfg.source,)), cfg.spacing_mm, cfg.in_plane)
    ks = prepared.brain_slices()
    ks = ks[np.linspace(0, len(ks) - 1, args.slices).round().astype(int)]
    cond = torch.as_tensor(np.moveaxis(prepared.images[cfg.source][:, :, ks], 2, 0)[:, None])
    batches = [slice(i, i + args.batch_size) for i in range(0, len(ks), args.batch_size)]

    def run(rods: RODSConfig | None, model=denoiser, parts=batches):
        curvature, t0 = [], time.perf_counter()
        for b in parts:
            probe = CurvatureProbe()
            seeds = [args.seed * 1_000_003 + int(k) for k in ks[b]]
            sample_slices(model, cond[b], seeds, sampler="ddim", steps=25, hooks=[probe],
                          wrappers=[rods] if rods is not None else [])
            if probe.rods is not None:
                curvature.append({i: h.numpy() for i, h in probe.rods.curvature.items()})
        seconds = time.perf_counter() - t0
        if not curvature:
            return seconds, None
        steps = sorted(curvature[0])
        return seconds, np.stack([np.concatenate([c[i] for c in curvature]) for i in steps], 1)  # (slices, steps)

    def probe_config(rods: RODSConfig) -> RODSConfig:
        return RODSConfig(**{**rods.__dict__, "eps": float("inf")})

    run(None)  # warm-up (kernel selection, allocations)
    result = {"direction": args.direction, "case": Path(case).name, "split": args.split, "slices": len(ks),
              "threads": args.threads, "configs": {}}
    curvature = {}
    for name, rods in CONFIGS.items():
        plain_s, _ = run(None)  # timed right before each configuration: paired against drifting background load
        seconds, h = run(probe_config(rods))
        curvature[name] = h
        result["configs"][name] = {"seconds": seconds, "plain_seconds": plain_s, "overhead": seconds / plain_s,
                                   "evaluated_steps": h.shape[1], "h_median": float(np.median(h))}
        print(f"{name}: {seconds:.1f} s = {seconds / plain_s:.2f}x plain ({plain_s:.1f} s), "
              f"H median {np.median(h):.4g}", flush=True)
    for mode in ("CAS", "SAS"):
        exact, approx = (curvature[f"{mode} {e}, every step"] for e in ("autograd", "finite difference"))
        result[f"agreement_{mode.lower()}"] = agreement = agreement_of(exact, approx)
        print(f"{mode} finite difference vs autograd (bf16) over {exact.size} (slice, step) points: "
              f"{ {k: v for k, v in agreement.items() if 'per_step' not in k} }", flush=True)
    fp32 = load_denoiser(Path(MODELS_ROOT) / args.direction, autocast=False)  # is bf16 rounding the cause?
    first = batches[:1]
    exact = run(probe_config(CONFIGS["CAS autograd, every step"]), fp32, first)[1]
    approx = run(probe_config(CONFIGS["CAS finite difference, every step"]), fp32, first)[1]
    result["agreement_cas_fp32"] = agreement = agreement_of(exact, approx)
    print(f"CAS finite difference vs autograd (fp32, {exact.shape[0]} slices): "
          f"{ {k: v for k, v in agreement.items() if 'per_step' not in k} }", flush=True)
    out = Path(args.out or f"research/results/rods_estimator_{args.direction}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
