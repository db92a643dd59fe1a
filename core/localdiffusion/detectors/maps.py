"""Hallucination detectors as a named set of per-voxel maps on the working grid.

A :class:`Detector` says how its map comes about: either it is given (the OOD probability,
computed before sampling) or it is recorded while a batch is sampled, through a step hook
that :class:`VolumeRecorder` attaches to every batch and collects afterwards. The risk map
(:mod:`~localdiffusion.detectors.risk`) combines every registered detector whose map is
there; the benchmark scores every one of them (AUROC for hallucinated slices).

Adding a detector: one module with a :class:`Detector` subclass, registered with
:func:`register` (import it in this package's ``__init__`` so that registration happens).
Order matters only for reproducibility: maps are combined in registration order.
"""

from __future__ import annotations

import numpy as np
import torch

from localdiffusion.methods.trajectory import TrajectoryVariance


class Detector:
    """A named per-voxel map. ``calibrated``: the map is already a probability (no CDF is fitted
    unless the risk map smooths it). ``self_standardised``: a new risk calibration standardises it
    by the volume's own brain median and MAD (its level differs from subject to subject; the
    calibration file records it, so files fitted without it keep their meaning)."""

    name = ""
    description = ""
    calibrated = False
    self_standardised = False
    optional = False  # a run may lack this map (then the risk leaves it out, as its fit did); else its absence is a bug

    def hook(self, last_k: int):
        """A step hook recording this detector during one batch, or None (the map is given)."""
        return None

    def collect(self, hook, batch, recorder: "VolumeRecorder") -> None:
        """Write what ``hook`` recorded for ``batch`` into ``recorder``."""

    def volume(self, recorder: "VolumeRecorder", shape) -> np.ndarray | None:
        """The working-grid map (X, Y, Z), or None when this run did not produce it."""
        return recorder.maps.get(self.name)


class OodProbability(Detector):
    name = "ood"
    description = "PatchCore OOD probability of the condition (calibrated on healthy validation voxels)"
    calibrated = True


class TrajectoryVarianceMap(Detector):
    name = "variance"
    description = "x0-trajectory variance over the last K steps, [0, 1] intensity scale (Aithal et al. 2024)"
    self_standardised = True

    def hook(self, last_k):
        return TrajectoryVariance(last_k)

    def collect(self, hook, batch, recorder):
        batch.put(recorder.map(self.name), hook.variance())


class _RodsWatcher:
    """Keeps the RODS denoiser wrapper of a batch (handed over by the sampler assembly)."""

    rods = None

    def watch_denoiser(self, denoise) -> None:
        if hasattr(denoise, "flagged_slices"):
            self.rods = denoise

    def __call__(self, step) -> None:
        return None


class RodsCurvature(Detector):
    name = "curvature"
    description = "largest RODS curvature index of the slice, broadcast to its voxels (0 when RODS is off)"
    optional = True  # recorded only when sampling with RODS

    def hook(self, last_k):
        return _RodsWatcher()

    def collect(self, hook, batch, recorder):
        rods = hook.rods
        if rods is not None and rods.curvature:
            recorder.slice_values(self.name)[batch.ks] = torch.stack(list(rods.curvature.values())).amax(0).cpu().numpy()
            recorder.slice_values("rods_flagged")[batch.ks] = rods.flagged_slices().cpu().numpy()

    def volume(self, recorder, shape):
        values = recorder.slices.get(self.name)
        if values is None or not values.any():
            return None
        return np.broadcast_to(values[None, None, :], shape)


#: name -> detector, in combination order
DETECTORS: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    if detector.name in DETECTORS:
        raise ValueError(f"detector {detector.name!r} is registered twice")
    DETECTORS[detector.name] = detector
    return detector


for _detector in (OodProbability(), TrajectoryVarianceMap(), RodsCurvature()):
    register(_detector)


class VolumeRecorder:
    """Working-grid maps (X, Y, Z) and per-slice values (Z,) of the recorded detectors of one volume."""

    def __init__(self, shape: tuple[int, int, int], last_k: int = 10):
        self.shape, self.last_k = tuple(shape), last_k
        self.maps: dict[str, np.ndarray] = {}
        self.slices: dict[str, np.ndarray] = {}
        self._batch = None

    def map(self, name: str) -> np.ndarray:
        return self.maps.setdefault(name, np.zeros(self.shape, np.float32))

    def slice_values(self, name: str) -> np.ndarray:
        return self.slices.setdefault(name, np.zeros(self.shape[2], np.float32))

    def begin(self, batch) -> list:
        """Start recording a :class:`~localdiffusion.volume.batching.SliceBatch`; returns its hooks."""
        hooks = {name: d.hook(self.last_k) for name, d in DETECTORS.items()}
        self._batch = (batch, {name: h for name, h in hooks.items() if h is not None})
        return list(self._batch[1].values())

    def end(self) -> None:
        batch, hooks = self._batch
        for name, hook in hooks.items():
            DETECTORS[name].collect(hook, batch, self)
        self._batch = None

    def volumes(self, given: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every detector's map this run has: the recorded ones and ``given`` (e.g. ``{"ood": p}``)."""
        out = {}
        for name, detector in DETECTORS.items():
            volume = (given or {}).get(name)
            volume = volume if volume is not None else detector.volume(self, self.shape)
            if volume is not None:
                out[name] = volume
        return out
