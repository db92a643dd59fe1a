"""The working grid: volumes <-> normalised axial slices, and the exact way back.

Holds :class:`WorkingGrid`, :func:`normalise` and :class:`PreparedCase` (a volume on its working grid and
the way back, documented there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from localdiffusion.data.readers import Case
from localdiffusion.errors import InputError
from localdiffusion.volume.brain_mask import STRIP_ADVICE, brain_mask, check_stripped

DEFAULT_SPACING_MM = 2.0
DEFAULT_IN_PLANE = (96, 112)
#: contrast -> (statistic, value it is mapped to); contrasts not listed use DEFAULT_NORMALISATION
NORMALISATION = {"t1": ("p99.5", 1.0)}
DEFAULT_NORMALISATION = ("median", 0.5)
#: a slice is "brain" when at least this fraction of its pixels is foreground
MIN_BRAIN_FRACTION = 0.02


@dataclass(frozen=True)
class WorkingGrid:
    """Axis-aligned RAS grid: ``affine`` maps working voxel (i, j, k) to world mm."""

    affine: np.ndarray
    shape: tuple[int, int, int]

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])


def working_grid(input_affine: np.ndarray, input_shape: tuple[int, ...], foreground: np.ndarray,
                 spacing: float = DEFAULT_SPACING_MM, in_plane: tuple[int, int] = DEFAULT_IN_PLANE,
                 name: object = "input") -> WorkingGrid:
    """Working grid for one input volume; raises :class:`InputError` if the brain does not fit."""
    if any(s % 8 for s in in_plane):
        raise ValueError(f"in-plane size must be divisible by 8, got {in_plane}")
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in input_shape[:3]], indexing="ij")).reshape(3, -1).T
    world_corners = _apply(input_affine, corners)
    fg_vox = np.argwhere(foreground)
    if fg_vox.size == 0:
        raise InputError(f"{name}: no foreground (brain) voxels")
    fg_world = _apply(input_affine, fg_vox[:: max(1, len(fg_vox) // 200_000)].astype(np.float64))
    fg_lo, fg_hi = fg_world.min(0), fg_world.max(0)
    extent = fg_hi[:2] - fg_lo[:2]
    fov = np.array(in_plane) * spacing
    if np.any(extent > fov - 2 * spacing):
        raise InputError(f"{name}: brain extent {extent.round(1).tolist()} mm does not fit the "
                         f"{fov.tolist()} mm working field of view (a skull-stripped adult brain does; {STRIP_ADVICE} "
                         f"if the scan still holds the head)")
    z_lo, z_hi = world_corners[:, 2].min(), world_corners[:, 2].max()
    nz = int(np.floor((z_hi - z_lo) / spacing)) + 1
    centre_xy = (fg_lo[:2] + fg_hi[:2]) / 2.0
    origin = np.empty(3)
    origin[:2] = centre_xy - (np.array(in_plane) - 1) / 2.0 * spacing
    origin[2] = z_lo
    linear = input_affine[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear))) and np.all(np.diag(linear) > 0):
        # axis-aligned RAS input: snap onto its voxel lattice so no sub-voxel shift blurs it
        in_origin, in_spacing = input_affine[:3, 3], np.diag(linear)
        origin = in_origin + np.round((origin - in_origin) / in_spacing) * in_spacing
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return WorkingGrid(affine, (in_plane[0], in_plane[1], nz))


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def resample(volume: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...],
             order: int = 1, antialias: bool = True) -> np.ndarray:
    """Resample ``volume`` (on ``src_affine``) onto the grid ``dst_affine``/``dst_shape``.

    Trilinear (``order=1``) for images, nearest (``order=0``) for labels. When the
    destination is coarser, images are Gaussian-smoothed first (sigma = (ratio - 1) / 2).
    """
    matrix = np.linalg.inv(src_affine) @ dst_affine
    src = np.asarray(volume, dtype=np.float32)
    if antialias and order > 0:
        src_sp = np.linalg.norm(src_affine[:3, :3], axis=0)
        dst_sp = np.linalg.norm(dst_affine[:3, :3], axis=0)
        ratio = dst_sp.max() / src_sp
        sigma = np.maximum(ratio - 1.0, 0.0) / 2.0
        if np.any(sigma > 0.05):
            src = ndimage.gaussian_filter(src, sigma)
    return ndimage.affine_transform(src, matrix[:3, :3], offset=matrix[:3, 3], output_shape=tuple(dst_shape),
                                    order=order, mode="constant", cval=0.0, prefilter=False)


def normalise(volume: np.ndarray, foreground: np.ndarray, name: object = "input",
              modality: str | None = None) -> tuple[np.ndarray, float]:
    """Scale by the contrast's statistic (:data:`NORMALISATION`) and clip to [0, 1].

    Returns (image, scale); ``scale`` is the input intensity that maps to 1.
    """
    values = volume[foreground]
    if values.size == 0:
        raise InputError(f"{name}: no foreground voxels to normalise")
    statistic, level = NORMALISATION.get(modality, DEFAULT_NORMALISATION)
    value = np.median(values) if statistic == "median" else np.percentile(values, float(statistic[1:]))
    scale = float(value) / level
    if not scale > 0:
        raise InputError(f"{name}: foreground intensities are not positive")
    return np.clip(volume / scale, 0.0, 1.0).astype(np.float32), scale


@dataclass
class PreparedCase:
    """A case on its working grid: normalised images (X, Y, Z) in [0, 1], mask, labels.

    A *working grid* is an axis-aligned RAS grid at ``spacing`` mm (default 2 mm) whose
    in-plane size (default 96 x 112 voxels, 192 x 224 mm, divisible by 8) holds the whole
    brain with margin, centred on the brain; along z it covers the input's whole extent.
    Axial slices are ``volume[:, :, k]`` of the working grid, shape (96, 112) = (X: right-left,
    Y: posterior-anterior).

    Intensities are normalised per volume, by contrast (:data:`NORMALISATION`), and clipped to
    [0, 1]; background stays 0. Contrasts where lesions are bright (FLAIR, T2, T1ce): the
    foreground median (brain voxels of the skull-stripped input, see brain_mask.py) is mapped to 0.5. A high
    percentile would be set by the lesion itself and darken all healthy tissue (on the phantom,
    p99.5/median is 1.28 +- 0.07 for healthy FLAIR volumes and up to 2.1 with a glioma).
    Native T1, where gliomas are dark and the top percentiles stay healthy white matter: the
    99.5th foreground percentile is mapped to 1 (p99.5/median 1.60 +- 0.16 healthy, 1.54 +-
    0.12 with a glioma); on the validation split this gave the T1 OOD detector a pixel AUPRC of
    0.170 against 0.106 with the median. Translated volumes are written in this [0, 1] scale.
    """

    case_id: str
    images: dict[str, np.ndarray]
    brain: np.ndarray  # bool, working grid
    seg: np.ndarray | None  # uint8, working grid (nearest neighbour)
    grid: WorkingGrid
    input_affine: np.ndarray
    input_shape: tuple[int, int, int]
    scales: dict[str, float]
    #: the case it was prepared from (what :meth:`on_grid` prepares again on another grid)
    case: Case | None = field(default=None, repr=False, compare=False)

    @property
    def voxel_ml(self) -> float:
        """The volume of one working-grid voxel in ml."""
        return abs(float(np.linalg.det(np.asarray(self.grid.affine, np.float64)[:3, :3]))) / 1000.0

    def on_grid(self, spacing: float, in_plane: tuple[int, int]) -> "PreparedCase":
        """The same case prepared on another working grid (e.g. a finer one for a network that reads it)."""
        if self.case is None:
            raise ValueError(f"{self.case_id}: prepared without its case, it cannot be prepared again")  # programming
        return prepare_case(self.case, spacing, in_plane)

    def brain_slices(self, min_fraction: float = MIN_BRAIN_FRACTION) -> np.ndarray:
        """Indices k of axial slices with at least ``min_fraction`` brain pixels."""
        area = self.brain.mean(axis=(0, 1))
        return np.flatnonzero(area >= min_fraction)

    def to_input_grid(self, volume: np.ndarray, order: int = 1) -> np.ndarray:
        """Map a working-grid volume back onto the input grid (shape and affine of the input)."""
        return resample(volume, self.grid.affine, self.input_affine, self.input_shape, order=order, antialias=False)

    @functools.cached_property
    def input_brain(self) -> np.ndarray:
        """The working-grid brain mask mapped onto the input grid (bool)."""
        return self.to_input_grid(self.brain.astype(np.float32)) >= 0.5

    def to_input_brain(self, volume: np.ndarray) -> np.ndarray:
        """:meth:`to_input_grid`, then 0 outside :attr:`input_brain` (what every output writes)."""
        return np.where(self.input_brain, self.to_input_grid(volume), 0.0).astype(np.float32)


def prepare_case(case: Case, spacing: float = DEFAULT_SPACING_MM, in_plane: tuple[int, int] = DEFAULT_IN_PLANE
                 ) -> PreparedCase:
    """Resample every image of ``case`` to its working grid and normalise it."""
    foreground = np.zeros(case.shape, bool)
    for image in case.images.values():
        foreground |= brain_mask(image)
    check_stripped(foreground, case.affine, case.case_id)
    grid = working_grid(case.affine, case.shape, foreground, spacing, in_plane, name=case.case_id)
    images, scales = {}, {}
    brain = resample(foreground.astype(np.float32), case.affine, grid.affine, grid.shape, order=1) >= 0.5
    if not brain.any():
        raise InputError(f"{case.case_id}: foreground vanishes at {spacing} mm (volume too small for the network)")
    for modality, image in case.images.items():
        working = resample(image, case.affine, grid.affine, grid.shape, order=1)
        images[modality], scales[modality] = normalise(working, brain, name=f"{case.case_id} {modality}",
                                                              modality=modality)
        images[modality][~brain] = 0.0
    seg = None
    if case.seg is not None:
        seg = resample(case.seg, case.affine, grid.affine, grid.shape, order=0).astype(np.uint8)
    return PreparedCase(case.case_id, images, brain, seg, grid, case.affine, case.shape, scales, case)
