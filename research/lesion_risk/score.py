"""Score the risk-map candidates of research/lesion_risk/README.md on a cache written by ``collect``::

    python -m research.lesion_risk.score --direction t1_to_flair --fit data/lesion_risk --split val \
        --out research/results/lesion_risk_val_t1_to_flair.json
    python -m research.lesion_risk.score --direction t1_to_flair --fit data/lesion_risk --split test \
        --cache data/lesion_risk_test --out research/results/lesion_risk_test_t1_to_flair.json

``--fit``: the cache whose healthy validation cases set the gross-error level and the refitted calibrations;
``--cache``: the cases scored (default: the same). Per candidate, pooled and per family and T1 kind: lesions,
misrepresented lesions, those flagged, tumour gross-error voxels flagged, healthy brain flagged on the tumour
cases and on the healthy cases, voxel AUROC; 95% bootstrap intervals over subjects. ``--write-calibration``
saves a candidate's refitted calibration (``NAME=PATH``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from localdiffusion.data.io import atomic_path
from localdiffusion.detectors.regions import grow_flagged
from localdiffusion.detectors.risk import (RiskCalibration, apply_growth, confident_components, detector_volumes,
                                          risk_definition)
from localdiffusion.shipped import LESION_MODELS, MODELS_ROOT

from research.lesion_risk.yardstick import CaseScore, error_map, error_threshold, score_case

CANDIDATES = ("shipped", "fisher-refit", "max-refit", "max-located-refit")
#: round 2, added after round 1's validation figures (README): max-located-refit, and the OOD map's own confident
#: components grown to their hysteresis region (every voxel of OOD probability >= low connected to one >= 0.99)
#: flagged outright
ROUND2 = ("grow-0.5", "grow-0.8", "grow-0.9")
#: round 3, added after round 2 (README): max-located-refit, and every component (26) of the OOD map's confident
#: voxels (probability >= 0.99) of at least 0.5 / 1 / 2 ml flagged outright, so that one confident detector speaks
#: at its own resolution instead of through the smoothed, refitted maximum
ROUND3 = ("confident-0.5ml", "confident-1ml", "confident-2ml")
#: round 4, added after round 3 (README): per-volume self-calibration, every volume's own top 1% of brain voxels
#: by the max-located-refit risk (ranked within the volume), alone and with the confident components of round 3
ROUND4 = ("self-1pct", "self-1pct-confident-2ml")
#: round 5, added after round 4 (README): the source contrast's tumour U-Net (the product's ``tumour`` detector) as
#: one more detector, alone (smoothed as the shipped map, or raw) or in the maximum with max-located-refit's
#: detectors, each also with round 3's confident components
ROUND5_BASES = ("tumour-refit", "tumour-raw-refit", "max-located-tumour-refit")
ROUND5 = ROUND5_BASES + tuple(f"{n}-confident-2ml" for n in ROUND5_BASES)
#: round 9, added after round 8's test (README): the U-Net's map, smoothed or raw, with every CDF fitted on the healthy
#: brain of every validation scan (the healthy subjects' brain and the tumour subjects' brain outside the lesion
#: labels), so that the threshold also holds next to a lesion
ROUND9 = ("tumour-refit-tc", "tumour-raw-refit-tc")
ROUNDS = {1: (), 2: ROUND2, 3: ROUND2 + ROUND3, 4: ROUND2 + ROUND3 + ROUND4, 5: ROUND2 + ROUND3 + ROUND4 + ROUND5}
ROUNDS[9] = ROUNDS[5] + ROUND9
#: round 10, added after round 9's test (README): round 9's tumour-refit-tc with its flagged regions grown by
#: hysteresis (the product's ``apply_growth``) through the risk >= 0.98 / 0.95, or through the U-Net's raw
#: probability >= 0.5 / 0.25
ROUND10_GROWTH = {"tumour-refit-tc-grow-0.98": ("risk", 0.98), "tumour-refit-tc-grow-0.95": ("risk", 0.95),
                  "tumour-refit-tc-seg-0.5": ("tumour", 0.5), "tumour-refit-tc-seg-0.25": ("tumour", 0.25)}
ROUNDS[10] = ROUNDS[9] + tuple(ROUND10_GROWTH)
#: where collect's cohorts live (a cache file is named ``<cohort folder>_<case>.npz``)
COHORTS_ROOT = Path("data")
MAX_HEALTHY_ON_TUMOUR = 0.015


def load_cache(folder: Path, split: str | None = None) -> list[dict]:
    """The cached cases in ``folder`` (only those of ``split`` when given; the others are not read)."""
    cases = []
    for path in sorted(folder.glob("*.npz" if split is None else f"*_{split}_*.npz")):
        with np.load(path) as data:
            case = {k: data[k] for k in data.files if k != "meta"}
            case["meta"] = json.loads(str(data["meta"]))
        case["brain"] = case["brain"].astype(bool)
        name = path.stem
        case["kind"] = "spin_echo" if "spin_echo" in name else "mprage"
        case["family"] = next(f for f in ("glioma", "metastasis", "ms", "cavity") if f"_{f}_" in name)
        case["healthy"] = "_h0" in name
        case["name"] = name
        cases.append(case)
    return cases


def gross_error_level(healthy_cases: list[dict], translation: str = "local") -> float:
    """The yardstick's gross-error level (:func:`error_threshold`) on the cached healthy validation cases'
    ``translation`` (the cached Local Diffusion output, or ``baseline``)."""
    return error_threshold([error_map(c[translation], c["truth"], c["brain"], c["seg"], c["meta"]["spacing_mm"])[c["brain"]]
                            for c in healthy_cases])


#: the tumour U-Net folder per source contrast that ``source_tumour`` reads instead of the shipped one
#: (``--segmenter``; round 6)
SEGMENTER_OVERRIDE: dict[str, Path] = {}


#: (calibration file name, lesion detector) -> the U-Net folder that detector reads for that file
#: (``--calibration-segmenter``: a previous version's file scored with that version's U-Nets, or a candidate U-Net)
CALIBRATION_SEGMENTER: dict[tuple[str, str], Path] = {}


def parse_calibration_segmenters(items: list[str]) -> dict[tuple[str, str], Path]:
    """``["0.23.0=runs/a", "new:wm_lesion=runs/b"]`` -> {("0.23.0", "tumour"): runs/a, ("new", "wm_lesion"): runs/b}
    (``--calibration-segmenter``); SystemExit for anything else."""
    chosen = {}
    for item in items:
        key, _, folder = item.partition("=")
        name, _, detector = key.partition(":")
        if not name or not folder or detector and detector not in LESION_MODELS:
            raise SystemExit(f"--calibration-segmenter {item!r}: NAME[:DETECTOR]=DIR, DETECTOR one of "
                             f"{list(LESION_MODELS)}")
        chosen[name, detector or "tumour"] = Path(folder)
    return chosen


@functools.lru_cache(maxsize=4)
def _segmenter(contrast: str, folder: Path | None = None, detector: str = "tumour"):
    """The lesion U-Net in ``folder``, or of ``contrast`` (the product's ``detector``, the shipped
    ``lesion_<contrast>`` or ``wm_lesion_<contrast>``, unless ``--segmenter`` names another ``tumour`` U-Net),
    loaded once."""
    from localdiffusion.network.segmenter import load_segmenter
    from localdiffusion.shipped import lesion_model_dir

    default = lesion_model_dir(MODELS_ROOT, contrast, detector)
    return load_segmenter(folder or (SEGMENTER_OVERRIDE.get(contrast, default) if detector == "tumour" else default))


def source_tumour(case: dict, folder: Path | None = None, detector: str = "tumour") -> np.ndarray:
    """The product's ``tumour`` detector (or another lesion U-Net's, ``detector``) on the case's source volume (the
    U-Net in ``folder``, by default the shipped one of the source contrast or ``--segmenter``'s, on the job's
    working grid); computed once per case and U-Net."""
    key = detector if folder is None else f"{detector}@{folder}"
    if key not in case:
        from localdiffusion.detectors.given import lesion_probability
        from localdiffusion.jobs.inputs import prepare_input
        from localdiffusion.options import DIRECTIONS

        source = DIRECTIONS[case["meta"]["direction"]][0]
        segmenter = _segmenter(source, folder, detector)
        cohort, name = case["name"][:-len(case["meta"]["case"]) - 1], case["meta"]["case"]
        prepared = prepare_input(COHORTS_ROOT / cohort / case["family"] / name / f"{name}_{source}.nii.gz", source,
                                 case["meta"]["spacing_mm"], case["brain"].shape[:2])
        if prepared.brain.shape != case["brain"].shape or not np.array_equal(prepared.brain, case["brain"]):
            raise ValueError(f"{case['name']}: the source's working grid differs from the cached one")
        case[key] = lesion_probability(segmenter, prepared)  # the product's map, on a U-Net of any grid
    return case[key]


def detector_maps(case: dict, shipped: RiskCalibration, located: bool, tumour: str = "") -> dict[str, np.ndarray]:
    """The candidate's detector maps as its CDFs read them (the cached ones, plus the written OOD map; with
    ``tumour`` "with" also the tumour U-Net's, smoothed as the shipped map; "only"/"raw": that one alone,
    smoothed / unsmoothed)."""
    brain = case["brain"]
    if tumour in ("only", "raw"):
        smoothing = shipped.smoothing if tumour == "only" else 0.0
        return detector_volumes({"tumour": case["tumour"]}, brain, smoothing)
    maps = {name: case[f"detector_{name}"] for name in shipped.detectors if f"detector_{name}" in case}
    if located:
        maps.update(detector_volumes({"ood_located": case["ood"]}, brain, shipped.smoothing))
    if tumour == "with":
        maps.update(detector_volumes({"tumour": case["tumour"]}, brain, shipped.smoothing))
    return maps


#: round 5's bases: name -> (located, tumour) as detector_maps reads them
ROUND5_MAPS = {"tumour-refit": (False, "only"), "tumour-raw-refit": (False, "raw"),
               "max-located-tumour-refit": (True, "with")}


def refit(cases: list[dict], shipped: RiskCalibration, combination: str, located: bool, tumour: str = ""
          ) -> RiskCalibration:
    """Every CDF of the candidate fitted on the cases' healthy brain voxels (brain outside the lesion labels: all
    of a healthy case's brain)."""
    pooled: dict[str, list] = {}
    for case in cases:
        for name, volume in detector_maps(case, shipped, located, tumour).items():
            pooled.setdefault(name, []).append(volume[case["brain"] & (case["seg"] == 0)])
    fitted_on = ("validation scans of the phantom's lesion families (MPRAGE-like and spin-echo-like T1, 1.5 and "
                 "3 T), their brain outside the lesion labels: " + ", ".join(c["name"] for c in cases))
    fpr = shipped.combined.false_positive_rate
    smoothing = 0.0 if tumour == "raw" else shipped.smoothing
    definition = risk_definition(tuple(pooled), smoothing, combination, shipped.standardised, fpr, fitted_on)
    return RiskCalibration.fit({k: np.concatenate(v) for k, v in pooled.items()}, fpr, shipped.last_k, shipped.rods,
                               shipped.steps, smoothing, definition, combination, shipped.standardised)


def grown(probability: np.ndarray, brain: np.ndarray, low: float, high: float = 0.99) -> np.ndarray:
    """Every voxel of ``probability >= low`` connected (26) to one ``>= high``, inside the brain (the product's
    hysteresis, ``grow_flagged``)."""
    inside = np.where(brain, probability, 0.0)
    return grow_flagged(inside, (inside >= low) & brain, high) >= high


def with_confident(case: dict, risk: np.ndarray, min_ml: float) -> np.ndarray:
    """``risk`` with the cached OOD map's confident components of at least ``min_ml`` set to 1 (the product's
    ``confident_components``, as ``risk_volumes`` applies it)."""
    spacing = case["meta"]["spacing_mm"]
    return np.where(confident_components(case["ood"], case["brain"], min_ml, spacing ** 3 / 1000.0), 1.0, risk)


def risk_of(case: dict, name: str, calibrations: dict[str, RiskCalibration], shipped: RiskCalibration) -> np.ndarray:
    if name == "shipped":  # the calibration the cache was collected with, on the cached detector maps
        maps = detector_maps(case, shipped, False)
        return np.where(case["brain"], shipped.risk(maps), 0.0).astype(np.float32)
    if name in ROUND10_GROWTH:
        risk = risk_of(case, "tumour-refit-tc", calibrations, shipped)
        return apply_growth(risk, ROUND10_GROWTH[name], {"tumour": case["tumour"]}, case["brain"]).astype(np.float32)
    base = name.removesuffix("-confident-2ml")  # a round-5 map (its -tc fit: round 9), with the components or not
    if base.removesuffix("-tc") in ROUND5_MAPS:
        located, tumour = ROUND5_MAPS[base.removesuffix("-tc")]
        risk = np.where(case["brain"], calibrations[base].risk(detector_maps(case, shipped, located, tumour)), 0.0)
        return (with_confident(case, risk, 2.0) if name != base else risk).astype(np.float32)
    if name in calibrations and name not in ("fisher-refit", "max-refit", "max-located-refit"):  # a file
        calibration = calibrations[name]
        maps = detector_maps(case, shipped, "ood_located" in calibration.detectors)
        # every lesion U-Net the file reads, computed here with the file's own smoothing (the product's folders,
        # LESION_MODELS, unless --calibration-segmenter names another for this file)
        raw = {detector: source_tumour(case, CALIBRATION_SEGMENTER.get((name, detector)), detector)
               for detector in LESION_MODELS if detector in calibration.needs}
        maps.update(detector_volumes(raw, case["brain"], calibration.smoothing))
        risk = calibration.risk(maps)
        if calibration.confident_ml is not None:  # as the product's risk_volumes, on the cached raw OOD map
            risk = with_confident(case, risk, calibration.confident_ml)
        risk = np.where(case["brain"], risk, 0.0)
        if calibration.grow is not None:  # as the product's risk_volumes, through the raw map
            risk = apply_growth(risk, calibration.grow, raw, case["brain"])
        return risk.astype(np.float32)
    if name.startswith("grow-"):
        risk = risk_of(case, "max-located-refit", calibrations, shipped)
        return np.where(grown(case["ood"], case["brain"], float(name.split("-")[1])), 1.0, risk).astype(np.float32)
    if name.startswith("self-1pct"):
        risk = risk_of(case, "max-located-refit", calibrations, shipped)
        brain = case["brain"]
        ranked = np.zeros(risk.shape, np.float32)  # each brain voxel's rank within its own volume, in [0, 1)
        order = np.argsort(risk[brain], kind="stable")
        ranks = np.empty(order.size, np.float32)
        ranks[order] = np.arange(order.size, dtype=np.float32) / order.size
        ranked[brain] = ranks
        if name.endswith("-confident-2ml"):
            ranked = with_confident(case, ranked, 2.0)
        return ranked.astype(np.float32)
    if name.startswith("confident-"):
        risk = risk_of(case, "max-located-refit", calibrations, shipped)
        return with_confident(case, risk, float(name.split("-")[1].removesuffix("ml"))).astype(np.float32)
    calibration = calibrations[name]
    maps = detector_maps(case, shipped, name.startswith("max-located"))
    return np.where(case["brain"], calibration.risk(maps), 0.0).astype(np.float32)


def bootstrap(values: list[tuple[float, float]], seed: int = 0, n: int = 2000) -> list[float]:
    """95% interval of sum(a) / sum(b) over subjects resampled with replacement."""
    if not values:
        return [float("nan")] * 2
    a, b = np.array(values, float).T
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        if b[idx].sum() > 0:
            ratios.append(a[idx].sum() / b[idx].sum())
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if ratios else [float("nan")] * 2


def paired_difference(a: list[CaseScore], b: list[CaseScore], seed: int = 0, n: int = 2000) -> dict:
    """Candidate ``a`` minus candidate ``b`` on the same tumour subjects (same order): the pooled fractions of
    misrepresented lesions flagged, tumour gross-error voxels flagged and healthy brain flagged, each with a 95%
    interval from resampling subjects with replacement (the same resamples for both candidates)."""
    fields = {"lesions_flagged": ("flagged", "misrepresented"),
              "tumour_errors_flagged": ("tumour_errors_flagged", "tumour_errors"),
              "healthy_flagged": ("healthy_flagged", "healthy")}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(a), len(a)) for _ in range(n)]
    out = {}
    for key, (num, den) in fields.items():
        arrays = {side: np.array([[getattr(s, num), getattr(s, den)] for s in scores], float)
                  for side, scores in (("a", a), ("b", b))}
        ratio = lambda x, idx: x[idx, 0].sum() / max(x[idx, 1].sum(), 1)  # noqa: E731
        every = np.arange(len(a))
        diffs = [ratio(arrays["a"], idx) - ratio(arrays["b"], idx) for idx in draws]
        out[key] = {"difference": float(ratio(arrays["a"], every) - ratio(arrays["b"], every)),
                    "ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}
    return out


def summarise(scores: list[tuple[dict, CaseScore]]) -> dict:
    tumour = [(c, s) for c, s in scores if not c["healthy"]]
    healthy = [(c, s) for c, s in scores if c["healthy"]]
    lesion_pairs = [(s.flagged, s.misrepresented) for _, s in tumour]
    voxel_pairs = [(s.tumour_errors_flagged, s.tumour_errors) for _, s in tumour]
    healthy_pairs = [(s.healthy_flagged, s.healthy) for _, s in tumour]
    events = np.concatenate([s.risk_event for _, s in tumour]) if tumour else np.zeros(0)
    others = np.concatenate([s.risk_other for _, s in tumour]) if tumour else np.zeros(0)
    auroc = (float(roc_auc_score(np.r_[np.ones(events.size), np.zeros(others.size)], np.r_[events, others]))
             if events.size and others.size else float("nan"))
    ratio = lambda pairs: float(sum(a for a, _ in pairs) / max(sum(b for _, b in pairs), 1))  # noqa: E731
    return {"subjects": len(tumour), "healthy_subjects": len(healthy),
            "lesions": int(sum(s.lesions for _, s in tumour)),
            "misrepresented": int(sum(s.misrepresented for _, s in tumour)),
            "misrepresented_flagged": int(sum(s.flagged for _, s in tumour)),
            "lesions_flagged_fraction": ratio(lesion_pairs), "lesions_flagged_ci": bootstrap(lesion_pairs),
            "tumour_errors_flagged": ratio(voxel_pairs), "tumour_errors_flagged_ci": bootstrap(voxel_pairs),
            "healthy_flagged_on_tumour_cases": ratio(healthy_pairs),
            "healthy_flagged_on_tumour_cases_ci": bootstrap(healthy_pairs),
            "healthy_flagged_on_healthy_cases": ratio([(s.healthy_flagged, s.healthy) for _, s in healthy]),
            "voxel_auroc": auroc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.score", description=__doc__.splitlines()[0])
    p.add_argument("--direction", required=True, choices=["t1_to_flair", "flair_to_t1"])
    p.add_argument("--fit", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--write-calibration", nargs="*", default=[], metavar="NAME=PATH")
    p.add_argument("--collected-with", type=Path, default=None,
                   help="the risk calibration the cache was collected with (default: the shipped one); 0.15.0's: "
                        "git show ebc0595:monai_bundle/models/<direction>/risk_calibration.json")
    p.add_argument("--round", type=int, default=1, choices=sorted(ROUNDS),
                   help="N: also the candidates of rounds 2 to N")
    p.add_argument("--translation", default="local", choices=["local", "baseline"],
                   help="the translation the yardstick scores: the cached Local Diffusion output (default) or the "
                        "plain translation, which is what `run` writes where Local Diffusion fuses late")
    p.add_argument("--only", nargs="*", default=None, help="score only these candidates (a test report)")
    p.add_argument("--paired", nargs=2, default=None, metavar=("A", "B"),
                   help="also A minus B on the same tumour subjects, with 95%% intervals (paired_difference)")
    p.add_argument("--calibration", nargs="*", default=[], metavar="NAME=PATH",
                   help="also score these calibration files (e.g. the one the product's calibrate-risk wrote)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="a tumour U-Net folder of the source contrast that the tumour detector reads instead of the "
                        "shipped one (round 6: a retrained U-Net)")
    p.add_argument("--calibration-segmenter", nargs="*", default=[], metavar="NAME[:DETECTOR]=DIR",
                   help="the U-Net a --calibration file's lesion detector reads (DETECTOR: tumour, the default, or "
                        "wm_lesion; default: the shipped one, or --segmenter's for tumour)")
    p.add_argument("--tumour-subjects", nargs="*", default=None, metavar="ID",
                   help="score only the tumour cases whose name ends with one of these (t0003 ...), and every healthy one")
    args = p.parse_args(argv)
    CALIBRATION_SEGMENTER.update(parse_calibration_segmenters(args.calibration_segmenter))
    if args.segmenter is not None:
        from localdiffusion.network.segmenter import load_segmenter

        SEGMENTER_OVERRIDE[load_segmenter(args.segmenter).config.modality] = args.segmenter
    shipped = RiskCalibration.load(args.collected_with or MODELS_ROOT / args.direction / "risk_calibration.json")
    fit_all = load_cache(args.fit / args.direction, "val")
    fit_cases = [c for c in fit_all if c["healthy"]]
    level = gross_error_level(fit_cases, args.translation)
    calibrations = {"fisher-refit": refit(fit_cases, shipped, "fisher", False),
                    "max-refit": refit(fit_cases, shipped, "max", False),
                    "max-located-refit": refit(fit_cases, shipped, "max", True)}
    same = args.split == "val" and args.cache in (None, args.fit)  # the fit's own cases, loaded once
    cases = fit_all if same else load_cache((args.cache or args.fit) / args.direction, args.split)
    if args.tumour_subjects:  # only these tumour subjects (e.g. those no figure has used), every healthy one
        cases = [c for c in cases if c["healthy"] or c["name"].endswith(tuple(args.tumour_subjects))]
    if args.round >= 5:
        for case in fit_cases + cases:
            source_tumour(case)
        for base, (located, tumour) in ROUND5_MAPS.items():
            calibrations[base] = refit(fit_cases, shipped, "max", located, tumour)
    if args.round >= 9:  # every validation scan of the fit cache, its brain outside the lesion labels
        for case in fit_all:
            source_tumour(case)
        for name in ROUND9:
            located, tumour = ROUND5_MAPS[name.removesuffix("-tc")]
            calibrations[name] = refit(fit_all, shipped, "max", located, tumour)
    results, per_case = {}, {}
    for item in args.calibration:
        name, path = item.split("=", 1)
        calibrations[name] = RiskCalibration.load(path)
    candidates = CANDIDATES + ROUNDS[args.round] + tuple(i.split("=", 1)[0] for i in args.calibration)
    if args.only is not None:
        candidates = tuple(n for n in candidates if n in args.only)
    for name in candidates:
        scores = [(c, score_case(c[args.translation], c["truth"], risk_of(c, name, calibrations, shipped), c["brain"], c["seg"],
                                 c["meta"]["spacing_mm"], level)) for c in cases]
        groups = {"all": scores}
        for c, s in scores:
            groups.setdefault(f"{c['family']} {c['kind']}", []).append((c, s))
        results[name] = {group: summarise(rows) for group, rows in groups.items()}
        per_case[name] = [s for c, s in scores if not c["healthy"]]
        pooled = results[name]["all"]
        print(f"{name:18s} lesions flagged {pooled['misrepresented_flagged']}/{pooled['misrepresented']} "
              f"({pooled['lesions_flagged_fraction']:.2f} {pooled['lesions_flagged_ci']}); tumour errors flagged "
              f"{pooled['tumour_errors_flagged']:.3f}; healthy flagged {pooled['healthy_flagged_on_tumour_cases']:.4f} "
              f"(healthy cases {pooled['healthy_flagged_on_healthy_cases']:.4f}); AUROC {pooled['voxel_auroc']:.3f}",
              flush=True)
    eligible = [n for n in candidates if results[n]["all"]["healthy_flagged_on_tumour_cases"] <= MAX_HEALTHY_ON_TUMOUR]
    key = lambda n: (results[n]["all"]["misrepresented_flagged"], results[n]["all"]["tumour_errors_flagged"])  # noqa: E731
    chosen = max(eligible, key=key) if eligible else min(
        candidates, key=lambda n: results[n]["all"]["healthy_flagged_on_tumour_cases"])
    paired = None
    if args.paired:
        a, b = args.paired
        paired = {"a": a, "b": b, **paired_difference(per_case[a], per_case[b])}
        print(f"{a} - {b}: " + "; ".join(f"{k} {v['difference']:+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}]"
                                          for k, v in paired.items() if isinstance(v, dict)))
    if args.split != "val" or args.only is not None:
        chosen = None  # the rule chooses on validation only, among every candidate
    else:
        print(f"chosen by the rule: {chosen}")
    for item in args.write_calibration:
        name, path = item.split("=", 1)
        calibrations[name].save(path)
        print(f"wrote {path}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps({"command": "python -m research.lesion_risk.score " + " ".join(
            sys.argv[1:] if argv is None else argv), "gross_error_level": level,
            "fit_cases": [c["name"] for c in fit_cases], "chosen": chosen, "paired": paired,
            "results": results}, indent=1),
            encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
