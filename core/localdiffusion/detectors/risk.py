"""Per-voxel hallucination-risk map: a calibrated union of the registered detectors.

Holds the per-direction defaults (:data:`RISK_DEFAULTS`), the map preparation (:func:`detector_volumes`),
the combination (:func:`combine`) and :class:`RiskCalibration`, which documents the map.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.ndimage import gaussian_filter

from localdiffusion.data.io import atomic_path
from localdiffusion.detectors.maps import DETECTORS
from localdiffusion.detectors.regions import grow_flagged, large_components
from localdiffusion.errors import InputError
from localdiffusion.methods.rods import RODSConfig
from localdiffusion.ood.anomaly_map import Calibration
from localdiffusion.options import FLAG_THRESHOLD

#: The event the risk map is validated against (research/RECORD.md section 11), recorded in every calibration
#: file: a gross translation error is the absolute error averaged over a cube of
#: ``neighbourhood`` voxels (a voxel and its 2 mm neighbours: acquisition noise does not count)
#: above the ``healthy_quantile`` of that quantity on healthy validation brain voxels.
GROSS_ERROR = {"neighbourhood": 3, "healthy_quantile": 0.999}
#: a Gaussian sigma in voxels: one value, or one per working-grid axis (x, y, z; z is the slice axis)
Smoothing = float | tuple[float, float, float]
#: detector name -> its share of the false-alarm budget in a weighted maximum (:func:`combine`; the shares sum to 1)
Weights = dict[str, float]
#: how a flagged region grows (:func:`apply_growth`): through the voxels of ``map`` at or above ``level``, ``map``
#: being ``"risk"`` (the risk itself) or a detector's raw map
Growth = tuple[str, float]


@dataclass(frozen=True)
class RiskDefault:
    """What ``calibrate-risk`` fits for a direction unless told otherwise."""

    detectors: tuple[str, ...]
    smoothing: Smoothing
    combination: str
    confident_ml: float | None = None  # see RiskCalibration.confident_ml
    grow: Growth | None = None  # see RiskCalibration.grow
    weights: Weights | None = None  # see RiskCalibration.weights


#: The risk map each direction ships, chosen on the validation lesion families by the lesion yardstick of
#: research/lesion_risk. Both read the source contrast's lesion U-Nets only. T1 -> FLAIR: the weighted maximum of
#: two U-Nets on a 1 mm grid, the pooled lesion U-Net (``tumour``, 80% of the false-alarm budget) and one trained on
#: small white-matter lesions (``wm_lesion``, 20%), their probabilities unsmoothed, the level fitted on the healthy
#: validation scans of the families (1.5 and 3 T, both native T1 kinds). FLAIR -> T1: the pooled 2 mm U-Net's
#: probability smoothed by a Gaussian of sigma 1 voxel, the level fitted on the families' validation scans, healthy
#: and lesion ones, each lesion scan outside its lesion labels (``calibrate-risk --lesion-cases``). Neither needs a
#: back-translation.
RISK_DEFAULTS = {"t1_to_flair": RiskDefault(("tumour", "wm_lesion"), 0.0, "max",
                                            weights={"tumour": 0.8, "wm_lesion": 0.2}),
                 "flair_to_t1": RiskDefault(("tumour",), 1.0, "max")}
#: the detector whose confident components a calibration with ``confident_ml`` flags outright: the location-aware
#: OOD map ``run`` writes (a probability calibrated on healthy validation voxels by the OOD bank)
CONFIDENT_DETECTOR = "ood_located"
#: a direction nobody measured (a user's own model): the maps every model yields without a reverse model
UNMEASURED_DEFAULT = RiskDefault(("ood", "variance"), 1.0, "fisher")


def risk_default(direction: str) -> RiskDefault:
    return RISK_DEFAULTS.get(direction, UNMEASURED_DEFAULT)


def parse_smoothing(text: str) -> Smoothing:
    """``"1"`` -> 1.0, ``"1,1,3"`` -> (1.0, 1.0, 3.0); ValueError for anything else."""
    try:
        parts = [float(v) for v in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 3) or min(parts) < 0:
        raise ValueError(f"smoothing {text!r}: one sigma or three (x,y,z), each >= 0 voxels")
    return parts[0] if len(parts) == 1 else tuple(parts)


def is_smoothed(smoothing: Smoothing) -> bool:
    return bool(np.any(np.asarray(smoothing) > 0))


def smoothing_label(smoothing: Smoothing) -> str:
    """``1`` or ``1,1,3``: the form :func:`parse_smoothing` reads."""
    return ",".join(f"{v:g}" for v in smoothing) if isinstance(smoothing, tuple) else f"{smoothing:g}"


#: how the detectors' probabilities make one score (:func:`combine`)
COMBINATIONS = ("max", "fisher")


def combine(parts: list[np.ndarray], how: str, weights: list[float] | None = None) -> np.ndarray:
    """One score from per-detector healthy-calibrated probabilities.

    ``max``: the most unusual map decides; ``fisher``: Fisher's method, ``sum(-log(1 - p))`` (two
    moderately unusual maps count as much as one very unusual one). Either is calibrated again on
    healthy voxels afterwards.

    With ``weights`` (``max`` only), the weighted maximum: p-value weighting (Genovese, Roeder and Wasserman,
    Biometrika 2006), each detector's healthy tail ``1 - p_i`` divided by its weight ``w_i``, the score
    ``max_i 1 - (1 - p_i) / w_i``. Calibrated again on healthy voxels at a fraction ``a``, detector ``i`` flags
    where its own healthy tail is at most ``w_i`` times a common level: the weights share the false-alarm budget
    between the detectors (equal weights rank as the plain maximum).

    Args:
        parts: arrays of one shape, probabilities in [0, 1].
        how: ``max`` or ``fisher``.
        weights: one positive weight per part, summing to 1 (None: unweighted).
    Returns:
        the combined raw score, that shape.
    """
    if weights is not None:
        if how != "max" or len(weights) != len(parts) or min(weights) <= 0:
            raise ValueError(f"weights need the maximum and one positive weight per detector, got {how!r}, "
                             f"{len(weights)} weights for {len(parts)} maps")
        parts = [1 - (1 - np.asarray(p, np.float32)) / np.float32(w) for p, w in zip(parts, weights)]
    if how == "max":
        return np.maximum.reduce(parts)
    if how == "fisher":
        return sum(-np.log1p(-np.minimum(np.asarray(p, np.float64), 1 - 1e-6)) for p in parts).astype(np.float32)
    raise ValueError(f"unknown combination {how!r}; known: {COMBINATIONS}")


def parse_weights(items: Iterable[str], detectors: tuple[str, ...]) -> Weights:
    """``["tumour=0.8", "wm_lesion=0.2"]`` -> {"tumour": 0.8, "wm_lesion": 0.2}: one positive weight for every one of
    ``detectors``, normalised to sum 1; ValueError for anything else."""
    weights = {}
    for item in items:
        name, _, value = str(item).partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: DETECTOR=WEIGHT, the weight a number") from None
    return normalised_weights(weights, detectors)


def normalised_weights(weights: dict[str, float], detectors: tuple[str, ...], combination: str = "max") -> Weights:
    """``weights`` over exactly ``detectors`` of a ``combination`` (weights need the maximum), each positive and
    finite, scaled to sum 1; ValueError otherwise."""
    if combination != "max":
        raise ValueError(f"weights need the maximum, not the {combination!r} combination")
    if not isinstance(weights, dict):
        raise ValueError(f"weights {weights!r}: a detector -> weight table")
    if set(weights) != set(detectors):
        raise ValueError(f"weights for {sorted(weights)}, but the risk combines {list(detectors)}: one weight each")
    values = np.array([weights[name] for name in detectors], np.float64)
    if not np.isfinite(values).all() or values.min() <= 0:
        raise ValueError(f"weights {weights}: each must be a positive number")
    return {name: float(v / values.sum()) for name, v in zip(detectors, values)}


def weights_label(weights: Weights) -> str:
    """``tumour=0.8 wm_lesion=0.2``: the form :func:`parse_weights` reads."""
    return " ".join(f"{name}={w:g}" for name, w in weights.items())


def confident_components(probability: np.ndarray, brain: np.ndarray, min_ml: float, voxel_ml: float,
                         level: float = FLAG_THRESHOLD) -> np.ndarray:
    """Where one detector is sure on its own: the connected components (26-connectivity) of its unsmoothed
    probability at or above ``level`` inside the brain, each of at least ``min_ml``.

    Smoothing and the refitted maximum dilute a small, confident lesion core towards the healthy level; flagged
    outright, the component keeps the detector's own resolution (research/lesion_risk/README.md, round 3).

    Args:
        probability: (X, Y, Z) a healthy-calibrated probability (the location-aware OOD map).
        brain: (X, Y, Z) bool.
        min_ml: the smallest component flagged.
        voxel_ml: the volume of one voxel of that grid.
        level: the probability a voxel needs.
    Returns:
        (X, Y, Z) bool.
    """
    components, keep = large_components((np.asarray(probability) >= level) & brain, voxel_ml, min_ml)
    return np.isin(components, keep)


def parse_growth(text: str) -> Growth | None:
    """``"tumour:0.5"`` -> ("tumour", 0.5), ``"risk:0.95"``, ``"none"`` -> None; ValueError for anything else."""
    if text == "none":
        return None
    name, _, level = str(text).partition(":")
    try:
        value = float(level)
    except ValueError:
        value = -1.0
    if name != "risk" and name not in DETECTORS or not 0 < value < 1:
        raise ValueError(f"growth {text!r}: MAP:LEVEL, MAP 'risk' or a detector ({', '.join(DETECTORS)}), "
                         f"0 < LEVEL < 1, or 'none'")
    return name, value


def growth_label(grow: Growth) -> str:
    """``tumour:0.5``: the form :func:`parse_growth` reads."""
    return f"{grow[0]}:{grow[1]:g}"


def apply_growth(risk: np.ndarray, grow: Growth, maps: dict[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
    """The risk with every flagged region grown by hysteresis (:func:`~localdiffusion.detectors.regions.grow_flagged`)
    through the brain voxels of ``grow``'s map at or above its level: the risk itself, or a detector's raw map
    (e.g. the lesion U-Net's probability: a lesion flagged at its core is flagged over its whole segmentation).

    Args:
        risk: (X, Y, Z) calibrated risk.
        grow: (map, level).
        maps: detector name -> raw (X, Y, Z) map (needed when the map is a detector's).
        brain: (X, Y, Z) bool.
    Returns:
        (X, Y, Z) the grown risk.
    """
    name, level = grow
    lower = (np.asarray(risk if name == "risk" else maps[name]) >= level) & brain
    return grow_flagged(risk, lower)


def risk_definition(detectors: tuple[str, ...], smoothing: Smoothing, combination: str, standardised: tuple[str, ...],
                    false_positive_rate: float, fitted_on: str, confident_ml: float | None = None,
                    grow: Growth | None = None, weights: Weights | None = None) -> dict:
    """The definition a calibration file records: what the risk combines, how it was fitted, and
    the event it is validated against."""
    how = {"max": "the maximum of", "fisher": "Fisher's combination (sum of -log(1 - p)) of"}[combination]
    if weights:
        how = (f"the weighted maximum (each detector's healthy tail 1 - p divided by its share of the budget, "
               f"{weights_label(weights)}) of")
    sigma = smoothing_label(smoothing) + (" voxels (x,y,z; z the slice axis)" if isinstance(smoothing, tuple)
                                          else " voxels")
    standardising = (f", {', '.join(standardised)} then standardised by the volume's own brain median and MAD"
                     if standardised else "")
    extras = (f"; risk 1 on every component of {CONFIDENT_DETECTOR} >= {1 - false_positive_rate:g} (unsmoothed, "
              f"26-connected) of at least {confident_ml:g} ml, which adds to the healthy fraction flagged"
              if confident_ml else "")
    if grow is not None:
        lower = "risk" if grow[0] == "risk" else f"the raw {grow[0]} map"
        extras += (f"; every flagged region then grown through the 26-connected brain voxels of {lower} >= "
                   f"{grow[1]:g} (hysteresis), each grown voxel at its region's largest risk, which adds to the "
                   f"healthy fraction flagged")
    return {"risk": f"risk >= 1 - a flags a fraction a of healthy validation brain voxels (threshold "
                    f"{1 - false_positive_rate:g}: {false_positive_rate:g}); {how} the detectors' "
                    f"healthy-validation CDFs p, each map taken inside the brain and smoothed by a 3D Gaussian of "
                    f"sigma {sigma}{standardising}, the combined score calibrated again on the same healthy voxels"
                    f"{extras}",
            "detectors": {name: DETECTORS[name].description for name in detectors},
            "fitted_on": fitted_on,
            "validated_against": {"event": "gross translation error: |translation - truth| averaged over a "
                                           "cube of `neighbourhood` voxels above the `healthy_quantile` of that "
                                           "quantity on healthy validation brain voxels",
                                  **GROSS_ERROR, "report": "research/RECORD.md section 11"}}


def self_standardise(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``volume`` in units of its own brain spread: (v - median) / (1.4826 MAD) inside the brain, 0 outside."""
    values = volume[brain]
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median)) + 1e-8
    return np.where(brain, (volume - median) / mad, 0).astype(np.float32)


def detector_volumes(maps: dict[str, np.ndarray], brain: np.ndarray, smoothing: Smoothing,
                     names: tuple[str, ...] | None = None, standardised: tuple[str, ...] = ()
                     ) -> dict[str, np.ndarray]:
    """The maps the risk combines, prepared: inside the brain, smoothed, self-standardised if asked.

    Args:
        maps: detector name -> raw (X, Y, Z) map.
        brain: (X, Y, Z) bool.
        smoothing: a 3D Gaussian's sigma in voxels (one value, or x, y, z).
        names: the detectors to take (default: every map given; a missing one is skipped).
        standardised: detectors divided by their own brain spread (:func:`self_standardise`).
    Returns:
        detector name -> (X, Y, Z) float32 map.
    """
    out = {}
    for name in names or tuple(maps):
        if maps.get(name) is None:
            continue
        volume = np.where(brain, maps[name], 0).astype(np.float32)
        if is_smoothed(smoothing):
            volume = gaussian_filter(volume, smoothing)
        if name in standardised:
            volume = self_standardise(volume, brain)
        out[name] = volume
    return out


@dataclass
class RiskCalibration:
    """A direction's calibrated risk map: what it combines, how, and the healthy-validation CDFs.

    Each detector's map (:mod:`~localdiffusion.detectors.maps`: OOD probability, x0-trajectory
    variance, RODS curvature, the cycle residual, ...) is taken inside the brain, smoothed with a
    3D Gaussian of ``smoothing`` voxels (so that single-voxel noise does not count and the map is
    not speckle), standardised by the volume's own brain median and MAD when the calibration lists
    it in ``standardised`` (a new fit lists the detectors that ask for it), and turned into "the probability that a healthy voxel scores lower" with an empirical CDF
    fitted on healthy *validation* data (:class:`~localdiffusion.ood.anomaly_map.Calibration`);
    a map that is already a probability (the OOD map) is taken as it is when it is not smoothed.
    The raw combined score is the maximum over the calibration's detectors (weighted, with ``weights``), or
    Fisher's combination of their probabilities (``combination``); a last calibration
    of that score on the same healthy data gives the risk, so that ``risk >= 1 - a`` flags a
    fraction ``a`` of healthy voxels.

    The calibration file (``<model>/risk_calibration.json``, or ``risk_calibration_ddim<steps>.json`` for another
    step count than the model's, :func:`calibration_name`) holds one CDF per fitted detector
    under its name, the combined CDF, the detectors, the smoothing, the combination and the
    standardised maps, the step count of the
    calibration runs (the risk map is written only for that DDIM step count), the RODS settings
    with their healthy-calibrated ``eps``, and the risk's definition (what it combines, the event
    it was validated against: :data:`GROSS_ERROR`). Fitting it is a job:
    :mod:`localdiffusion.jobs.calibrate`. Files without smoothing, combination or standardised
    maps (OOD + variance + curvature, unsmoothed, maximum) load with those meanings.
    """

    components: dict[str, Calibration]  # detector name -> CDF on healthy validation voxels
    combined: Calibration
    last_k: int = 10
    rods: RODSConfig | None = None  # RODS settings with the healthy-calibrated eps (None: fitted without RODS)
    steps: int | None = None  # DDIM steps of the calibration runs (the variance depends on them)
    detectors: tuple[str, ...] = field(default=())  # detectors combined at fitting time, in order
    smoothing: Smoothing = 0.0  # Gaussian sigma (voxels; one, or x, y, z) applied to every map before its CDF
    definition: dict = field(default_factory=dict)  # what the risk combines and the event it was validated on
    combination: str = "max"  # how the detectors' probabilities make one score (:func:`combine`)
    standardised: tuple[str, ...] = ()  # detectors whose maps are standardised by the volume's own median/MAD
    #: when set, :data:`CONFIDENT_DETECTOR`'s components of at least this many ml are risk 1 (:func:`risk_volumes`)
    confident_ml: float | None = None
    #: when set, every flagged region grows by hysteresis through this map's voxels at or above this level
    #: (:func:`apply_growth`, after the confident components)
    grow: Growth | None = None
    #: when set (``max`` only), the weighted maximum: detector name -> its share of the false-alarm budget
    #: (:func:`combine`)
    weights: Weights | None = None

    def detector_probabilities(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per voxel and detector: the calibration's detectors in ``maps``, each as its healthy-calibrated
        probability (an optional detector this run did not produce is left out)."""
        parts = {}
        for name in self.detectors:
            if maps.get(name) is None:
                if DETECTORS[name].optional:
                    continue
                raise ValueError(f"the risk combines {name!r}, which this run did not produce")
            if name in self.components:
                parts[name] = self.components[name].probability(maps[name])
            elif DETECTORS[name].calibrated:
                parts[name] = np.asarray(maps[name], np.float32)
        return parts

    def combined_score(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Per voxel: :meth:`detector_probabilities` combined into one (uncalibrated) score."""
        named = self.detector_probabilities(maps)
        if not named:
            raise ValueError("no detector map to combine")
        weights = [self.weights[name] for name in named] if self.weights else None
        return combine(list(named.values()), self.combination, weights)

    def risk(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated risk in [0, 1], the shape of the maps."""
        return self.combined.probability(self.combined_score(maps))

    @property
    def needs(self) -> tuple[str, ...]:
        """The detector maps this calibration reads: those it combines (a file that lists none, as the earliest
        did, loads as the OOD map and its fitted components: :meth:`load`), :data:`CONFIDENT_DETECTOR` when it
        flags that map's confident components, and the detector whose raw map its flagged regions grow through."""
        extra = [name for name in (CONFIDENT_DETECTOR if self.confident_ml is not None else None,
                                   self.grow[0] if self.grow is not None else None)
                 if name not in (None, "risk", *self.detectors)]
        return (*self.detectors, *dict.fromkeys(extra))

    @classmethod
    def fit(cls, maps: dict[str, np.ndarray], false_positive_rate: float = 0.01, last_k: int = 10,
            rods: RODSConfig | None = None, steps: int | None = None, smoothing: Smoothing = 0.0,
            definition: dict | None = None, combination: str = "max", standardised: tuple[str, ...] = (),
            confident_ml: float | None = None, grow: Growth | None = None,
            weights: Weights | None = None) -> "RiskCalibration":
        """Fit on healthy validation voxels: ``maps`` detector name -> 1D array (all of one length),
        already through :func:`detector_volumes` with ``smoothing`` and ``standardised``. A calibrated detector keeps its
        probability unless it was smoothed (smoothing changes its distribution, so it gets a CDF too). ``weights``: one
        per detector fitted, normalised to sum 1 (:func:`normalised_weights`)."""
        maps = {k: v for k, v in maps.items() if v is not None}
        detectors = tuple(n for n in DETECTORS if n in maps)
        components = {name: Calibration.fit(maps[name], false_positive_rate)
                      for name in detectors if is_smoothed(smoothing) or not DETECTORS[name].calibrated}
        if combination not in COMBINATIONS:
            raise ValueError(f"unknown combination {combination!r}; known: {COMBINATIONS}")
        if weights is not None:
            weights = normalised_weights(weights, detectors, combination)
        partial = cls(components, None, last_k, detectors=detectors, combination=combination,
                      weights=weights)  # its score only
        combined = Calibration.fit(partial.combined_score(maps), false_positive_rate)
        return cls(components, combined, last_k, rods, steps, detectors, smoothing, dict(definition or {}), combination,
                   tuple(n for n in standardised if n in detectors), confident_ml, grow, weights)

    def save(self, path: str | Path) -> None:
        payload = {"last_k": self.last_k, "steps": self.steps, "detectors": list(self.detectors),
                   "smoothing": list(self.smoothing) if isinstance(self.smoothing, tuple) else self.smoothing,
                   "combination": self.combination,
                   "standardised": list(self.standardised), "confident_ml": self.confident_ml,
                   "grow": growth_label(self.grow) if self.grow is not None else None,
                   "weights": self.weights, "definition": self.definition,
                   "rods": dataclasses.asdict(self.rods) if self.rods is not None else None}
        for name, cal in {**self.components, "combined": self.combined}.items():
            payload[name] = {k: np.asarray(v).tolist() for k, v in cal.as_arrays("c").items()}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "RiskCalibration":
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: risk calibration not found")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            read = lambda name: Calibration.from_arrays({k: np.asarray(v) for k, v in payload[name].items()}, "c")  # noqa: E731
            components = {name: read(name) for name in DETECTORS if name in payload}
            combined = read("combined")
            rods = rods_config_from(payload)
            detectors = tuple(payload.get("detectors") or ["ood", *components])
            unknown = [name for name in detectors if name not in DETECTORS]
            if unknown:
                raise ValueError(f"unknown detectors {unknown}")
            combination = payload.get("combination", "max")
            if combination not in COMBINATIONS:
                raise ValueError(f"unknown combination {combination!r}")
            confident_ml = payload.get("confident_ml")
            if confident_ml is not None and not (isinstance(confident_ml, (int, float)) and 0 < confident_ml < 1e6):
                raise ValueError(f"confident_ml {confident_ml!r}: a positive number of ml")
            grow = parse_growth(str(payload.get("grow") or "none"))
            weights = payload.get("weights")
            if weights is not None:
                weights = normalised_weights(weights, detectors, combination)
            return cls(components, combined, int(payload["last_k"]), rods, payload.get("steps"), detectors,
                       _smoothing(payload.get("smoothing", 0.0)), dict(payload.get("definition") or {}), combination,
                       tuple(payload.get("standardised") or ()), None if confident_ml is None else float(confident_ml),
                       grow, weights)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: corrupt risk calibration ({exc})") from exc


def _smoothing(stored) -> Smoothing:
    """A calibration file's smoothing: a number, or a list of three (x, y, z); ValueError otherwise."""
    return parse_smoothing(",".join(map(str, stored)) if isinstance(stored, list) else str(stored))


def fit_on_volumes(cases: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]], detectors: tuple[str, ...],
                   smoothing: Smoothing, combination: str, standardised: tuple[str, ...] = (),
                   false_positive_rate: float = 0.01, **fields) -> RiskCalibration:
    """:meth:`RiskCalibration.fit` on healthy voxels given as ``(brain, raw detector maps)`` pairs, or
    ``(brain, raw detector maps, healthy)`` triples (an iterable, consumed once): each map through
    :func:`detector_volumes` over the brain, the ``healthy`` voxels of every case pooled (default: the whole brain;
    a lesion case's brain outside its lesion labels). ``fields``: fit's other keywords (``last_k``, ``rods``,
    ``steps``, ``definition``)."""
    voxels: dict[str, list] = {}
    for brain, maps, *healthy in cases:
        pooled = healthy[0] if healthy else brain
        for name, volume in detector_volumes(maps, brain, smoothing, detectors, standardised).items():
            voxels.setdefault(name, []).append(volume[pooled])
    return RiskCalibration.fit({name: np.concatenate(parts) for name, parts in voxels.items()}, false_positive_rate,
                               smoothing=smoothing, combination=combination, standardised=standardised, **fields)


def rods_config_from(payload: dict) -> RODSConfig | None:
    """The RODS settings stored in a calibration or benchmark JSON; a file with only
    ``rods_eps`` means CAS, autograd, every step of the window."""
    if payload.get("rods") is not None:
        return RODSConfig.from_dict(payload["rods"])
    if payload.get("rods_eps") is not None:
        return RODSConfig(eps=payload["rods_eps"], mode="cas", estimator="autograd", stride=1)
    return None


def calibration_name(steps: int, model_steps: int) -> str:
    """The file a model's risk calibration for DDIM-``steps`` is kept in: ``risk_calibration.json`` for the
    model's validated step count ``model_steps``, ``risk_calibration_ddim<steps>.json`` for another."""
    return "risk_calibration.json" if steps == model_steps else f"risk_calibration_ddim{steps}.json"


def calibration_files(model_dir: str | Path) -> list[Path]:
    """A model's risk calibrations: ``risk_calibration.json`` (for the model's own step count) and any
    ``risk_calibration_ddim<steps>.json`` fitted for another step count (:func:`calibration_name`)."""
    return sorted(Path(model_dir).glob("risk_calibration*.json"))


def calibration_for(model_dir: str | Path, sampler: str, steps: int) -> tuple[RiskCalibration | None, str]:
    """The risk calibration of ``model_dir`` fitted for ``sampler`` with ``steps``.

    Returns:
        (calibration, "") or (None, why there is none: no file, or none for this step count).
    """
    files = calibration_files(model_dir)
    if not files:
        return None, f"no hallucination-risk map: {Path(model_dir) / 'risk_calibration.json'} not found"
    fitted = [RiskCalibration.load(path) for path in files]
    matching = [c for c in fitted if c.steps is None or (sampler, steps) == ("ddim", c.steps)]
    if not matching:
        counts = sorted({c.steps for c in fitted})
        return None, (f"no hallucination-risk map: the risk calibrations in {model_dir} are for DDIM with "
                      f"{' or '.join(f'--steps {n}' for n in counts)}, not {sampler.upper()} with --steps {steps} "
                      f"(use --sampler ddim --steps {counts[0]}, or fit one: `localdiffusion calibrate-risk "
                      f"--steps {steps}`)")
    return matching[0], ""


def risk_volume(calibration: RiskCalibration, maps: dict[str, np.ndarray], brain: np.ndarray,
                voxel_ml: float | None = None) -> np.ndarray:
    """The calibrated risk of a working-grid volume.

    An optional detector the calibration combines but this run did not produce (RODS curvature
    without RODS) is left out, as at fitting time; any other missing map is a ValueError.

    Args:
        calibration: the direction's :class:`RiskCalibration`.
        maps: detector name -> raw (X, Y, Z) map (e.g. ``recorder.volumes({"ood": p, "cycle": c})``).
        brain: (X, Y, Z) bool.
        voxel_ml: the volume of one voxel of that grid (needed by a calibration with ``confident_ml``).
    Returns:
        (X, Y, Z) float32 risk in [0, 1]; 0 outside the brain.
    """
    return risk_volumes(calibration, maps, brain, voxel_ml).risk


@dataclass
class RiskMaps:
    """What :func:`risk_volumes` computes, each (X, Y, Z) float32 and 0 outside the brain.

    Attributes:
        risk: the calibrated risk.
        probabilities: detector name -> its own healthy-calibrated probability (what flagged a region:
            :mod:`~localdiffusion.detectors.regions`).
        volumes: detector name -> its map as the CDFs read it (:func:`detector_volumes`: inside the brain,
            smoothed, standardised); what a new calibration is fitted on.
    """

    risk: np.ndarray
    probabilities: dict[str, np.ndarray]
    volumes: dict[str, np.ndarray]


def risk_volumes(calibration: RiskCalibration, maps: dict[str, np.ndarray], brain: np.ndarray,
                 voxel_ml: float | None = None) -> RiskMaps:
    """:func:`risk_volume` with each detector's probability and prepared map (:class:`RiskMaps`).

    With ``calibration.confident_ml``, the confident components of the raw :data:`CONFIDENT_DETECTOR` map
    (:func:`confident_components`) get risk 1, and that detector's probability 1 there (it flagged them; where the
    calibration does not combine that map, its probability is 0 elsewhere). With ``calibration.grow``, every flagged
    region then grows by hysteresis (:func:`apply_growth`).
    """
    volumes = detector_volumes(maps, brain, calibration.smoothing, calibration.needs, calibration.standardised)
    inside = lambda v: np.where(brain, v, 0.0).astype(np.float32)  # noqa: E731
    risk = calibration.risk(volumes)
    probabilities = calibration.detector_probabilities(volumes)
    if calibration.confident_ml is not None:
        if voxel_ml is None:
            raise ValueError("a risk calibration with confident components needs the voxel volume")  # programming
        sure = confident_components(maps[CONFIDENT_DETECTOR], brain, calibration.confident_ml, voxel_ml)
        risk = np.where(sure, 1.0, risk)
        probabilities[CONFIDENT_DETECTOR] = np.where(sure, 1.0, probabilities.get(CONFIDENT_DETECTOR, 0.0))
    if calibration.grow is not None:
        risk = apply_growth(np.where(brain, risk, 0.0), calibration.grow, maps, brain)
    return RiskMaps(inside(risk), {name: inside(p) for name, p in probabilities.items()}, volumes)
