"""Flagged regions of a risk map: what ``run`` tells the user beside the voxels.

A *flagged region* is a connected component (26-connectivity) of the voxels whose risk is at or above the
flag threshold (:data:`~localdiffusion.options.FLAG_THRESHOLD`: 1% of healthy validation voxels), at least
:data:`MIN_REGION_ML` in volume. Each region is reported with its volume, its centre in scanner coordinates
(RAS mm, from the output's affine), its largest risk and the detectors whose own healthy-calibrated probability
reaches the threshold inside it (:meth:`RiskCalibration.detector_probabilities`). Regions are numbered by
decreasing largest risk; the label map (:func:`region_labels`) carries those numbers, so that a viewer's
segment *n* is the report's region *n*.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from localdiffusion.options import FLAG_THRESHOLD

#: regions smaller than this (ml) are not reported: a few voxels of noise, not a place to look at
MIN_REGION_ML = 0.1
#: a label map stores region numbers as uint8: the largest-risk regions beyond this are merged into the last
MAX_REGIONS = 255


@dataclass
class FlaggedRegion:
    """One flagged region of a risk map.

    Attributes:
        label: its number in the label map (1 = the largest risk).
        voxels: its size in voxels of the output grid.
        volume_ml: its volume in millilitres.
        centre_mm: its centre of mass in scanner coordinates (RAS, mm).
        max_risk: the largest risk inside it.
        detectors: the detectors whose own probability reaches the threshold somewhere inside it.
    """

    label: int
    voxels: int
    volume_ml: float
    centre_mm: tuple[float, float, float]
    max_risk: float
    detectors: list[str]
    #: the centre as the patient's sides (:func:`patient_position`), for people; always derived from ``centre_mm``
    position: str = field(init=False)

    def __post_init__(self):
        self.position = patient_position(self.centre_mm)

    def line(self) -> str:
        """One line for the terminal."""
        found = ", ".join(self.detectors) if self.detectors else "the combination only"
        return (f"flagged region {self.label}: {self.volume_ml:.2f} ml centred at {self.position} mm; "
                f"largest risk {self.max_risk:.4f}; flagged by {found}")


def patient_position(ras_mm) -> str:
    """A scanner RAS point as 3D Slicer's data probe writes it: each coordinate's distance with the patient's side
    it lies toward, e.g. ``L 61.0, P 24.7, S 6.5`` for RAS (-61.0, -24.7, 6.5); zero takes R, A, S
    (``generateViewDescription`` in Modules/Scripted/DataProbe/DataProbe.py of Slicer/Slicer at commit
    583e9b37d50ead7daf7b783dce465ccaecec8809)."""
    return ", ".join(f"{positive if value >= 0 else negative} {abs(value):.1f}"
                     for value, positive, negative in zip(ras_mm, "RAS", "LPI"))


def large_components(mask: np.ndarray, voxel_ml: float, min_ml: float) -> tuple[np.ndarray, np.ndarray]:
    """The connected components (26-connectivity) of ``mask`` and the labels of those of at least ``min_ml``.

    Returns:
        (int label map of every component, the labels kept, ascending).
    """
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    index = np.arange(1, count + 1)
    if count == 0:
        return components, index
    sizes = ndimage.sum_labels(np.ones(mask.shape), components, index)
    return components, index[sizes * voxel_ml >= min_ml]


def grow_flagged(risk: np.ndarray, lower: np.ndarray, threshold: float = FLAG_THRESHOLD) -> np.ndarray:
    """Hysteresis (Canny, 1986, section VI: a seed above the high threshold, its region above the low one):
    every connected component (26-connectivity) of ``lower`` that holds a voxel of risk at or above ``threshold``
    takes that component's largest risk, so that a region flagged at its core is flagged whole.

    Args:
        risk: (X, Y, Z) calibrated risk in [0, 1].
        lower: (X, Y, Z) bool, the voxels a flagged region may grow through (every flagged voxel among them).
        threshold: the flag level (the seeds).
    Returns:
        (X, Y, Z) the risk, raised to its component's largest value inside every seeded component.
    """
    risk = np.asarray(risk)
    components, count = ndimage.label(lower | (risk >= threshold), structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return risk
    peaks = np.r_[0.0, ndimage.maximum(risk, components, np.arange(1, count + 1))].astype(risk.dtype)[components]
    return np.where(peaks >= threshold, np.maximum(risk, peaks), risk)


def find_regions(risk: np.ndarray, affine: np.ndarray, detectors: dict[str, np.ndarray] | None = None,
                 threshold: float = FLAG_THRESHOLD, min_ml: float = MIN_REGION_ML
                 ) -> tuple[np.ndarray, list[FlaggedRegion]]:
    """The flagged regions of a risk volume.

    Args:
        risk: (X, Y, Z) calibrated risk in [0, 1] on the output grid.
        affine: (4, 4) voxel-to-RAS affine of that grid.
        detectors: detector name -> (X, Y, Z) healthy-calibrated probability on the same grid (optional).
        threshold: the flag level.
        min_ml: the smallest region reported.
    Returns:
        (uint8 label map: 0 outside every region, n inside region n; the regions, by decreasing largest risk).
    """
    affine = np.asarray(affine, np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    components, keep = large_components(np.asarray(risk) >= threshold, voxel_ml, min_ml)
    if keep.size == 0:
        return np.zeros(risk.shape, np.uint8), []
    peaks = ndimage.maximum(risk, components, keep)
    order = keep[np.argsort(-np.asarray(peaks), kind="stable")]
    centres = ndimage.center_of_mass(np.ones(risk.shape), components, order)
    labels = np.zeros(risk.shape, np.uint8)
    regions = []
    for number, (component, centre) in enumerate(zip(order, centres), start=1):
        inside = components == component
        labels[inside] = min(number, MAX_REGIONS)
        ras = affine @ np.array([*centre, 1.0])
        found = [name for name, probability in (detectors or {}).items()
                 if float(np.max(probability[inside])) >= threshold]
        regions.append(FlaggedRegion(number, int(inside.sum()), round(float(inside.sum()) * voxel_ml, 4),
                                     tuple(round(float(v), 2) for v in ras[:3]), round(float(risk[inside].max()), 6),
                                     found))
    return labels, regions


def region_report(regions: list[FlaggedRegion], threshold: float = FLAG_THRESHOLD, **context) -> dict:
    """The report ``run`` writes beside its volumes (JSON): the definition, ``context`` (input, direction,
    ...) and one entry per region."""
    return {"definition": f"connected regions (26-connectivity) of risk >= {threshold:g}, at least {MIN_REGION_ML:g} "
                          f"ml; centre_mm: the centre in scanner RAS mm; position: the same as the patient's sides "
                          f"(R/L, A/P, S/I, mm); detectors: those whose own healthy-calibrated "
                          f"probability reaches {threshold:g} inside the region",
            "threshold": threshold, **context, "regions": [asdict(r) for r in regions]}


def write_report(path: str | Path, report: dict) -> None:
    """Write a region report as JSON (the caller makes it atomic)."""
    Path(path).write_text(json.dumps(report, indent=1), encoding="utf-8")
