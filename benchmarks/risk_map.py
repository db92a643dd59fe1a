"""The risk map as a per-voxel predictor of gross translation errors (issue 17 part 1).

Measured in session 8 (docs/BENCHMARK.md section 11) for T1 -> FLAIR with the 0.5.0 models, and
in session 10 (section 11a) for both directions with the 0.6.0 models and the product's risk map:
2 + 2 validation and 4 tumour + 2 healthy test cases per direction.

Stage 1 (``collect``) translates each case once and stores everything a candidate map needs
in ``--cache`` (one .npz per direction and case; generated data, outside git):

    for d in t1_to_flair flair_to_t1; do
      python benchmarks/risk_map.py collect --data data/bench_val --split val --max-cases 2 --direction $d
      python benchmarks/risk_map.py collect --data data/bench_test --split test --max-cases 4 --direction $d
      python benchmarks/risk_map.py collect --data data/gate_test_healthy --split test --max-cases 2 --direction $d
    done

per case: the truth, the plain DDIM-25 translation (seed 0) with its x0-trajectory variance
(last 10 steps), a second sample (seed 1: the spread of K = 2 samples), the PatchCore OOD
probability of the source, and the cycle back-translation of the translation with the other
direction's shipped model (seed 0) beside the source. Each model samples with its own
config.json settings (slice-correlated noise, banding filter).

Stage 2 (``score``) defines the event and scores every candidate:

    python benchmarks/risk_map.py score --direction t1_to_flair --sigma 1 \
        --compare-calibration data/risk_calibration_0.6.0_t1_to_flair.json \
        --out docs/benchmark/risk_map_t1_to_flair.json --png docs/benchmark/risk_map_t1_to_flair.png

(``data/risk_calibration_0.6.0_<direction>.json``: ``git show 80ca095:monai_bundle/models/<direction>/
risk_calibration.json``, the risk map shipped up to 0.6.0.)

* event (:data:`~localdiffusion.detectors.risk.GROSS_ERROR`): the absolute error of the translation
  averaged over a 3 x 3 x 3 neighbourhood (2 mm voxels: the voxel and its 2 mm neighbours, so that
  acquisition noise does not count) above the 99.9th percentile of that quantity on the healthy
  *validation* brain voxels;
* candidates, each smoothed with a 3D Gaussian (sigma ``--sigma`` voxels): ``ood``,
  ``variance``, ``spread`` (|sample 1 - sample 2|), ``cycle`` (|source - back-translation|),
  ``cycle_self`` / ``variance_self`` (the same, standardised by the volume's own brain median and
  MAD; ``cycle_self`` is the product's cycle detector map), the maxima of pairs of
  healthy-calibrated candidates and Fisher's combinations (sum of -log(1 - p)) of some of them;
* the product's risk map, computed by the product's code from the shipped
  ``risk_calibration.json`` (``risk (shipped)``) and from ``--compare-calibration``, scored at the
  benchmark's 1%-healthy-validation threshold and at its own (risk >= 0.99), with a paired
  bootstrap interval over cases for the difference of their per-case AUROCs;
* per candidate on the tumour cases of a split: pixel AUROC and AUPRC for the event over brain
  voxels (pooled), the fraction of event voxels above the threshold that flags 1% of healthy
  *validation* brain voxels, and on the healthy test cases the fraction of brain flagged at
  that threshold; a bootstrap interval over cases for AUROC (per-case AUROCs averaged).
The default is chosen on validation (highest pooled AUROC among the candidates); the test
figures are reported for every candidate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm import tqdm

from localdiffusion.benchmark.figures import PlaneRow, plane_grid
from localdiffusion.data.io import atomic_path, save_png
from localdiffusion.data.readers import read_case
from localdiffusion.detectors.cycle import cycle_residual
from localdiffusion.detectors.maps import VolumeRecorder
from localdiffusion.detectors.risk import (GROSS_ERROR, RiskCalibration, combine, neighbourhood_error, risk_volume,
                                           self_standardise)
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import probability_volume
from localdiffusion.options import DIRECTIONS, reverse_direction
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.batching import translate_prepared
from localdiffusion.volume.cohort import cases_in_split, has_manifest
from localdiffusion.volume.grid import prepare_case

CACHE = Path("data/risk_cache")
RAW = ("ood", "variance", "spread", "cycle", "cycle_self", "variance_self")
HEALTHY_FALSE_ALARMS = 0.01


def case_list(folders: list[str], split: str, max_cases: int | None) -> list[tuple[Path, str]]:
    out = []
    for folder in folders:
        for kind in ("healthy", "tumour"):
            found = cases_in_split(folder, split, kind) if has_manifest(folder) else []
            out += [(p, kind) for p in found[:max_cases]]
    return out


def collect(args) -> None:
    source, target = DIRECTIONS[args.direction]
    forward = load_denoiser(MODELS_ROOT / args.direction)
    backward = load_denoiser(MODELS_ROOT / reverse_direction(args.direction))
    bank = PatchCore.load(ood_bank_path(MODELS_ROOT, source), modality=source, model_root=MODELS_ROOT)
    folder = args.cache / args.direction
    folder.mkdir(parents=True, exist_ok=True)
    for path, kind in tqdm(case_list(args.data, args.split, args.max_cases), desc="collect", unit="case"):
        out = folder / f"{args.split}_{path.name}.npz"
        if out.exists():
            continue
        prepared = prepare_case(read_case(path, (source, target)), forward.config.spacing_mm, forward.config.in_plane)
        seconds = {}
        t0 = time.perf_counter()
        recorder = VolumeRecorder(prepared.grid.shape, 10)
        pred = translate_prepared(forward, prepared, steps=25, seed=0, progress=False, recorder=recorder)
        seconds["translation"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = translate_prepared(forward, prepared, steps=25, seed=1, progress=False)
        seconds["spread"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ood = probability_volume(bank, prepared)
        seconds["ood"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        back_case = dataclasses.replace(prepared, images={target: pred})
        back = translate_prepared(backward, back_case, steps=25, seed=0, progress=False)
        seconds["cycle"] = time.perf_counter() - t0
        seg = prepared.seg if prepared.seg is not None else np.zeros(prepared.grid.shape, np.uint8)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, truth=prepared.images[target], source=prepared.images[source], pred=pred,
                                    second=second, back=back, ood=ood, variance=recorder.maps["variance"],
                                    brain=prepared.brain, seg=seg, kind=kind, seconds=json.dumps(seconds))


def load_cases(cache: Path, direction: str, split: str) -> dict[str, dict]:
    cases = {}
    for f in sorted((cache / direction).glob(f"{split}_*.npz")):
        with np.load(f) as data:
            cases[f.stem[len(split) + 1:]] = {k: data[k] for k in data.files}
    return cases


def local_error(case: dict) -> np.ndarray:
    return neighbourhood_error(case["pred"], case["truth"])


def raw_maps(case: dict, sigma: float) -> dict[str, np.ndarray]:
    brain = case["brain"]
    maps = {"ood": case["ood"], "variance": case["variance"], "spread": np.abs(case["pred"] - case["second"]),
            "cycle": np.abs(case["source"] - case["back"])}
    out = {}
    for name, m in maps.items():
        m = np.where(brain, m, 0).astype(np.float32)
        out[name] = gaussian_filter(m, sigma) if sigma > 0 else m
    # per-volume self-calibration (as section 9's OOD map): the volume's own brain median and MAD
    # remove a level that differs from subject to subject (added after the first test readout,
    # which showed the cycle residual's healthy calibration not transferring; chosen on val as the rest).
    # cycle_self is the product's cycle detector map (detectors/risk.detector_volumes), checked in tests.
    for name in ("cycle", "variance"):
        out[f"{name}_self"] = self_standardise(out[name], brain)
    return out


def product_maps(case: dict) -> dict[str, np.ndarray]:
    """The raw detector maps the product's risk calibration takes for this case."""
    return {"ood": case["ood"], "variance": case["variance"],
            "cycle": cycle_residual(case["source"], case["back"], case["brain"])}


class Cdf:
    """Healthy-voxel empirical CDF of one map."""

    def __init__(self, values: np.ndarray):
        self.sorted = np.sort(values.astype(np.float64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.sorted, x, side="right") / len(self.sorted)


def score(args) -> None:
    val, test = load_cases(args.cache, args.direction, "val"), load_cases(args.cache, args.direction, "test")
    healthy_val = [c for c in val.values() if str(c["kind"]) == "healthy"]
    if not healthy_val:
        raise SystemExit("no healthy validation cases collected")
    event_threshold = float(np.quantile(np.concatenate([local_error(c)[c["brain"]] for c in healthy_val]),
                                        GROSS_ERROR["healthy_quantile"]))
    # candidates: raw smoothed maps, calibrated on healthy validation voxels; pairs combined by max
    healthy_maps = [raw_maps(c, args.sigma) for c in healthy_val]
    cdfs = {n: Cdf(np.concatenate([m[n][c["brain"]] for m, c in zip(healthy_maps, healthy_val)])) for n in RAW}

    def candidates(case):
        raw = raw_maps(case, args.sigma)
        p = {n: cdfs[n](raw[n]) for n in RAW}
        out = dict(p)
        for i, a in enumerate(RAW):
            for b in RAW[i + 1:]:
                out[f"{a}+{b}"] = np.maximum(p[a], p[b])
        out["ood+spread+cycle"] = np.maximum.reduce([p["ood"], p["spread"], p["cycle"]])
        # Fisher's combination (sum of -log(1 - p)): several moderately unusual maps count as much as
        # one very unusual map, where the maximum hears only the loudest
        for group in (("ood", "cycle_self"), ("ood", "variance_self"), ("cycle_self", "variance_self"),
                      ("ood", "cycle_self", "variance_self")):
            out[f"fisher({','.join(group)})"] = combine([p[n] for n in group], "fisher")
        for label, calibration in products.items():
            out[label] = risk_volume(calibration, product_maps(case), case["brain"])
        return out

    # the product's risk map (its own calibration file, fitted by calibrate-risk) and an earlier one to compare
    products = {"risk (shipped)": RiskCalibration.load(MODELS_ROOT / args.direction / "risk_calibration.json")}
    if args.compare_calibration:
        products[f"risk ({args.compare_calibration.stem})"] = RiskCalibration.load(args.compare_calibration)
    names = list(candidates(healthy_val[0]))
    # thresholds flagging 1% of healthy validation voxels, per candidate
    healthy_scores = {n: np.concatenate([candidates(c)[n][c["brain"]] for c in healthy_val]) for n in names}
    thresholds = {n: float(np.quantile(healthy_scores[n], 1 - HEALTHY_FALSE_ALARMS)) for n in names}

    def evaluate(cases: dict) -> dict:
        tumour = {k: c for k, c in cases.items() if str(c["kind"]) == "tumour"}
        healthy = {k: c for k, c in cases.items() if str(c["kind"]) == "healthy"}
        scores = {n: [] for n in names}
        labels, per_case = [], {n: {} for n in names}
        for key, c in tumour.items():
            brain = c["brain"]
            event = local_error(c)[brain] > event_threshold
            labels.append(event)
            cand = candidates(c)
            for n in names:
                s = cand[n][brain]
                scores[n].append(s)
                if 0 < event.mean() < 1:
                    per_case[n][key] = float(roc_auc_score(event, s))
        y = np.concatenate(labels) if labels else np.zeros(0, bool)
        result = {"tumour_cases": len(tumour), "healthy_cases": len(healthy), "event_fraction": float(y.mean())
                  if len(y) else float("nan"),
                  "event_in_tumour": float(np.mean(np.concatenate(
                      [(c["seg"][c["brain"]] > 0)[local_error(c)[c["brain"]] > event_threshold]
                       for c in tumour.values()]))) if tumour else float("nan"),
                  "candidates": {}}
        rng = np.random.default_rng(0)
        for n in names:
            s = np.concatenate(scores[n]) if scores[n] else np.zeros(0)
            row = {"threshold": thresholds[n]}
            if len(y) and 0 < y.mean() < 1:
                row["auroc"] = float(roc_auc_score(y, s))
                row["auprc"] = float(average_precision_score(y, s))
                row["caught"] = float((s[y] > thresholds[n]).mean())
                values = np.array(list(per_case[n].values()))
                boots = values[rng.integers(0, len(values), (2000, len(values)))].mean(1)
                row["case_auroc"] = [float(values.mean()), *map(float, np.percentile(boots, [2.5, 97.5]))]
            if healthy:
                row["healthy_flagged"] = float(np.mean(np.concatenate(
                    [candidates(c)[n][c["brain"]] > thresholds[n] for c in healthy.values()])))
            if n in products:  # also at the product's own threshold, risk >= 0.99
                own = 1 - products[n].combined.false_positive_rate
                if len(y) and 0 < y.mean() < 1:
                    row["caught_at_own_threshold"] = float((s[y] >= own).mean())
                if healthy:
                    row["healthy_flagged_at_own_threshold"] = float(np.mean(np.concatenate(
                        [candidates(c)[n][c["brain"]] >= own for c in healthy.values()])))
            result["candidates"][n] = row
        if len(products) == 2 and all(per_case[n] for n in products):  # the shipped map against the earlier one
            new, old = (np.array([per_case[n][k] for k in sorted(per_case[n])]) for n in products)
            boots = (new - old)[rng.integers(0, len(new), (2000, len(new)))].mean(1)
            result["shipped_minus_compared_case_auroc"] = [float((new - old).mean()),
                                                           *map(float, np.percentile(boots, [2.5, 97.5]))]
        return result

    result = {"direction": args.direction, "sigma": args.sigma, "event_threshold": event_threshold,
              "command": "python " + " ".join(sys.argv), "val": evaluate(val), "test": evaluate(test)}
    chosen = max((n for n in names if n not in products), key=lambda n: result["val"]["candidates"][n].get("auroc", -1))
    result["chosen_on_val"] = chosen
    seconds = [json.loads(str(c["seconds"])) for c in list(val.values()) + list(test.values())]
    result["seconds"] = {k: float(np.mean([s[k] for s in seconds])) for k in seconds[0]}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    tumour_test = [k for k, c in test.items() if str(c["kind"]) == "tumour"]
    if args.png and tumour_test:
        case = test[tumour_test[0]]
        maps = candidates(case)
        save_png(args.png, figure(case, local_error(case), event_threshold,
                                  {f"{chosen} (chosen on val)": (maps[chosen], thresholds[chosen]),
                                   **{n: (maps[n], thresholds[n]) for n in products}},
                                  f"{tumour_test[0]}, {args.direction}, smoothing sigma {args.sigma}"))
    for split in ("val", "test"):
        r = result[split]
        print(f"{split}: {r['tumour_cases']} tumour + {r['healthy_cases']} healthy cases, event fraction "
              f"{r['event_fraction']:.4f}, in tumour {r['event_in_tumour']:.2f}")
        for n, row in r["candidates"].items():
            print(f"  {n:>22}: " + "  ".join(f"{k} {v if isinstance(v, float) else v}" for k, v in row.items()
                                              if k != "threshold"))
    print("chosen on validation:", chosen, "seconds:", result["seconds"])


def figure(case: dict, error: np.ndarray, event_threshold: float, maps: dict, title: str):
    """Axial, coronal and sagittal views through the tumour centre: the translation with the event
    outlined, the local error, and each map with its 1%-healthy threshold outlined."""
    brain = case["brain"]
    where = case["seg"] > 0 if (case["seg"] > 0).any() else brain
    centre = [int(np.round(np.mean(ax))) for ax in np.nonzero(where)]
    event = (error > event_threshold) & brain
    rows = [PlaneRow("translation + event", case["pred"], outline=event),
            PlaneRow("local error (3x3x3 mean)", error, "magma", 0.0, 2 * event_threshold, event)]
    rows += [PlaneRow(name, np.where(brain, m, 0), "viridis", outline=(m > t) & brain) for name, (m, t) in maps.items()]
    return plane_grid(rows, centre, title + " (red: event / above the 1%-healthy threshold)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--data", nargs="+", required=True)
    c.add_argument("--split", required=True, choices=["val", "test"])
    c.add_argument("--max-cases", type=int, default=None)
    s = sub.add_parser("score")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--sigma", type=float, default=1.0)
    s.add_argument("--png", type=Path, default=None, help="three planes of the first tumour test case")
    s.add_argument("--compare-calibration", type=Path, default=None,
                   help="an earlier risk_calibration.json scored beside the shipped one (e.g. 0.6.0's)")
    for p in (c, s):
        p.add_argument("--direction", default="t1_to_flair", choices=list(DIRECTIONS))
        p.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    collect(args) if args.stage == "collect" else score(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
