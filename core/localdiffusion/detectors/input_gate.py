"""Is the input a skull-stripped brain scan of the contrast the model expects? Asked before any
translation, because a valid file of the wrong kind is translated without complaint: a FLAIR
given to the T1 -> FLAIR model loses its lesion, a checkerboard comes back as a brain.

Holds the measurements (:func:`depth_correlation`, :func:`flagged_fraction`, :func:`typical_probability`,
:class:`MapSummary`) and :class:`InputGate`, which judges them against ``input_gate.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from localdiffusion.errors import InputError

GATE_FILE = "input_gate.json"
#: depth window (mm below the brain surface) and the dark fraction (CSF) left out
DEPTH_MM = (3.0, 15.0)
DARK_FRACTION = 0.3
#: fractions of the brain flagged out of distribution that warn / refuse (product policy; the
#: healthy validation maxima are recorded beside them for the messages)
WARN_FLAGGED = 0.25
REFUSE_FLAGGED = 0.5
#: median OOD probability of the brain above which the OOD map is declared unreadable (product
#: policy: the typical voxel less usual than 90% of healthy validation voxels)
UNRELIABLE_TYPICAL = 0.9
#: a coil field this many times stronger than the strongest healthy validation scan's warns (product
#: policy, set on the validation values of research/RECORD.md section 9f before any test scan was measured)
FIELD_MARGIN = 1.25
#: how far outside its own validation range (as a fraction of the gap to the other contrast)
#: a value may lie before it is called borderline
BORDERLINE = 0.2
NAMES = {"t1": "T1", "flair": "FLAIR", "t2": "T2", "t1ce": "T1ce"}


def depth_correlation(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> float:
    """Spearman correlation of intensity with depth below the brain surface (NaN if undefined)."""
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_mm)
    window = brain & (depth >= DEPTH_MM[0]) & (depth <= DEPTH_MM[1])
    values, depths = image[window], depth[window]
    if values.size < 100:
        return float("nan")
    keep = values > np.percentile(values, 100 * DARK_FRACTION)
    if keep.sum() < 100 or np.ptp(values[keep]) == 0:
        return float("nan")
    return float(stats.spearmanr(values[keep], depths[keep])[0])


def flagged_fraction(probability: np.ndarray, brain: np.ndarray, threshold: float) -> float:
    """The fraction of brain voxels at or above the bank's calibrated threshold."""
    return float((probability[brain] >= threshold).mean()) if brain.any() else 0.0


def typical_probability(probability: np.ndarray, brain: np.ndarray) -> float:
    """The median OOD probability of the brain (the healthy percentile of the typical voxel)."""
    return float(np.median(probability[brain])) if brain.any() else 0.0


@dataclass
class MapSummary:
    """What the gate reads off an OOD probability map."""

    flagged: float
    typical: float

    @classmethod
    def of(cls, probability: np.ndarray, brain: np.ndarray, threshold: float) -> MapSummary:
        return cls(flagged_fraction(probability, brain, threshold), typical_probability(probability, brain))


#: without a full OOD map the gate maps every third brain slice (2 mm slices: neighbours are alike)
GATE_SLICE_STRIDE = 3


def map_summary(prepared, contrast: str, bank, probability: np.ndarray | None = None) -> MapSummary:
    """The gate's reading of ``bank``'s OOD map of a working-grid case: from ``probability`` (the
    whole map, already computed) or from every :data:`GATE_SLICE_STRIDE`-th brain slice."""
    if probability is not None:
        return MapSummary.of(probability, prepared.brain, bank.threshold)
    ks = prepared.brain_slices()[::GATE_SLICE_STRIDE]
    slices = np.moveaxis(prepared.images[contrast][:, :, ks], 2, 0)
    brain = np.moveaxis(prepared.brain[:, :, ks], 2, 0)
    return MapSummary.of(bank.pixel_probability(slices, brain), brain, bank.threshold)


@dataclass
class GateReport:
    """What the gate measured and concluded; ``warnings`` are for the user, ``refusal`` ends the job."""

    contrast: str
    correlation: float
    map: MapSummary | None
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None

    @property
    def map_reliable(self) -> bool | None:
        """Can the OOD map be read for this scan (None: the map was not measured)?"""
        return None if self.map is None else self.map.typical <= UNRELIABLE_TYPICAL


#: the contrast features a calibration may name: ``depth_correlation`` on the image as it is (N4-corrected only
#: under a strong coil field), ``depth_correlation_n4`` always on the N4-corrected image
#: (research/input_gate/README.md, "T1 kinds")
FEATURES = ("depth_correlation", "depth_correlation_n4")


@dataclass
class InputGate:
    """Healthy-validation ranges: contrast -> (min, max) depth correlation, max flagged fraction,
    max typical probability and max coil-field strength (``typical``, ``coil_field``: empty in calibrations
    written before they existed, and then not checked).

    Two whole-volume measurements, both calibrated on healthy validation volumes
    (``localdiffusion calibrate-gate``; the numbers live in ``input_gate.json`` beside the models,
    not here):

    * **contrast** - the rank correlation of intensity with depth below the brain surface (3-15
      mm, the darkest 30% - CSF - left out). White matter lies deeper than the cortex: on T1 it is
      brighter than grey matter (positive correlation), on FLAIR darker (negative). On the
      phantom's healthy validation volumes T1 gives +0.26 to +0.36 and FLAIR -0.15 to -0.02,
      tumours included (research/RECORD.md section 6). A value past the midpoint between the two
      contrasts' ranges is refused ("looks like a FLAIR"); one outside the own range by more than
      a fifth of the gap is translated with a warning. No depth structure at all (a constant or
      two-valued image) is refused.
    * **distribution** - the fraction of brain voxels the expected contrast's PatchCore bank flags
      at its calibrated threshold (healthy validation: at most a few percent). Above
      :data:`REFUSE_FLAGGED` the map has nothing left to say and the scan is refused; above
      :data:`WARN_FLAGGED` it is translated with a warning.
    * **map reliability** - the median OOD probability of the brain: the healthy-validation
      percentile of the typical brain voxel (about 0.5 on healthy validation scans, by the bank's
      calibration). A lesion, however large, leaves most of the brain typical; a scan from another
      scanner or protocol moves every voxel. Above :data:`UNRELIABLE_TYPICAL` the OOD map, the
      risk map and Local Diffusion's masks mark the acquisition rather than lesions, and the
      outputs say so (research/RECORD.md section 9: a spin-echo T1 puts the typical voxel at the
      healthy 9Xth percentile, while its flagged fraction stays under :data:`WARN_FLAGGED`).

    * **coil field** - the strength of the scan's receive-coil bias field (the spread of its N4 log
      field over the brain, :func:`~localdiffusion.volume.bias.field_strength`). Above
      :data:`FIELD_MARGIN` times the strongest healthy validation scan's, the translation and the maps
      may follow the field rather than the anatomy (research/RECORD.md sections 9, 11c: under a strong
      field T1 -> FLAIR errs over 5.8% of the brain and its risk map ranks those errors at chance),
      and the outputs say so (section 9f). A warning only: the scan is still a brain of its contrast.
      A strong field also makes intensity vary with depth and can drag a T1's depth correlation toward
      FLAIR's, so under such a field the contrast is judged on the N4-corrected image (:meth:`InputGate.measure`;
      below the margin, as in every healthy validation scan, the image is judged as it is).

    Which correlation the contrast check reads is the calibration's ``feature`` (:data:`FEATURES`): the
    shipped gate reads it on the N4-corrected image of every scan (``depth_correlation_n4``), its ranges
    fitted on validation scans of every T1 kind, coil field and lesion family the gate must accept, where
    the two contrasts' ranges overlap a little and the cut is their midpoint (research/input_gate/README.md,
    "T1 kinds"); a scan inside the other contrast's range is translated with a warning that says so. An image with no depth structure at all is judged on the image as it is (N4 can invent
    structure in a constant or two-valued image). The distribution check refuses above the calibration's
    ``refuse_flagged`` (:data:`REFUSE_FLAGGED` in calibrations that do not name one).

    ``force`` turns every refusal into a warning.
    """

    correlation: dict[str, tuple[float, float]]
    flagged: dict[str, float]
    cases: int
    split: str = "val"
    typical: dict[str, float] = field(default_factory=dict)
    coil_field: dict[str, float] = field(default_factory=dict)
    feature: str = "depth_correlation"
    refuse_flagged: float = REFUSE_FLAGGED

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise ValueError(f"unknown contrast feature {self.feature!r}; known: {FEATURES}")

    def strong_field(self, contrast: str, field_strength: float | None) -> bool:
        """Is the field stronger than :data:`FIELD_MARGIN` times the healthy validation maximum?"""
        return (field_strength is not None and contrast in self.coil_field
                and field_strength > FIELD_MARGIN * self.coil_field[contrast])

    def measure(self, contrast: str, image: np.ndarray, brain: np.ndarray, spacing_mm: float
                ) -> tuple[float, float | None]:
        """The depth correlation and the coil-field strength (None: this calibration has no field check) of a
        working-grid image: on the N4-corrected image when the calibration's feature says so or under a strong
        field, as it is otherwise (and always when it has no depth structure: NaN)."""
        from localdiffusion.volume.bias import field_spread, log_bias_field, remove_field

        as_is = depth_correlation(image, brain, spacing_mm)
        if not np.isfinite(as_is) or (contrast not in self.coil_field and self.feature == "depth_correlation"):
            return as_is, None
        log_field = log_bias_field(image, brain, spacing_mm)
        strength = field_spread(log_field, brain) if contrast in self.coil_field else None
        if self.feature == "depth_correlation_n4" or self.strong_field(contrast, strength):
            return depth_correlation(remove_field(image, brain, log_field), brain, spacing_mm), strength
        return as_is, strength

    def judge(self, contrast: str, correlation: float, summary: MapSummary | None,
              field_strength: float | None = None, robust_map: bool = False) -> GateReport:
        """The verdict on one input; ``robust_map``: the OOD map the user gets is the robust one
        (ood/robust.py, calibrated on the scan itself), not the bank's map this gate reads."""
        report = self._judge_contrast_and_map(contrast, correlation, summary, robust_map)
        if self.strong_field(contrast, field_strength):
            seen = (f"the scan's receive-coil field is stronger than in any healthy {NAMES.get(contrast, contrast)} "
                    f"validation scan (N4 log-field spread {field_strength:.3f}, validation at most "
                    f"{self.coil_field[contrast]:.3f})")
            maps = "the risk map" if robust_map else "the OOD map and the risk map"  # a robust map is self-calibrated
            report.warnings.insert(0, f"{seen}: the translation and {maps} may follow the field rather than the "
                                      f"anatomy; the contrast was checked on the field-corrected image "
                                      f"(research/RECORD.md section 9f)")
            if report.refusal:
                report.refusal += f"; note that {seen} (checked on the field-corrected image)"
        return report

    def _judge_contrast_and_map(self, contrast: str, correlation: float, summary: MapSummary | None,
                                robust_map: bool = False) -> GateReport:
        report = GateReport(contrast, correlation, summary)
        name = NAMES.get(contrast, contrast)
        if report.map_reliable is False:
            seen = (f"; healthy validation scans: at most {100 * self.typical[contrast]:.0f}%"
                    if contrast in self.typical else "")
            unusual = (f"its typical brain voxel is less usual than {100 * summary.typical:.0f}% of healthy {name} "
                       f"validation voxels{seen}. The scan probably comes from another scanner or protocol")
            report.warnings.append(
                f"the scan is far from the {name} training scans: {unusual}; the OOD map and Local Diffusion's "
                f"masks are calibrated on the scan itself (the robust map), but the translation and the risk map "
                f"may follow the acquisition (research/RECORD.md section 9)" if robust_map else
                f"the OOD map cannot be read for this scan: {unusual}, so the OOD map, the risk map and Local "
                f"Diffusion's masks mark the acquisition, not lesions; `localdiffusion ood map --robust` maps this "
                f"scan against itself (research/RECORD.md section 9)")
        if summary is not None and summary.flagged > WARN_FLAGGED:
            flagged = summary.flagged
            message = (f"{100 * flagged:.0f}% of the brain is out of distribution for the {name} model (healthy "
                       f"validation scans: at most {100 * self.flagged[contrast]:.0f}%"
                       + ("; the written OOD map is calibrated on the scan itself)" if robust_map else ")"))
            if flagged > self.refuse_flagged:
                report.refusal = (f"{message}: this does not look like a skull-stripped {name} brain scan the model "
                                  f"can translate")
            else:
                report.warnings.append(f"{message}; trust the translation less than usual")
        low, high = self.correlation[contrast]
        if not np.isfinite(correlation):
            report.refusal = report.refusal or (f"intensity does not vary with depth below the brain surface as in "
                                                f"any brain scan: this does not look like a {name} brain scan")
            return report
        others = {c: r for c, r in self.correlation.items() if c != contrast}
        for other, (o_low, o_high) in others.items():
            above = o_low + o_high > low + high  # the other contrast's range lies above ours (they may overlap)
            gap = (o_low - high) if above else (low - o_high)
            midpoint = (high + gap / 2) if above else (low - gap / 2)
            past = correlation > midpoint if above else correlation < midpoint
            if past:
                report.refusal = report.refusal or (
                    f"this looks like a {NAMES.get(other, other)}, not a {name} (depth-intensity correlation "
                    f"{correlation:+.2f}; {name} validation scans {low:+.2f} to {high:+.2f}, "
                    f"{NAMES.get(other, other)} {o_low:+.2f} to {o_high:+.2f}): the model needs a {name}")
                return report
        margin = BORDERLINE * min(abs(o[0] - high) if sum(o) > low + high else abs(low - o[1]) for o in others.values())
        if not low - margin <= correlation <= high + margin:
            report.warnings.append(f"the contrast is unlike the {name} validation scans (depth-intensity correlation "
                                   f"{correlation:+.2f}, validation {low:+.2f} to {high:+.2f}); check the input is "
                                   f"a {name}")
        for other, (o_low, o_high) in others.items():  # where both contrasts occur, the check cannot tell them apart
            if o_low <= correlation <= o_high:
                report.warnings.append(
                    f"the contrast check cannot tell this scan from a {NAMES.get(other, other)} (depth-intensity "
                    f"correlation {correlation:+.2f}: {name} validation scans {low:+.2f} to {high:+.2f}, "
                    f"{NAMES.get(other, other)} {o_low:+.2f} to {o_high:+.2f}); check the input is a {name}")
        return report

    def save(self, path: str | Path) -> Path:
        from localdiffusion.data.io import atomic_path

        payload = {**asdict(self), "definition": {"depth_mm": DEPTH_MM, "dark_fraction": DARK_FRACTION,
                                                  "warn_flagged": WARN_FLAGGED,
                                                  "unreliable_typical": UNRELIABLE_TYPICAL,
                                                  "borderline": BORDERLINE, "field_margin": FIELD_MARGIN}}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> InputGate:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            gate = cls({k: tuple(v) for k, v in payload["correlation"].items()}, dict(payload["flagged"]),
                       int(payload["cases"]), payload.get("split", "val"), dict(payload.get("typical", {})),
                       dict(payload.get("coil_field", {})), payload.get("feature", "depth_correlation"),
                       float(payload.get("refuse_flagged", REFUSE_FLAGGED)))
            numbers = [v for pair in gate.correlation.values() for v in pair] + [
                *gate.flagged.values(), *gate.typical.values(), *gate.coil_field.values(), gate.refuse_flagged]
            if not all(np.isfinite(float(v)) for v in numbers):
                raise ValueError("a number is not finite")
            if not gate.correlation or any(low > high for low, high in gate.correlation.values()):
                raise ValueError("a correlation range is empty or reversed")
            return gate
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: not a valid input-gate calibration ({exc.__class__.__name__}: {exc})") from None
