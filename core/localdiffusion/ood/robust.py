"""An OOD probability that survives a change of scanner: per-volume self-calibration, and for
some contrasts intensity standardisation before the backbone.

Holds the steps (:func:`standardise_intensities`, :func:`standardise_scores`, :func:`distance_volume`) and
:class:`RobustCalibration`, which documents the method and its file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localdiffusion.data.io import atomic_path
from localdiffusion.errors import InputError
from localdiffusion.ood.anomaly_map import Calibration
from localdiffusion.ood.location import location_score, register
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import OodMap, bank_grid
from localdiffusion.volume.bias import correct_bias
from localdiffusion.volume.grid import normalise
from localdiffusion.options import HEALTHY_FPR

#: per contrast, what the robust map does to the image before the backbone, each chosen on the
#: validation shift variants by section 9c's rule (the highest lesion AUROC on most variants among the
#: choices flagging <= 5% of healthy brain on every one): ``standardise`` (research/RECORD.md 9c: it
#: raises the T1 map's lesion AUROC under every shift and drops FLAIR's to 0.65-0.71) and
#: ``bias_correct`` (9d: without it the FLAIR map flags 9.1% of healthy brain under a strong coil field,
#: with it 1.1%, at most 2.7% on any variant; for T1 it lowers the lesion AUROC on 6 of 7 variants);
#: then, by the rule of research/ood_families/README.md on the validation lesion families (both T1 kinds),
#: ``location`` (T1 ``max``: lesion AUROC 0.777 against 0.753 without, healthy brain >= 0.99 0.8% against
#: 4.0%; FLAIR ``only``: 0.957 against 0.949, 2.4% against 5.2%) and ``mask_level`` (FLAIR 0.25: mask Dice
#: +0.078 [+0.041, +0.115] over the thresholded mask, 77% of the lesion covered; T1 is not chosen on)
PREPROCESSING = {"t1": {"standardise": True, "bias_correct": False, "location": "max", "mask_level": 0.0},
                 "flair": {"standardise": False, "bias_correct": True, "location": "only", "mask_level": 0.25}}
#: how the location score (ood/location.py) joins the patch distance: "" not at all, "max" the larger of the two
#: self-standardised scores, "only" the location score alone (chosen per contrast in PREPROCESSING)
LOCATION_MODES = ("", "max", "only")
#: brain-intensity percentiles matched by the standardisation
LANDMARK_LEVELS = np.array([1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99], np.float64)
ROBUST_FORMAT = "localdiffusion-robust-ood-1"
#: calibrations are fitted on every second brain slice (neighbouring 2 mm slices are alike; half the time)
CALIBRATION_SLICE_STRIDE = 2


def landmarks(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return np.percentile(image[brain], LANDMARK_LEVELS)


def standardise_intensities(image: np.ndarray, brain: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of this volume's brain percentiles onto ``reference`` (linear beyond the ends)."""
    own = landmarks(image, brain)
    own = np.maximum.accumulate(own + np.arange(len(own)) * 1e-6)  # strictly increasing
    slope_lo = (reference[1] - reference[0]) / max(own[1] - own[0], 1e-6)
    slope_hi = (reference[-1] - reference[-2]) / max(own[-1] - own[-2], 1e-6)
    mapped = np.interp(image, own, reference)
    mapped = np.where(image < own[0], reference[0] + (image - own[0]) * slope_lo, mapped)
    mapped = np.where(image > own[-1], reference[-1] + (image - own[-1]) * slope_hi, mapped)
    return np.where(brain, np.clip(mapped, 0.0, 1.0), 0.0).astype(np.float32)


def standardise_scores(scores: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Distances standardised by the volume's own brain median and MAD."""
    values = scores[brain]
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median)) + 1e-8
    return (scores - median) / mad


def distance_volume(bank: PatchCore, image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """PatchCore pixel distances (X, Y, Z) on the slices with brain, 0 elsewhere."""
    ks = np.flatnonzero(brain.any((0, 1)))
    out = np.zeros(image.shape, np.float32)
    if ks.size:
        slices, masks = np.moveaxis(image[:, :, ks], 2, 0), np.moveaxis(brain[:, :, ks], 2, 0)
        out[:, :, ks] = np.moveaxis(bank.score(slices, masks, image=False).pixel, 0, 2)
    return out


def combined_score(distances: np.ndarray | None, location: np.ndarray | None, brain: np.ndarray, mode: str
                   ) -> np.ndarray:
    """The score a calibration's CDF reads: the self-standardised patch distances, the self-standardised location
    score, or the larger of the two (``mode``: a :data:`LOCATION_MODES` entry)."""
    if not mode:
        return standardise_scores(distances, brain)
    if mode == "only":
        return standardise_scores(location, brain)
    return np.maximum(standardise_scores(distances, brain), standardise_scores(location, brain))


def _located(seen: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The location score of the backbone's input (:func:`~localdiffusion.ood.location.location_score`), or None
    and the reason the registration to the template cannot be used."""
    registration = register(brain, affine)
    if registration.problem:
        return None, registration.problem
    return location_score(seen, brain, affine, registration), None


def strided_brain(brain: np.ndarray, stride: int = CALIBRATION_SLICE_STRIDE) -> np.ndarray:
    """``brain`` on every ``stride``-th slice with brain only (the others emptied)."""
    kept = np.zeros_like(brain)
    ks = np.flatnonzero(brain.any((0, 1)))[::stride]
    kept[:, :, ks] = brain[:, :, ks]
    return kept


def _standardised(image: np.ndarray, brain: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """The image intensity-standardised onto ``reference`` when there is one."""
    return image if reference is None else standardise_intensities(image, brain, reference)


def bias_corrected(image: np.ndarray, brain: np.ndarray, modality: str, spacing_mm: float) -> np.ndarray:
    """``image`` with its coil bias removed (N4) and normalised again as the working grid's images are."""
    corrected, _ = normalise(correct_bias(image, brain, spacing_mm), brain, modality=modality)
    return np.where(brain, corrected, 0.0).astype(np.float32)


@dataclass(frozen=True)
class RobustMap:
    """What :meth:`RobustCalibration.ood_map` returns.

    Attributes:
        map: the OOD map with its threshold, score and mask level.
        unlocated: why the location score could not be used (the map is then the patch map alone), or None.
        patch: the patch distances' own robust probability (None when only the location score was computed).
    """

    map: OodMap
    unlocated: str | None
    patch: np.ndarray | None


@dataclass
class RobustCalibration:
    """How one contrast's bank distances become an acquisition-robust probability (below).

    A bank's own calibration (:class:`~localdiffusion.ood.anomaly_map.Calibration`) turns a patch
    distance into the fraction of healthy *validation* voxels with a lower distance. A scan from
    another scanner (spin-echo T1, a stronger bias field, more noise) moves every distance, and the
    map then flags the acquisition instead of lesions (research/RECORD.md section 9). Two steps help:

    * **self-calibration**: a volume's distances are standardised by their own brain median and MAD
      (a scanner that moves every distance moves the median with it) before the calibration of the
      healthy validation volumes' standardised distances; a lesion stays in the tail;
    * **intensity standardisation** (``standardise``): the brain intensities are first mapped
      piecewise-linearly onto the healthy validation volumes' mean percentiles (landmarks
      :data:`LANDMARK_LEVELS`, Nyul-style). It helps T1 and hurts FLAIR, where mapping a tumour
      volume's percentiles onto healthy ones pulls the bright lesion tail down (section 9);
    * **bias correction** (``bias_correct``): the coil's smooth field is removed first (N4,
      :mod:`~localdiffusion.volume.bias`). Under a strong field it stops the FLAIR map flagging the
      field, at a small cost in lesion AUROC elsewhere (section 9d); it hurts the standardised T1 map.

    Both are per-contrast choices (:data:`PREPROCESSING`) recorded in the calibration.

    A :class:`RobustCalibration` is fitted on healthy validation volumes (``localdiffusion ood
    calibrate-robust``) and stored beside its bank as ``ood_<modality>_robust.json``
    (:func:`~localdiffusion.shipped.robust_calibration_path`). Its threshold flags the same 1% of
    healthy validation voxels as the bank's. It is used by ``localdiffusion ood map --robust``, as the
    detector ``ood_robust`` (:mod:`~localdiffusion.detectors.given`) by the T1 -> FLAIR risk map, and
    as the OOD map the main job writes and Local Diffusion branches on (both contrasts). The input gate reads the bank's own map: it asks how far the scan is from the training
    scans, which the robust map, calibrated on the scan itself, cannot say.
    """

    modality: str
    reference: np.ndarray | None  # landmark intensities of the healthy validation volumes; None: no standardisation
    calibration: Calibration  # of self-standardised healthy validation distances (with location: combined scores)
    bias_correct: bool = False  # N4 before everything else (volume/bias.py)
    location: str = ""  # LOCATION_MODES: how the location score (ood/location.py) joins the patch distance
    patch_calibration: Calibration | None = None  # with location: the patch distances alone, for a failed registration
    mask_level: float = 0.0  # Local Diffusion's mask: each component's level set (ood/postprocess.level_set); 0: off

    @property
    def standardise(self) -> bool:
        return self.reference is not None

    def probability(self, bank: PatchCore, image: np.ndarray, brain: np.ndarray, scored: np.ndarray | None = None,
                    affine: np.ndarray | None = None) -> np.ndarray:
        """The acquisition-robust OOD probability of a working-grid image.

        Args:
            bank: the PatchCore bank this calibration belongs to.
            image: (X, Y, Z) normalised working-grid image of the bank's contrast.
            brain: (X, Y, Z) bool brain mask.
            scored: (X, Y, Z) bool voxels to score (default: all of ``brain``; a calibration or a
                benchmark scores a subset, e.g. :func:`strided_brain`).
            affine: the working grid's voxel -> RAS mm; needed by a calibration with location.
        Returns:
            (X, Y, Z) float32 in [0, 1], 0 outside ``scored``; with location and a registration that cannot
            be used, the patch distances' alone (:meth:`ood_map` also says why).
        """
        if bank.meta["modality"] != self.modality:
            raise InputError(f"robust calibration is for {self.modality}, the bank for {bank.meta['modality']}")
        scored = brain if scored is None else scored
        if not scored.any():
            return np.zeros(image.shape, np.float32)
        distances, location, _ = self._scores(bank, image, brain, scored, affine)
        return self.from_distances(distances, scored, location)

    def _scores(self, bank: PatchCore, image: np.ndarray, brain: np.ndarray, scored: np.ndarray,
                affine: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        """The bank's distances (None when the location score alone is read), the location score (None
        without location or registration) and why the registration could not be used."""
        seen = self.backbone_input(bank, image, brain, scored)
        location, problem = None, None
        if self.location:
            if affine is None:
                raise ValueError("a calibration with location needs the working grid's affine")
            # the location score reads the whole brain (its smoothing and tissue medians), whatever is scored
            whole = seen if scored is brain else self.backbone_input(bank, image, brain, brain)
            location, problem = _located(whole, brain, affine)
            if location is not None:
                location = np.where(scored, location, 0.0)
        distances = distance_volume(bank, seen, scored) if self.location != "only" or location is None else None
        return distances, location, problem

    def ood_map(self, bank: PatchCore, image: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> "RobustMap":
        """The map ``run`` writes and Local Diffusion branches on: :meth:`probability` with its threshold, the score it was calibrated from and this calibration's mask level; beside it the patch
        map alone (what the risk calibrations read as ``ood_robust``) when the distances were computed."""
        if bank.meta["modality"] != self.modality:
            raise InputError(f"robust calibration is for {self.modality}, the bank for {bank.meta['modality']}")
        if not brain.any():
            empty = np.zeros(image.shape, np.float32)
            return RobustMap(OodMap(empty, self.threshold), None, empty)
        distances, location, problem = self._scores(bank, image, brain, brain, affine)
        mode = self.location if location is not None else ""
        score = np.where(brain, combined_score(distances, location, brain, mode), 0.0).astype(np.float32)
        ood = OodMap(self.from_distances(distances, brain, location), self.threshold, score, self.mask_level)
        patch = ood.probability if not self.location else (
            None if distances is None else self.patch_only().from_distances(distances, brain))
        return RobustMap(ood, problem, patch)

    def patch_only(self) -> "RobustCalibration":
        """This calibration without the location score (the patch distances' own calibration)."""
        if not self.location:
            return self
        return RobustCalibration(self.modality, self.reference, self.patch_calibration, self.bias_correct,
                                 mask_level=self.mask_level)

    def backbone_input(self, bank: PatchCore, image: np.ndarray, brain: np.ndarray, scored: np.ndarray
                       ) -> np.ndarray:
        """What the backbone sees: the image, bias-corrected and intensity-standardised as this calibration says.
        The field is fitted on the whole ``brain``: given every second slice alone N4 leaves the image as it
        is (on a strong-bias test scan 14% of healthy brain stayed flagged, against 0.9% with the whole brain)."""
        if self.bias_correct:
            image = bias_corrected(image, brain, self.modality, bank_grid(bank)[0])
        return _standardised(image, scored, self.reference)

    def from_distances(self, distances: np.ndarray | None, brain: np.ndarray, location: np.ndarray | None = None
                       ) -> np.ndarray:
        """The probability from the bank's distances of the backbone's input (:meth:`backbone_input`; when that
        is the image itself, the bank's own distances, which a caller may share with the bank's map) and, for a
        calibration with location, the location score (None: the registration failed; the patch distances alone)."""
        if self.location and location is None:
            calibration, score = self.patch_calibration, standardise_scores(distances, brain)
        else:
            calibration, score = self.calibration, combined_score(distances, location, brain, self.location)
        return np.where(brain, calibration.probability(score), 0.0).astype(np.float32)

    @property
    def threshold(self) -> float:
        return self.calibration.probability_threshold

    @classmethod
    def fit(cls, bank: PatchCore, volumes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], standardise: bool,
            false_positive_rate: float = HEALTHY_FPR, bias_correct: bool = False, location: str = "",
            mask_level: float = 0.0) -> "RobustCalibration":
        """Fit on healthy validation volumes.

        Args:
            bank: the PatchCore bank.
            volumes: (image, brain, affine) of healthy validation volumes on the bank's working grid (the
                affine only with ``location``; (image, brain) pairs otherwise); every :data:`CALIBRATION_SLICE_STRIDE`-th brain slice is scored (landmarks and scores from those).
            standardise, bias_correct: the steps before the backbone.
            false_positive_rate: the healthy voxels flagged at the threshold.
            location: a :data:`LOCATION_MODES` entry.
            mask_level: the level set Local Diffusion's mask shrinks to (stored, not fitted).
        Returns:
            The calibration.
        """
        if not volumes:
            raise InputError("the robust calibration needs healthy validation volumes")
        if location not in LOCATION_MODES:
            raise InputError(f"unknown location mode {location!r}; choose from none, max, only")
        if not 0.0 <= mask_level < 1.0:
            raise InputError(f"the mask level must be in [0, 1), got {mask_level}")
        modality = bank.meta["modality"]
        spacing = bank_grid(bank)[0]
        volumes = [(*v, None)[:3] for v in volumes]  # (image, brain) pairs: no affine, no location
        volumes = [(bias_corrected(img, brain, modality, spacing) if bias_correct else img, brain, strided_brain(brain),
                    affine) for img, brain, affine in volumes]
        reference = np.mean([landmarks(img, scored) for img, _, scored, _ in volumes], axis=0) if standardise else None
        patch_scores, scores = [], []
        for img, brain, scored, affine in volumes:
            seen = _standardised(img, scored, reference)
            distances = distance_volume(bank, seen, scored)
            patch_scores.append(standardise_scores(distances, scored)[scored])
            if location:  # on the whole brain, as a job computes it (the strided slices alone would darken it)
                score, problem = _located(_standardised(img, brain, reference), brain, affine)
                if problem:
                    raise InputError(f"a healthy validation volume did not register to the MNI152 brain: {problem}")
                scores.append(combined_score(distances, np.where(scored, score, 0.0), scored, location)[scored])
        patch = Calibration.fit(np.concatenate(patch_scores), false_positive_rate)
        if not location:
            return cls(modality, reference, patch, bias_correct, mask_level=mask_level)
        return cls(modality, reference, Calibration.fit(np.concatenate(scores), false_positive_rate), bias_correct,
                   location, patch, mask_level)

    def save(self, path: str | Path) -> Path:
        arrays = {k: v.tolist() for k, v in self.calibration.as_arrays("pixel").items()}
        payload = {"format": ROBUST_FORMAT, "modality": self.modality, "standardise": self.standardise,  # for readers
                   "bias_correct": self.bias_correct, "mask_level": self.mask_level,
                   "reference": None if self.reference is None else self.reference.tolist(), **arrays}
        if self.location:
            payload.update(location=self.location,
                           **{k: v.tolist() for k, v in self.patch_calibration.as_arrays("patch").items()})
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "RobustCalibration":
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: robust OOD calibration not found (fit it with `localdiffusion ood "
                             f"calibrate-robust`)")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != ROBUST_FORMAT:
                raise ValueError(data.get("format"))
            reference = None if data["reference"] is None else np.asarray(data["reference"], np.float64)
            if bool(data["standardise"]) != (reference is not None):
                raise ValueError("standardise and reference disagree")
            # a file without bias_correct did not correct, one without location has none
            location = str(data.get("location", ""))
            if location not in LOCATION_MODES:
                raise ValueError(f"location {location!r}")
            patch = Calibration.from_arrays(data, "patch") if location else None
            mask_level = float(data.get("mask_level", 0.0))
            if not 0.0 <= mask_level < 1.0:
                raise ValueError(f"mask_level {mask_level}")
            return cls(data["modality"], reference, Calibration.from_arrays(data, "pixel"),
                       bool(data.get("bias_correct", False)), location, patch, mask_level)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: not a robust OOD calibration ({exc.__class__.__name__})") from exc
