"""Per-voxel hallucination-risk map from the OOD probability, trajectory variance and RODS.

Each component is turned into "the probability that a healthy voxel scores lower" with an
empirical CDF fitted on healthy *validation* data (:class:`~.ood.anomaly_map.Calibration`):

* ``p_ood``: the PatchCore probability (already calibrated);
* ``p_var``: x0-trajectory variance (last K steps, [0, 1] intensity scale);
* ``p_rods``: the slice's largest RODS curvature index, broadcast to its voxels (0 when RODS
  is off).

The raw combined score is ``max(p_ood, p_var, p_rods)``; a last calibration of that score
on the same healthy data gives the risk, so that ``risk >= 1 - a`` flags a fraction ``a``
of healthy voxels (a calibrated union of the three detectors).

:func:`calibrate_risk` fits it on healthy *validation* volumes with the model it belongs to
and stores it next to the model (``<model>/risk_calibration.json``); with RODS it also sets
RODS's ``eps`` to the healthy slices' (1 - a) quantile of the largest curvature index.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io import InputError, atomic_path
from .ood.anomaly_map import Calibration

if TYPE_CHECKING:
    from .rods import RODSConfig


@dataclass
class RiskCalibration:
    variance: Calibration
    combined: Calibration
    curvature: Calibration | None = None
    last_k: int = 10
    rods: RODSConfig | None = None  # RODS settings with the healthy-calibrated eps (None: fitted without RODS)
    steps: int | None = None  # DDIM steps of the calibration runs (the variance depends on them)

    def component_probabilities(self, p_ood: np.ndarray, variance: np.ndarray,
                                curvature: np.ndarray | None = None) -> np.ndarray:
        parts = [np.asarray(p_ood, np.float32), self.variance.probability(variance)]
        if curvature is not None and self.curvature is not None:
            parts.append(self.curvature.probability(curvature))
        return np.maximum.reduce(parts)

    def risk(self, p_ood: np.ndarray, variance: np.ndarray, curvature: np.ndarray | None = None) -> np.ndarray:
        """Calibrated risk in [0, 1], same shape as the inputs."""
        return self.combined.probability(self.component_probabilities(p_ood, variance, curvature))

    @classmethod
    def fit(cls, p_ood: np.ndarray, variance: np.ndarray, curvature: np.ndarray | None = None,
            false_positive_rate: float = 0.01, last_k: int = 10, rods: RODSConfig | None = None,
            steps: int | None = None) -> "RiskCalibration":
        """Fit on healthy validation voxels (1D arrays of equal length)."""
        var_cal = Calibration.fit(variance, false_positive_rate)
        curv_cal = Calibration.fit(curvature, false_positive_rate) if curvature is not None else None
        partial = cls(var_cal, var_cal, curv_cal, last_k)
        combined = Calibration.fit(partial.component_probabilities(p_ood, variance, curvature), false_positive_rate)
        return cls(var_cal, combined, curv_cal, last_k, rods, steps)

    def save(self, path: str | Path) -> None:
        payload = {"last_k": self.last_k, "steps": self.steps,
                   "rods": dataclasses.asdict(self.rods) if self.rods is not None else None}
        for name in ("variance", "combined", "curvature"):
            cal = getattr(self, name)
            if cal is not None:
                payload[name] = {k: np.asarray(v).tolist() for k, v in cal.as_arrays("c").items()}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: str | Path) -> "RiskCalibration":
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: risk calibration not found")
        try:
            payload = json.loads(path.read_text())
            cal = {n: Calibration.from_arrays({k: np.asarray(v) for k, v in payload[n].items()}, "c")
                   for n in ("variance", "combined", "curvature") if n in payload}
            rods = rods_config_from(payload)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: corrupt risk calibration ({exc})") from exc
        return cls(cal["variance"], cal["combined"], cal.get("curvature"), int(payload["last_k"]), rods,
                   payload.get("steps"))


def rods_config_from(payload: dict) -> RODSConfig | None:
    """The RODS settings stored in a calibration or benchmark JSON; files from 0.2.0 kept only
    ``rods_eps`` (they were CAS, autograd, every step of the window)."""
    from .rods import RODSConfig

    if payload.get("rods") is not None:
        return RODSConfig(**payload["rods"])
    if payload.get("rods_eps") is not None:
        return RODSConfig(eps=payload["rods_eps"], mode="cas", estimator="autograd", stride=1)
    return None


def risk_volume(calibration: RiskCalibration, ood_probability: np.ndarray, recorder, brain: np.ndarray) -> np.ndarray:
    """Working-grid risk (X, Y, Z) from the OOD probability and a filled
    :class:`~localdiffusion.trajectory.VolumeRecorder`; 0 outside the brain."""
    curvature = None
    if calibration.curvature is not None and recorder.curvature.any():
        curvature = np.broadcast_to(recorder.curvature[None, None, :], brain.shape)
    risk = calibration.risk(ood_probability, recorder.variance, curvature)
    return np.where(brain, risk, 0.0).astype(np.float32)


def calibrate_risk(denoiser, data: str | Path, ood_bank, *, rods=None, split: str = "val", max_cases: int = 3,
                   steps: int = 25, seed: int = 0, false_positive_rate: float = 0.01, last_k: int = 10,
                   batch_size: int = 8) -> RiskCalibration:
    """Fit a :class:`RiskCalibration` on the healthy cases of ``split`` (baseline sampler).

    ``rods``: a :class:`~localdiffusion.rods.RODSConfig`; its curvature is recorded (with
    ``eps`` out of reach, so the trajectory is the plain one) and its ``eps`` is fitted.
    """
    from tqdm import tqdm

    from .ood.volume import probability_volume
    from .readers import read_case
    from .slice_data import cases_in_split, has_manifest
    from .slices import prepare_case
    from .trajectory import VolumeRecorder
    from .translate import baseline_sampler, translate_prepared

    cfg = denoiser.config
    cases = cases_in_split(data, split, "healthy" if has_manifest(data) else None)[:max_cases]
    if not cases:
        raise InputError(f"{data}: no healthy {split} cases to calibrate the risk map on")
    probe = dataclasses.replace(rods, eps=float("inf")) if rods is not None else None
    parts: dict[str, list] = {"ood": [], "var": [], "curv": [], "slice_curv": []}
    for path in tqdm(cases, desc="risk calibration", unit="case"):
        prepared = prepare_case(read_case(path, (cfg.source,)), cfg.spacing_mm, cfg.in_plane)
        recorder = VolumeRecorder(prepared.grid.shape, last_k)
        translate_prepared(denoiser, prepared, seed=seed, batch_size=batch_size, progress=False, recorder=recorder,
                           sample_batch=baseline_sampler("ddim", steps, rods=probe))
        brain = prepared.brain
        parts["ood"].append(probability_volume(ood_bank, prepared)[brain])
        parts["var"].append(recorder.variance[brain])
        if probe is not None:
            parts["curv"].append(np.broadcast_to(recorder.curvature[None, None, :], brain.shape)[brain])
            parts["slice_curv"].append(recorder.curvature[prepared.brain_slices()])
    cat = lambda k: np.concatenate(parts[k]) if parts[k] else None  # noqa: E731
    fitted = None
    if probe is not None:
        fitted = dataclasses.replace(rods, eps=float(np.quantile(cat("slice_curv"), 1 - false_positive_rate)))
    return RiskCalibration.fit(cat("ood"), cat("var"), cat("curv"), false_positive_rate, last_k, fitted, steps)
