"""The risk map as a per-voxel predictor of gross translation errors.

Question: which combination of detector maps ranks the voxels a translation gets grossly wrong, and
how many of them does it flag at 1% healthy false alarms? Measured in research/RECORD.md sections
11-11e (2 + 2 validation and 4 tumour + 2 healthy test cases per direction, a smoothing grid, a
selection rule weighing AUROC and errors caught, held-out test cases and acquisition-shifted variants).

Stage 1 (``collect``) translates each case once and stores everything a candidate map needs
in ``--cache`` (one .npz per direction and case; generated data, outside git):

    for d in t1_to_flair flair_to_t1; do
      python -m research.risk_map.risk_map collect --data data/bench_val --split val --max-cases 2 --direction $d
      python -m research.risk_map.risk_map collect --data data/bench_test --split test --max-cases 4 --direction $d
      python -m research.risk_map.risk_map collect --data data/gate_test_healthy --split test --max-cases 2 --direction $d
    done

and the held-out test cases of section 11b (not looked at before the rule and the default were
fixed; the validation cases are the same files, linked):

    for d in t1_to_flair flair_to_t1; do
      mkdir -p data/risk_cache_holdout/$d && ln -sf $PWD/data/risk_cache/$d/val_*.npz data/risk_cache_holdout/$d/
      python -m research.risk_map.risk_map collect --data data/bench_test --split test --first-case 4 --max-cases 4 \
          --direction $d --cache data/risk_cache_holdout
      python -m research.risk_map.risk_map collect --data data/gate_test_healthy --split test --first-case 2 --max-cases 2 \
          --direction $d --cache data/risk_cache_holdout
    done

per case: the truth, the plain DDIM-25 translation (seed 0) with its x0-trajectory variance
(last 10 steps), a second sample (seed 1: the spread of K = 2 samples; ``--no-spread`` skips it),
the PatchCore OOD probability of the source, and the cycle back-translation of the translation
with the other direction's shipped model (seed 0) beside the source. Each model samples with its
own config.json settings (slice-correlated noise, banding filter).

Stage 2 (``score``) defines the event and scores every candidate:

    python -m research.risk_map.risk_map score --direction t1_to_flair --sigma 1 1,1,2 1,1,3 2 2,2,3 \
        --compare-calibration data/risk_calibration_0.7.0_t1_to_flair.json --cache data/risk_cache_holdout \
        --out research/results/risk_map_holdout_t1_to_flair.json --png research/results/risk_map_holdout_t1_to_flair.png

The shipped T1 -> FLAIR risk (0.9.0) combines the robust OOD map: run the ``robust-ood`` stage on a
cache before scoring it (without the map the product's code refuses to make that risk).
(``data/risk_calibration_<version>_<direction>.json``: ``git show <commit>:monai_bundle/models/<direction>/
risk_calibration.json``, an earlier release's risk map: 0.6.0 = 80ca095, 0.7.0 = 37ee044, 0.8.0 = 0e622b9.
Section 11a's command: ``--sigma 1 --compare-calibration data/risk_calibration_0.6.0_<d>.json`` on
``data/risk_cache``, with the 0.7.0 calibration in the models folder; section 11b's, above, with 0.8.0's.)

* event (:data:`~localdiffusion.detectors.risk.GROSS_ERROR`): the absolute error of the translation
  averaged over a 3 x 3 x 3 neighbourhood (2 mm voxels: the voxel and its 2 mm neighbours, so that
  acquisition noise does not count) above the 99.9th percentile of that quantity on the healthy
  *validation* brain voxels;
* candidates, each smoothed with a 3D Gaussian (every sigma of ``--sigma``: one value, or x,y,z
  with z the slice axis): ``ood``, ``variance``, ``spread`` (|sample 1 - sample 2|), ``cycle``
  (|source - back-translation|), ``cycle_self`` / ``variance_self`` (the same, standardised by the
  volume's own brain median and MAD; ``cycle_self`` is the product's cycle detector map), the
  maxima of pairs of healthy-calibrated candidates and Fisher's combinations (sum of -log(1 - p))
  of some of them;
* the product's risk map, computed by the product's code from the shipped
  ``risk_calibration.json`` (``risk (shipped)``) and from ``--compare-calibration``, scored at the
  benchmark's 1%-healthy-validation threshold and at its own (risk >= 0.99), with a paired
  bootstrap interval over cases for the difference of their per-case AUROCs;
* per candidate on the tumour cases of a split: pixel AUROC and AUPRC for the event over brain
  voxels (pooled), the fraction of event voxels above the threshold that flags 1% of healthy
  *validation* brain voxels, on the healthy test cases the fraction of brain flagged at that
  threshold, a bootstrap interval over cases for AUROC (per-case AUROCs averaged), and the banding
  (:func:`~research.bench.consistency.z_highpass_ratio`: the mean squared difference from
  slice to slice over that within a slice; the error map's own is reported beside it as the reference).
The default is chosen on validation by :data:`RULE`; the test figures are reported for every candidate.

Stage 3 (``shift``) scores the product's risk map on acquisition-shifted test variants
(research/RECORD.md section 9's ``data/shift/<variant>``), collected without the second sample:

    for v in training spin_echo strong_bias low_snr; do
      python -m research.risk_map.risk_map collect --data data/shift/$v --split test --kind tumour --max-cases 2 \
          --no-spread --direction t1_to_flair --cache data/risk_cache_shift/$v
      python -m research.risk_map.risk_map collect --data data/shift/$v --split test --kind healthy --max-cases 1 \
          --no-spread --direction t1_to_flair --cache data/risk_cache_shift/$v
    done
    python -m research.risk_map.risk_map robust-ood --direction t1_to_flair --split val      # the robust-OOD lead
    python -m research.risk_map.risk_map robust-ood --direction t1_to_flair --caches data/risk_cache_shift/*
    python -m research.risk_map.risk_map shift --direction t1_to_flair --variants data/risk_cache_shift/{training,spin_echo,strong_bias,low_snr} \
        --out research/results/risk_map_shift_t1_to_flair.json

(``training``: links to section 11a's first test cases, byte-identical scans; FLAIR -> T1 the same with
the variants training, strong_bias and low_snr.) ``shift`` reports the product's map and, once
``robust-ood`` has run, the same definition refitted on the healthy validation cases with the bank's
OOD map and with the robust one (:func:`refit`).
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

from research.bench.consistency import z_highpass_ratio
from research.bench.figures import PlaneRow, plane_grid
from localdiffusion.data.io import atomic_path, save_png
from localdiffusion.data.readers import read_case
from localdiffusion.detectors.cycle import cycle_residual
from localdiffusion.detectors.maps import VolumeRecorder
from localdiffusion.detectors.risk import (GROSS_ERROR, RiskCalibration, combine, fit_on_volumes, is_smoothed,
                                           parse_smoothing, risk_volume, self_standardise,
                                           smoothing_label)
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import probability_volume
from research.bench.gross_error import neighbourhood_error
from localdiffusion.options import DIRECTIONS, reverse_direction
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.batching import translate_prepared
from localdiffusion.volume.cohort import cases_in_split, has_manifest
from localdiffusion.volume.grid import prepare_case

CACHE = Path("data/risk_cache")
RAW = ("ood", "variance", "spread", "cycle", "cycle_self", "variance_self")
HEALTHY_FALSE_ALARMS = 0.01


def case_list(folders: list[str], split: str, max_cases: int | None, first_case: int = 0,
              kinds: tuple[str, ...] = ("healthy", "tumour")) -> list[tuple[Path, str]]:
    """Cases ``first_case`` .. ``first_case + max_cases - 1`` of each kind, in manifest order."""
    out = []
    for folder in folders:
        for kind in kinds:
            found = cases_in_split(folder, split, kind) if has_manifest(folder) else []
            stop = None if max_cases is None else first_case + max_cases
            out += [(p, kind) for p in found[first_case:stop]]
    return out


def collect(args) -> None:
    source, target = DIRECTIONS[args.direction]
    forward = load_denoiser(MODELS_ROOT / args.direction)
    backward = load_denoiser(MODELS_ROOT / reverse_direction(args.direction))
    bank = PatchCore.load(ood_bank_path(MODELS_ROOT, source), modality=source, model_root=MODELS_ROOT)
    folder = args.cache / args.direction
    folder.mkdir(parents=True, exist_ok=True)
    cases = case_list(args.data, args.split, args.max_cases, args.first_case, tuple(args.kind))
    for path, kind in tqdm(cases, desc="collect", unit="case"):
        out = folder / f"{args.split}_{path.name}.npz"
        if out.exists():
            continue
        prepared = prepare_case(read_case(path, (source, target)), forward.config.spacing_mm, forward.config.in_plane)
        seconds = {}
        t0 = time.perf_counter()
        recorder = VolumeRecorder(prepared.grid.shape, 10)
        pred = translate_prepared(forward, prepared, steps=25, seed=0, progress=False, recorder=recorder)
        seconds["translation"] = time.perf_counter() - t0
        extra = {}
        if not args.no_spread:
            t0 = time.perf_counter()
            extra["second"] = translate_prepared(forward, prepared, steps=25, seed=1, progress=False)
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
                                    back=back, **extra, ood=ood, variance=recorder.maps["variance"],
                                    brain=prepared.brain, seg=seg, kind=kind, seconds=json.dumps(seconds))


ROBUST_SUFFIX = ".ood_robust.npy"  # beside a case's .npz: its acquisition-robust OOD probability (robust-ood stage)


def load_cases(cache: Path, direction: str, split: str) -> dict[str, dict]:
    cases = {}
    for f in sorted((cache / direction).glob(f"{split}_*.npz")):
        with np.load(f) as data:
            cases[f.stem[len(split) + 1:]] = {k: data[k] for k in data.files}
        robust = f.with_name(f.stem + ROBUST_SUFFIX)
        if robust.exists():
            cases[f.stem[len(split) + 1:]]["ood_robust"] = np.load(robust)
    return cases


def robust_ood(args) -> None:
    """The shipped acquisition-robust OOD probability (``ood map --robust``: ood/robust.py; or that of
    ``--calibration``) of every cached case's source, saved beside its .npz (generated data; the collect
    stage's files are untouched)."""
    from localdiffusion.ood.robust import RobustCalibration
    from localdiffusion.shipped import robust_calibration_path

    source = DIRECTIONS[args.direction][0]
    bank_path = ood_bank_path(MODELS_ROOT, source)
    bank = PatchCore.load(bank_path, modality=source, model_root=MODELS_ROOT)
    robust = RobustCalibration.load(args.calibration or robust_calibration_path(bank_path))
    files = [f for folder in args.caches for f in sorted((folder / args.direction).glob("*.npz"))
             if args.split is None or f.name.startswith(f"{args.split}_")]
    for f in tqdm(files, desc="robust OOD", unit="case"):
        out = f.with_name(f.stem + ROBUST_SUFFIX)
        if out.exists():
            continue
        with np.load(f) as data:
            probability = robust.patch_only().probability(bank, data["source"], data["brain"])  # as the risk reads it
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, probability)


def local_error(case: dict) -> np.ndarray:
    return neighbourhood_error(case["pred"], case["truth"])


def off_tumour_error(case: dict, event_threshold: float) -> dict[str, float]:
    """How wrong a translation is away from the lesion: the fraction of brain voxels outside the tumour
    label with the gross-error event, and their mean absolute error (a global, acquisition-driven
    failure shows here; a lesion painted over does not)."""
    where = case["brain"] & (case["seg"] == 0)
    return {"event_fraction": float((local_error(case)[where] > event_threshold).mean()),
            "mae": float(np.abs(case["pred"] - case["truth"])[where].mean()), "kind": str(case["kind"])}


def raw_maps(case: dict, sigma: float) -> dict[str, np.ndarray]:
    brain = case["brain"]
    maps = {"ood": case["ood"], "variance": case["variance"], "spread": np.abs(case["pred"] - case["second"]),
            "cycle": np.abs(case["source"] - case["back"])}
    out = {}
    for name, m in maps.items():
        m = np.where(brain, m, 0).astype(np.float32)
        out[name] = gaussian_filter(m, sigma) if is_smoothed(sigma) else m
    # per-volume self-calibration (as section 9's OOD map): the volume's own brain median and MAD
    # remove a level that differs from subject to subject (added after the first test readout,
    # which showed the cycle residual's healthy calibration not transferring; chosen on val as the rest).
    # cycle_self is the product's cycle detector map (detectors/risk.detector_volumes), checked in tests.
    for name in ("cycle", "variance"):
        out[f"{name}_self"] = self_standardise(out[name], brain)
    return out


def product_maps(case: dict) -> dict[str, np.ndarray]:
    """The raw detector maps the product's risk calibration takes for this case (the robust OOD map
    once the robust-ood stage has run)."""
    maps = {"ood": case["ood"], "variance": case["variance"],
            "cycle": cycle_residual(case["source"], case["back"], case["brain"])}
    if "ood_robust" in case:
        maps["ood_robust"] = case["ood_robust"]
    return maps


#: the OOD maps a risk can combine: the bank's own and the acquisition-robust one
OOD_MAPS = ("ood", "ood_robust")


def with_ood(detectors: tuple[str, ...], ood: str) -> tuple[str, ...]:
    """``detectors`` with ``ood`` in the place of whichever OOD map they combine."""
    return tuple(ood if name in OOD_MAPS else name for name in detectors)


def refit(like: RiskCalibration, healthy: list[dict], detectors: tuple[str, ...] | None = None) -> RiskCalibration:
    """``like``'s definition (smoothing, combination, standardised maps; its detectors unless
    ``detectors`` is given) fitted on ``healthy`` by the product's code."""
    return fit_on_volumes(((c["brain"], product_maps(c)) for c in healthy), detectors or like.needs, like.smoothing,
                          like.combination, like.standardised, like.combined.false_positive_rate)


class Cdf:
    """Healthy-voxel empirical CDF of one map."""

    def __init__(self, values: np.ndarray):
        self.sorted = np.sort(values.astype(np.float64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.sorted, x, side="right") / len(self.sorted)


def parse_sigma(text: str):
    try:
        return parse_smoothing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: The rule that picks the default on validation, fixed before the held-out cases were collected
#: (the highest AUROC alone ignores how many errors are caught): among the candidates that reach the
#: AUROC goal on validation, the one that catches the most event voxels at 1% healthy false alarms;
#: if none reaches it, the highest validation AUROC.
AUROC_GOAL = 0.90
RULE = (f"among candidates with validation AUROC >= {AUROC_GOAL:g}, the highest validation 'caught' "
        f"(event voxels above the 1%-healthy threshold); if none, the highest validation AUROC")


#: the maps as the product computes them (detectors/risk.py: the cycle residual and the variance are
#: always self-standardised; no second sample). The rule, applied to every candidate, picked
#: a FLAIR -> T1 candidate with the spread of two samples, which would add a fourth sampling pass to
#: every run; the default is chosen among the candidates built from these maps (both are reported).
PRODUCT_MAPS = ("ood", "cycle_self", "variance_self")


def maps_of(candidate: str) -> set[str]:
    """The maps a candidate combines: ``ood+cycle_self @2`` -> {ood, cycle_self}."""
    name = candidate.split(" @")[0]
    name = name[len("fisher("):-1] if name.startswith("fisher(") else name
    return set(name.replace(",", "+").split("+"))


def choose(rows: dict[str, dict]) -> str:
    eligible = [n for n, r in rows.items() if r.get("auroc", 0) >= AUROC_GOAL]
    if eligible:
        return max(eligible, key=lambda n: (rows[n]["caught"], rows[n]["auroc"]))
    return max(rows, key=lambda n: rows[n].get("auroc", -1))


def score(args) -> None:
    val, test = load_cases(args.cache, args.direction, "val"), load_cases(args.cache, args.direction, "test")
    healthy_val = [c for c in val.values() if str(c["kind"]) == "healthy"]
    if not healthy_val:
        raise SystemExit("no healthy validation cases collected")
    event_threshold = float(np.quantile(np.concatenate([local_error(c)[c["brain"]] for c in healthy_val]),
                                        GROSS_ERROR["healthy_quantile"]))
    sigmas = args.sigma
    suffix = (lambda sigma: f" @{smoothing_label(sigma)}") if len(sigmas) > 1 else (lambda sigma: "")
    # candidates per smoothing: raw smoothed maps, calibrated on healthy validation voxels
    cdfs = {}
    for sigma in sigmas:
        healthy_maps = [raw_maps(c, sigma) for c in healthy_val]
        cdfs[sigma] = {n: Cdf(np.concatenate([m[n][c["brain"]] for m, c in zip(healthy_maps, healthy_val)]))
                       for n in RAW}
    # the product's risk map (its own calibration file, fitted by calibrate-risk) and an earlier one to compare
    products = {"risk (shipped)": RiskCalibration.load(MODELS_ROOT / args.direction / "risk_calibration.json")}
    if args.compare_calibration:
        products[f"risk ({args.compare_calibration.stem})"] = RiskCalibration.load(args.compare_calibration)

    def candidates(case):
        out = {}
        for sigma in sigmas:
            raw = raw_maps(case, sigma)
            p = {n: cdfs[sigma][n](raw[n]) for n in RAW}
            named = dict(p)
            for i, a in enumerate(RAW):
                for b in RAW[i + 1:]:
                    named[f"{a}+{b}"] = np.maximum(p[a], p[b])
            named["ood+spread+cycle"] = np.maximum.reduce([p["ood"], p["spread"], p["cycle"]])
            # Fisher's combination (sum of -log(1 - p)): several moderately unusual maps count as much as
            # one very unusual map, where the maximum hears only the loudest
            for group in (("ood", "cycle_self"), ("ood", "variance_self"), ("cycle_self", "variance_self"),
                          ("ood", "cycle_self", "variance_self")):
                named[f"fisher({','.join(group)})"] = combine([p[n] for n in group], "fisher")
            out.update({name + suffix(sigma): volume for name, volume in named.items()})
        for label, calibration in products.items():
            out[label] = risk_volume(calibration, product_maps(case), case["brain"])
        return out

    brain_scores: dict[int, dict[str, np.ndarray]] = {}  # id(case) -> candidate -> brain voxels (computed once)
    band: dict[int, dict[str, float]] = {}

    def scores_of(case):
        if id(case) not in brain_scores:
            cand = candidates(case)
            brain_scores[id(case)] = {n: v[case["brain"]] for n, v in cand.items()}
            if str(case["kind"]) == "tumour":
                band[id(case)] = {n: z_highpass_ratio(v, case["brain"]) for n, v in cand.items()}
        return brain_scores[id(case)]

    names = list(scores_of(healthy_val[0]))
    # thresholds flagging 1% of healthy validation voxels, per candidate
    thresholds = {n: float(np.quantile(np.concatenate([scores_of(c)[n] for c in healthy_val]),
                                       1 - HEALTHY_FALSE_ALARMS)) for n in names}

    def evaluate(cases: dict) -> dict:
        for c in tqdm(cases.values(), desc="candidate maps", unit="case", leave=False):
            scores_of(c)
        tumour = {k: c for k, c in cases.items() if str(c["kind"]) == "tumour"}
        healthy = {k: c for k, c in cases.items() if str(c["kind"]) == "healthy"}
        labels, per_case = {}, {n: {} for n in names}
        for key, c in tumour.items():
            labels[key] = local_error(c)[c["brain"]] > event_threshold
            for n in names:
                if 0 < labels[key].mean() < 1:
                    per_case[n][key] = float(roc_auc_score(labels[key], scores_of(c)[n]))
        y = np.concatenate(list(labels.values())) if labels else np.zeros(0, bool)
        result = {"tumour_cases": len(tumour), "healthy_cases": len(healthy), "cases": sorted(cases),
                  "event_fraction": float(y.mean()) if len(y) else float("nan"),
                  "event_in_tumour": float(np.mean(np.concatenate(
                      [(c["seg"][c["brain"]] > 0)[labels[k]] for k, c in tumour.items()]))) if tumour else float("nan"),
                  "error_banding": float(np.mean([z_highpass_ratio(local_error(c), c["brain"]) for c in tumour.values()]))
                  if tumour else float("nan"),
                  "candidates": {}}
        rng = np.random.default_rng(0)
        for n in names:
            s = np.concatenate([scores_of(c)[n] for c in tumour.values()]) if tumour else np.zeros(0)
            row = {"threshold": thresholds[n]}
            if len(y) and 0 < y.mean() < 1:
                row["auroc"] = float(roc_auc_score(y, s))
                row["auprc"] = float(average_precision_score(y, s))
                row["caught"] = float((s[y] > thresholds[n]).mean())
                values = np.array(list(per_case[n].values()))
                boots = values[rng.integers(0, len(values), (2000, len(values)))].mean(1)
                row["case_auroc"] = [float(values.mean()), *map(float, np.percentile(boots, [2.5, 97.5]))]
                row["banding"] = float(np.mean([band[id(c)][n] for c in tumour.values()]))
            if healthy:
                row["healthy_flagged"] = float(np.mean(np.concatenate(
                    [scores_of(c)[n] > thresholds[n] for c in healthy.values()])))
            if n in products:  # also at the product's own threshold, risk >= 0.99
                own = 1 - products[n].combined.false_positive_rate
                if len(y) and 0 < y.mean() < 1:
                    row["caught_at_own_threshold"] = float((s[y] >= own).mean())
                if healthy:
                    row["healthy_flagged_at_own_threshold"] = float(np.mean(np.concatenate(
                        [scores_of(c)[n] >= own for c in healthy.values()])))
            result["candidates"][n] = row
        if len(products) == 2 and all(per_case[n] for n in products):  # the shipped map against the earlier one
            new, old = (np.array([per_case[n][k] for k in sorted(per_case[n])]) for n in products)
            boots = (new - old)[rng.integers(0, len(new), (2000, len(new)))].mean(1)
            result["shipped_minus_compared_case_auroc"] = [float((new - old).mean()),
                                                           *map(float, np.percentile(boots, [2.5, 97.5]))]
        return result

    result = {"direction": args.direction, "sigma": [smoothing_label(s) for s in sigmas],
              "event_threshold": event_threshold, "command": "python " + " ".join(sys.argv), "rule": RULE,
              "val": evaluate(val), "test": evaluate(test)}
    rows = {n: r for n, r in result["val"]["candidates"].items() if n not in products}
    chosen = choose({n: r for n, r in rows.items() if maps_of(n) <= set(PRODUCT_MAPS)})
    result["chosen_on_val"], result["chosen_on_val_any_candidate"] = chosen, choose(rows)
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
                                  f"{tumour_test[0]}, {args.direction}"))
    for split in ("val", "test"):
        r = result[split]
        print(f"{split}: {r['tumour_cases']} tumour + {r['healthy_cases']} healthy cases, event fraction "
              f"{r['event_fraction']:.4f}, in tumour {r['event_in_tumour']:.2f}, error banding {r['error_banding']:.2f}")
        for n, row in r["candidates"].items():
            print(f"  {n:>22}: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in row.items() if k != "threshold"))
    print("chosen on validation:", chosen, "(among every candidate:", result["chosen_on_val_any_candidate"], ")",
          "seconds:", result["seconds"])


def shift(args) -> None:
    """The product's risk map (the shipped calibration, at its own threshold risk >= 0.99) on
    acquisition-shifted test variants: the event threshold comes from the in-domain healthy
    validation cases of ``--cache`` (the acquisition changes the input, not what counts as a gross
    error); per variant the event AUROC over the tumour cases' brain, the event voxels caught and the
    healthy brain flagged, and the gate's typical OOD probability (its "map unreliable" reading); per
    case (``case_errors``) how wrong the translation is outside the tumour (:func:`off_tumour_error`)."""
    from localdiffusion.detectors.input_gate import UNRELIABLE_TYPICAL, typical_probability

    healthy_val = [c for c in load_cases(args.cache, args.direction, "val").values() if str(c["kind"]) == "healthy"]
    if not healthy_val:
        raise SystemExit(f"no healthy validation cases in {args.cache / args.direction}")
    event_threshold = float(np.quantile(np.concatenate([local_error(c)[c["brain"]] for c in healthy_val]),
                                        GROSS_ERROR["healthy_quantile"]))
    shipped = RiskCalibration.load(MODELS_ROOT / args.direction / "risk_calibration.json")
    # the shipped map, and when the robust-ood stage has run: the same definition refitted on the
    # benchmark's healthy validation cases with the bank's OOD map and with the robust one in its place
    # (a like-for-like comparison of the OOD input alone)
    maps = {"risk (shipped)": shipped}
    variants = {folder: load_cases(folder, args.direction, args.split) for folder in args.variants}
    if all("ood_robust" in c for c in healthy_val + [c for cases in variants.values() for c in cases.values()]):
        for key in OOD_MAPS:
            maps[f"risk refitted on val, {key}"] = refit(shipped, healthy_val, with_ood(shipped.needs, key))
    result = {"direction": args.direction, "event_threshold": event_threshold,
              "threshold": 1 - shipped.combined.false_positive_rate, "command": "python " + " ".join(sys.argv),
              "variants": {}, "case_errors": {}}
    for folder, cases in variants.items():
        result["case_errors"][folder.name] = {name: off_tumour_error(c, event_threshold) for name, c in cases.items()}
        rows = {}
        for label, calibration in maps.items():
            own = 1 - calibration.combined.false_positive_rate
            y, s, healthy, typical, per_case = [], [], [], [], []
            for c in tqdm(cases.values(), desc=folder.name, unit="case", leave=False):
                brain = c["brain"]
                risk = risk_volume(calibration, product_maps(c), brain)[brain]
                typical.append(typical_probability(c["ood"], brain))
                if str(c["kind"]) == "healthy":
                    healthy.append(risk >= own)
                    continue
                event = local_error(c)[brain] > event_threshold
                y.append(event), s.append(risk)
                per_case.append(float(roc_auc_score(event, risk)) if 0 < event.mean() < 1 else float("nan"))
            row = {"tumour_cases": len(y), "healthy_cases": len(healthy),
                   "typical_ood": [float(v) for v in typical],
                   "unreliable_cases": int(sum(v > UNRELIABLE_TYPICAL for v in typical))}
            if y:
                yy, ss = np.concatenate(y), np.concatenate(s)
                row.update(event_fraction=float(yy.mean()), auroc=float(roc_auc_score(yy, ss)),
                           auprc=float(average_precision_score(yy, ss)), caught=float((ss[yy] >= own).mean()),
                           case_auroc=per_case)
            if healthy:
                row["healthy_flagged"] = float(np.mean(np.concatenate(healthy)))
            rows[label] = row
            print(folder.name, label, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        result["variants"][folder.name] = rows
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def figure(case: dict, error: np.ndarray, event_threshold: float, maps: dict, title: str):
    """Axial, coronal and sagittal views through the tumour centre: the translation with the event
    outlined, the local error, and each map with its 1%-healthy threshold outlined."""
    brain = case["brain"]
    where = case["seg"] > 0 if (case["seg"] > 0).any() else brain
    centre = [int(np.round(np.mean(ax))) for ax in np.nonzero(where)]
    event = (error > event_threshold) & brain
    rows = [PlaneRow("translation + event", case["pred"], outline=event),
            PlaneRow("local error (3x3x3 mean)", error, "magma", 0.0, 2 * event_threshold, event)]
    # each map's colour runs from the brain median to its 1%-healthy threshold (a Fisher score is not a
    # probability, so a fixed 0-1 range would saturate it): yellow = flagged, the same scale for every map
    rows += [PlaneRow(name, np.where(brain, m, 0), "viridis", float(np.median(m[brain])), t, (m > t) & brain)
             for name, (m, t) in maps.items()]
    return plane_grid(rows, centre, title + " (red: event / above the 1%-healthy threshold; colour: brain "
                                            "median to that threshold)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--data", nargs="+", required=True)
    c.add_argument("--split", required=True, choices=["val", "test"])
    c.add_argument("--max-cases", type=int, default=None)
    c.add_argument("--first-case", type=int, default=0, help="skip this many cases of each kind (a held-out set)")
    c.add_argument("--kind", nargs="+", choices=["healthy", "tumour"], default=["healthy", "tumour"])
    c.add_argument("--no-spread", action="store_true", help="skip the second sample (the shift stage needs none)")
    h = sub.add_parser("shift", help="the product's risk map on acquisition-shifted variants")
    h.add_argument("--variants", type=Path, nargs="+", required=True,
                   help="caches collected from data/shift/<variant> (one folder per variant, named after it)")
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--split", choices=["val", "test"], default="test",
                   help="the variants' cases to score (val: the in-domain validation cases of --cache, for a choice)")
    r = sub.add_parser("robust-ood", help="the robust OOD probability of cached cases, saved beside them")
    r.add_argument("--caches", type=Path, nargs="+", default=[CACHE])
    r.add_argument("--split", choices=["val", "test"], default=None)
    r.add_argument("--calibration", type=Path, default=None,
                   help="another robust calibration than the shipped one (e.g. `ood calibrate-robust --bias-correct "
                        "on` of a copy of the bank); delete the sidecars of the previous one first")
    s = sub.add_parser("score")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--sigma", type=parse_sigma, nargs="+", default=[1.0],
                   help="Gaussian smoothing of every map, voxels: one value or x,y,z; several make a grid "
                        "(candidate names then end in @sigma)")
    s.add_argument("--png", type=Path, default=None, help="three planes of the first tumour test case")
    s.add_argument("--compare-calibration", type=Path, default=None,
                   help="an earlier risk_calibration.json scored beside the shipped one (e.g. 0.6.0's)")
    for p in (c, s, h, r):
        p.add_argument("--direction", default="t1_to_flair", choices=list(DIRECTIONS))
        p.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    {"collect": collect, "score": score, "shift": shift, "robust-ood": robust_ood}[args.stage](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
