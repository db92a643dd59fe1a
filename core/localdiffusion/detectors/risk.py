"""Per-voxel hallucination-risk map: a calibrated union of the registered detectors.

Each detector's map (:mod:`~localdiffusion.detectors.maps`: OOD probability, x0-trajectory
variance, RODS curvature, ...) is turned into "the probability that a healthy voxel scores
lower" with an empirical CDF fitted on healthy *validation* data
(:class:`~localdiffusion.ood.anomaly_map.Calibration`); maps that are already probabilities
(the OOD map) are taken as they are. The raw combined score is the maximum over the
detectors present; a last calibration of that score on the same healthy data gives the
risk, so that ``risk >= 1 - a`` flags a fraction ``a`` of healthy voxels.

The calibration file (``<model>/risk_calibration.json``) holds one CDF per fitted detector
under its name, the combined CDF, the step count of the calibration runs (the variance
depends on it: the risk map is written only for that DDIM step count) and the RODS settings
with their healthy-calibrated ``eps``. Fitting it is a job: :mod:`localdiffusion.jobs.calibrate`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localdiffusion.data.io import atomic_path
from localdiffusion.detectors.maps import DETECTORS
from localdiffusion.errors import InputError
from localdiffusion.methods.rods import RODSConfig
from localdiffusion.ood.anomaly_map import Calibration


@dataclass
class RiskCalibration:
    components: dict[str, Calibration]  # detector name -> CDF on healthy validation voxels (uncalibrated detectors)
    combined: Calibration
    last_k: int = 10
    rods: RODSConfig | None = None  # RODS settings with the healthy-calibrated eps (None: fitted without RODS)
    steps: int | None = None  # DDIM steps of the calibration runs (the variance depends on them)
    detectors: tuple[str, ...] = field(default=())  # detectors combined at fitting time, in order

    def component_probabilities(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Per voxel: the largest healthy-calibrated probability over the detectors in ``maps``."""
        parts = []
        for name, detector in DETECTORS.items():
            if maps.get(name) is None:
                continue
            if detector.calibrated:
                parts.append(np.asarray(maps[name], np.float32))
            elif name in self.components:
                parts.append(self.components[name].probability(maps[name]))
        if not parts:
            raise ValueError("no detector map to combine")
        return np.maximum.reduce(parts)

    def risk(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated risk in [0, 1], the shape of the maps."""
        return self.combined.probability(self.component_probabilities(maps))

    @classmethod
    def fit(cls, maps: dict[str, np.ndarray], false_positive_rate: float = 0.01, last_k: int = 10,
            rods: RODSConfig | None = None, steps: int | None = None) -> "RiskCalibration":
        """Fit on healthy validation voxels: ``maps`` detector name -> 1D array (all of one length)."""
        maps = {k: v for k, v in maps.items() if v is not None}
        components = {name: Calibration.fit(maps[name], false_positive_rate)
                      for name, detector in DETECTORS.items() if name in maps and not detector.calibrated}
        partial = cls(components, None, last_k)  # only its component probabilities are needed
        combined = Calibration.fit(partial.component_probabilities(maps), false_positive_rate)
        return cls(components, combined, last_k, rods, steps, tuple(n for n in DETECTORS if n in maps))

    def save(self, path: str | Path) -> None:
        payload = {"last_k": self.last_k, "steps": self.steps, "detectors": list(self.detectors),
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
            return cls(components, combined, int(payload["last_k"]), rods, payload.get("steps"), detectors)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: corrupt risk calibration ({exc})") from exc


def rods_config_from(payload: dict) -> RODSConfig | None:
    """The RODS settings stored in a calibration or benchmark JSON; files from 0.2.0 kept only
    ``rods_eps`` (they were CAS, autograd, every step of the window)."""
    if payload.get("rods") is not None:
        return RODSConfig.from_dict(payload["rods"])
    if payload.get("rods_eps") is not None:
        return RODSConfig(eps=payload["rods_eps"], mode="cas", estimator="autograd", stride=1)
    return None


def risk_volume(calibration: RiskCalibration, maps: dict[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
    """Working-grid risk (X, Y, Z) from every detector map (e.g. ``recorder.volumes({"ood": p})``); 0 outside the brain."""
    risk = calibration.risk(maps)
    return np.where(brain, risk, 0.0).astype(np.float32)
