"""PatchCore backbone options, evaluation and speed (benchmark, not a test).

    python -m research.ood.ood_benchmark --data data/phantom --modality t1 --out runs/ood_t1 \
        --options resnet18:random resnet18:random:layer1+layer2 wide_resnet50_2:random \
                  diffusion:monai_bundle/models/t1_to_flair

1. For each offline option: fit a bank on healthy *train* slices, calibrate on healthy
   *val* slices, score the *tumour val* split; the default is the option with the best
   pixel AUPRC there, and the Dice threshold is chosen there too.
2. Every option and the intensity-outlier baseline are then scored once on the *tumour
   test* split with the validation-chosen thresholds.
3. Speed: bank build seconds, ms per slice for the map including search, faiss vs a
   brute-force torch reference (max distance difference and speed ratio).
Writes ``OUT/results.json`` and one bank per option (``OUT/<name>.pt``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from localdiffusion.jobs.ood_bank import build_bank
from research.bench.detection import best_threshold, detection_metrics, intensity_outlier_scores
from localdiffusion.ood.features import make_extractor
from localdiffusion.volume.cohort import load_slice_set

CANDIDATE_PROBABILITIES = np.array([0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999])


def option_name(option: str) -> str:
    return option.replace(":", "-").replace("/", "_")


def parse_option(option: str):
    """``backbone:weights[:layerA+layerB]`` or ``diffusion:<model dir>``."""
    backbone, rest = option.split(":", 1)
    if backbone == "diffusion":
        return make_extractor(weights=f"diffusion:{rest}")
    weights, _, layers = rest.partition(":")
    return make_extractor(backbone, weights, layers=tuple(layers.split("+")) if layers else ("layer2", "layer3"))


def faiss_check(model, queries: np.ndarray) -> dict:
    t0 = time.perf_counter()
    dist, _ = model.bank.search(queries)
    t_faiss = time.perf_counter() - t0
    bank = torch.as_tensor(model.bank.features)
    t0 = time.perf_counter()
    ref = torch.cdist(torch.as_tensor(queries).double(), bank.double()).min(1).values.numpy()
    t_torch = time.perf_counter() - t0
    return {"max_abs_diff": float(np.abs(dist[:, 0] - ref).max()), "faiss_s": t_faiss, "torch_s": t_torch,
            "speedup": t_torch / t_faiss, "queries": int(len(queries)), "index": model.bank.index_type}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--modality", default="t1")
    parser.add_argument("--options", nargs="+", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--bank-size", type=int, default=4000)
    parser.add_argument("--append", action="store_true", help="add options to an existing OUT/results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    m = args.modality
    val = load_slice_set(args.data, "val", (m,), kind="tumour")
    test = load_slice_set(args.data, "test", (m,), kind="tumour")
    truth_val, truth_test = val.seg > 0, test.seg > 0
    results = {"modality": m, "data": args.data, "val_slices": len(val), "test_slices": len(test), "options": {}}
    if args.append and (args.out / "results.json").exists():
        results = json.loads((args.out / "results.json").read_text())

    for option in args.options:
        t0 = time.perf_counter()
        model = build_bank(args.data, m, parse_option(option), bank_size=args.bank_size)
        build_s = time.perf_counter() - t0
        model.save(args.out / f"{option_name(option)}.pt")
        t0 = time.perf_counter()
        prob_val, img_val = model.probability(val.images[m], val.brain)
        ms_per_slice = 1000 * (time.perf_counter() - t0) / len(val)
        thr, val_dice = best_threshold(prob_val, truth_val, val.brain, CANDIDATE_PROBABILITIES)
        prob_test, img_test = model.probability(test.images[m], test.brain)
        queries = model.extractor(torch.as_tensor(test.images[m][:4, None])).permute(0, 2, 3, 1)
        results["options"][option] = {
            "val": detection_metrics(prob_val, img_val, truth_val, val.brain, thr),
            "test": detection_metrics(prob_test, img_test, truth_test, test.brain, thr),
            "test_at_calibrated": detection_metrics(prob_test, img_test, truth_test, test.brain, model.threshold),
            "threshold_probability": thr, "calibrated_threshold": model.threshold,
            "build_seconds": build_s, "ms_per_slice": ms_per_slice, "bank_size": len(model.bank),
            "bank_mb": (args.out / f"{option_name(option)}.pt").stat().st_size / 1e6,
            "faiss_vs_torch": faiss_check(model, queries.reshape(-1, queries.shape[-1]).numpy()),
        }
        print(option, json.dumps(results["options"][option]["val"]), flush=True)

    pix_val, img_val = intensity_outlier_scores(val.images[m], val.brain)
    cands = np.quantile(pix_val[val.brain], CANDIDATE_PROBABILITIES)
    thr, _ = best_threshold(pix_val, truth_val, val.brain, cands)
    pix_test, img_test = intensity_outlier_scores(test.images[m], test.brain)
    results["intensity_outlier"] = {"val": detection_metrics(pix_val, img_val, truth_val, val.brain, thr),
                                    "test": detection_metrics(pix_test, img_test, truth_test, test.brain, thr)}
    best = max(results["options"], key=lambda o: results["options"][o]["val"]["pixel_auprc"])
    results["default"] = best
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("default by val AUPRC:", best)


if __name__ == "__main__":
    main()
