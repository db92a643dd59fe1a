"""PatchCore speed on an otherwise idle machine (benchmark, not a test).

    python -m research.speed.ood_speed --data data/phantom --modality t1 [--bank monai_bundle/models/ood_t1.pt]

Reports: seconds to build and calibrate a bank with the offline default (BatchNorm
recalibration, features, coreset, faiss index, calibration); ms per slice for the OOD map
including the nearest-neighbour search (tumour test slices, all torch threads); faiss
against a brute-force torch reference (max |distance difference| and speed ratio).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from localdiffusion.jobs.ood_bank import build_bank
from localdiffusion.ood.features import make_extractor
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.volume.cohort import load_slice_set


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/phantom")
    p.add_argument("--modality", default="t1")
    p.add_argument("--bank", default=None, help="bank to time the map with (default: the one built here)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    result = {"threads": torch.get_num_threads(), "modality": args.modality}
    t0 = time.perf_counter()
    built = build_bank(args.data, args.modality, make_extractor())
    result["build_seconds"] = round(time.perf_counter() - t0, 1)
    model = PatchCore.load(args.bank, modality=args.modality) if args.bank else built
    test = load_slice_set(args.data, "test", (args.modality,), kind="tumour")
    slices, brain = test.images[args.modality][:160], test.brain[:160]
    model.probability(slices[:16], brain[:16])  # warm-up
    t0 = time.perf_counter()
    model.probability(slices, brain)
    result["map_ms_per_slice"] = round(1000 * (time.perf_counter() - t0) / len(slices), 1)
    feats = model.extractor(torch.as_tensor(slices[:8, None])).permute(0, 2, 3, 1)
    queries = feats.reshape(-1, feats.shape[-1]).numpy()
    t0 = time.perf_counter()
    dist, _ = model.bank.search(queries)
    t_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = torch.cdist(torch.as_tensor(queries), torch.as_tensor(model.bank.features)).min(1).values.numpy()
    t_torch = time.perf_counter() - t0
    result["faiss_vs_torch"] = {"queries": int(len(queries)), "bank": len(model.bank), "index": model.bank.index_type,
                                "max_abs_diff": float(np.abs(dist[:, 0] - ref).max()),
                                "faiss_ms": round(1000 * t_faiss, 1), "torch_ms": round(1000 * t_torch, 1),
                                "torch_over_faiss": round(t_torch / t_faiss, 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        open(args.out, "w").write(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
