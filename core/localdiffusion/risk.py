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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import InputError, atomic_path
from .ood.anomaly_map import Calibration


@dataclass
class RiskCalibration:
    variance: Calibration
    combined: Calibration
    curvature: Calibration | None = None
    last_k: int = 10

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
            false_positive_rate: float = 0.01, last_k: int = 10) -> "RiskCalibration":
        """Fit on healthy validation voxels (1D arrays of equal length)."""
        var_cal = Calibration.fit(variance, false_positive_rate)
        curv_cal = Calibration.fit(curvature, false_positive_rate) if curvature is not None else None
        partial = cls(var_cal, var_cal, curv_cal, last_k)
        combined = Calibration.fit(partial.component_probabilities(p_ood, variance, curvature), false_positive_rate)
        return cls(var_cal, combined, curv_cal, last_k)

    def save(self, path: str | Path) -> None:
        payload = {"last_k": self.last_k}
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
        except (ValueError, KeyError) as exc:
            raise InputError(f"{path}: corrupt risk calibration ({exc})") from exc
        return cls(cal["variance"], cal["combined"], cal.get("curvature"), int(payload["last_k"]))
