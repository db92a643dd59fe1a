"""Lesion families a test set is drawn from, independently of the training phantom's gliomas.

The training phantom (family ``training``) has one tumour model and fixed healthy tissue values
at 3 T. A test family changes everything a default could have been fitted to: the healthy
relaxation times are drawn per subject from published ranges at 1.5 T or 3 T, and the lesions
come from another geometric model with their own tissue ranges (``docs/phantom.md``, "Lesion
families"). Lesion tissue is drawn relative to the subject's healthy tissue, as the literature
reports it (oedema T1 near grey matter, necrosis and cavity fluid near CSF, MS lesions 15-60%
above white matter).

| family | geometry | BraTS labels |
|---|---|---|
| ``glioma`` | lobulated union of 2-4 ellipsoids in white matter, enhancing rim, necrotic core, finger-like oedema along white matter | 1, 2, 4 |
| ``metastasis`` | 1-5 spheres at the grey-white junction, thin enhancing ring, oedema up to three radii | 1 (large ones), 2, 4 |
| ``ms`` | 3-20 periventricular ovoids, long axis pointing away from the ventricle | 2 |
| ``cavity`` | a fluid-filled resection cavity near the cortex with a gliotic rim, sometimes residual enhancement | 1 (cavity), 2, 4 |

Every family returns the same four partial-volume fields the generator mixes: core (enhancing
plus necrotic/fluid), necrosis, and the lesion's reach into white and into grey matter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from localdiffusion.errors import InputError
from localdiffusion.phantom.anatomy import brain_depth_mm, cerebral_mm, load_anatomy, tumour_seed_candidates
from localdiffusion.phantom.physics import Tissue

#: ``training``: the training phantom's gliomas and fixed 3 T tissues (phantom/tumour.py, physics.py)
FAMILIES = ("training", "glioma", "metastasis", "ms", "cavity")
TEST_FAMILIES = FAMILIES[1:]

#: Healthy tissue ranges (T1 ms, T2 ms, PD) per field strength, spanning the published in-vivo values
#: (1.5 T: Vymazal et al. 1999, Stanisz et al. 2005; 3 T: Wansapura et al. 1999, Stanisz et al. 2005,
#: Lu et al. 2005); a subject draws one value per range.
HEALTHY_RANGES = {
    1.5: {"wm": ((600.0, 890.0), (70.0, 90.0), (0.65, 0.72)),
          "gm": ((1000.0, 1250.0), (90.0, 110.0), (0.78, 0.86)),
          "csf": ((3500.0, 4500.0), (1500.0, 2200.0), (0.97, 1.0))},
    3.0: {"wm": ((830.0, 1100.0), (60.0, 80.0), (0.65, 0.72)),
          "gm": ((1330.0, 1820.0), (80.0, 100.0), (0.78, 0.86)),
          "csf": ((3700.0, 4500.0), (1500.0, 2200.0), (0.97, 1.0))},
}

#: Lesion tissues per family as ratios to the subject's own healthy tissue: slot -> (reference tissue,
#: T1 ratio range, T2 ratio range, PD range). Slots are the generator's ``oedema``, ``enhancing`` and
#: ``necrosis`` (for ``ms`` the lesion, for ``cavity`` the gliotic rim, residual enhancement and fluid).
LESION_RATIOS = {
    "glioma": {"oedema": ("gm", (0.95, 1.30), (1.3, 2.2), (0.82, 0.92)),
               "enhancing": ("gm", (1.05, 1.40), (1.2, 1.9), (0.80, 0.90)),
               "necrosis": ("csf", (0.60, 0.95), (0.15, 0.60), (0.88, 0.98))},
    "metastasis": {"oedema": ("gm", (0.95, 1.30), (1.3, 2.2), (0.82, 0.92)),
                   "enhancing": ("gm", (1.00, 1.35), (1.1, 1.8), (0.80, 0.90)),
                   "necrosis": ("csf", (0.55, 0.90), (0.15, 0.50), (0.88, 0.98))},
    "ms": {"oedema": ("wm", (1.15, 1.60), (1.3, 2.1), (0.72, 0.85)),
           "enhancing": ("wm", (1.15, 1.60), (1.3, 2.1), (0.72, 0.85)),
           "necrosis": ("wm", (1.60, 2.40), (1.8, 3.0), (0.80, 0.90))},
    "cavity": {"oedema": ("wm", (1.20, 1.60), (1.4, 2.2), (0.75, 0.88)),
               "enhancing": ("gm", (1.00, 1.30), (1.1, 1.7), (0.80, 0.90)),
               "necrosis": ("csf", (0.80, 1.00), (0.50, 1.00), (0.95, 1.00))},
}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise InputError(f"unknown lesion family {family!r}; choose from {', '.join(FAMILIES)}")
    return family


def draw_field_tissues(rng: np.random.Generator, family: str) -> tuple[float, dict[str, Tissue]]:
    """Field strength (1.5 or 3 T) and every tissue of a test-family subject, healthy ones from
    :data:`HEALTHY_RANGES`, lesion ones from :data:`LESION_RATIOS` against them."""
    field = float(rng.choice([1.5, 3.0]))
    tissues = {name: Tissue(*(float(rng.uniform(lo, hi)) for lo, hi in ranges))
               for name, ranges in HEALTHY_RANGES[field].items()}
    for slot, (ref, t1, t2, pd) in LESION_RATIOS[family].items():
        base = tissues[ref]
        tissues[slot] = Tissue(base.t1 * float(rng.uniform(*t1)), base.t2 * float(rng.uniform(*t2)),
                               float(rng.uniform(*pd)))
    return field, tissues


@dataclass(frozen=True)
class Blob:
    """One ellipsoid of a lesion in template mm: ``axes`` are semi-axes along the rows of ``rotation``."""

    centre_mm: tuple[float, float, float]
    axes_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]
    rim_mm: float  # enhancing rim; 0: no enhancement
    necrotic: bool  # interior beyond the rim is the necrosis slot (fluid for a cavity)
    reach_mm: float  # lesion reach beyond the core into white matter (oedema, gliosis); 0: none
    gm_reach: float  # fraction of the reach that enters grey matter
    core: bool  # False: the blob itself is reach-slot tissue (an MS lesion), not a core
    mass_effect: float = 0.0  # fraction of the mean semi-axis by which tissue is pushed outward

    def as_dict(self) -> dict:
        return {"centre_mm": list(self.centre_mm), "axes_mm": list(self.axes_mm), "rim_mm": self.rim_mm,
                "necrotic": self.necrotic, "reach_mm": self.reach_mm, "gm_reach": self.gm_reach, "core": self.core,
                "mass_effect": self.mass_effect}


def _rotation(rng: np.random.Generator) -> tuple:
    return tuple(map(tuple, Rotation.random(random_state=int(rng.integers(2**31))).as_matrix().round(6)))


def _aligned(direction: np.ndarray) -> tuple:
    """A rotation whose first row is ``direction``."""
    d = direction / max(np.linalg.norm(direction), 1e-6)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return tuple(map(tuple, np.stack([d, u, np.cross(d, u)]).round(6)))


@functools.lru_cache(maxsize=1)
def _junction_candidates() -> np.ndarray:
    """MNI mm of cerebral grey-white junction voxels at least 8 mm inside the brain (metastasis seeds)."""
    anatomy = load_anatomy()
    inner = brain_depth_mm() > 8.0
    return cerebral_mm((anatomy.wm > 0.3) & (anatomy.wm < 0.7) & (anatomy.gm > 0.25) & inner)


@functools.lru_cache(maxsize=1)
def _periventricular_candidates() -> tuple[np.ndarray, np.ndarray]:
    """MNI mm of white matter 2-10 mm from the lateral ventricles, and the unit direction away from them."""
    anatomy = load_anatomy()
    ventricle = (anatomy.csf > 0.8) & (brain_depth_mm() > 25.0)  # deep: ventricles, not sulci
    ventricle = ndimage.binary_opening(ventricle, iterations=1)
    dist = ndimage.distance_transform_edt(~ventricle)
    ijk = np.argwhere((dist >= 2.0) & (dist <= 10.0) & (anatomy.wm > 0.6))
    grad = np.stack(np.gradient(ndimage.gaussian_filter(dist, 2.0)))[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]].T
    mm = nib.affines.apply_affine(anatomy.affine, ijk).astype(np.float32)
    keep = mm[:, 2] > 0.0  # cerebral, above the temporal horns' floor
    grad = grad * np.sign(np.diag(anatomy.affine)[:3])
    return mm[keep], (grad[keep] / np.maximum(np.linalg.norm(grad[keep], axis=1, keepdims=True), 1e-6)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _cortex_candidates() -> np.ndarray:
    """MNI mm of cerebral white matter 10-25 mm below the brain surface (resection cavity centres)."""
    anatomy = load_anatomy()
    depth = brain_depth_mm()
    mm = nib.affines.apply_affine(anatomy.affine, np.argwhere((depth >= 10.0) & (depth <= 25.0) & (anatomy.wm > 0.5)))
    return mm[mm[:, 2] > 0.0].astype(np.float32)


def _far_enough(centre: np.ndarray, size: float, blobs: list[Blob], gap: float = 4.0) -> bool:
    return all(np.linalg.norm(centre - np.asarray(b.centre_mm)) > size + max(b.axes_mm) + b.reach_mm * 0.5 + gap
               for b in blobs)


def draw_blobs(rng: np.random.Generator, family: str) -> list[Blob]:
    """The lesions of one test-family subject (template mm)."""
    blobs: list[Blob] = []
    if family == "glioma":
        seeds = tumour_seed_candidates()
        centre = seeds[rng.integers(len(seeds))]
        rim, reach = float(rng.uniform(1.5, 4.0)), float(rng.uniform(5.0, 30.0))
        for i in range(int(rng.integers(2, 5))):
            offset = rng.normal(0.0, 6.0, 3) if i else np.zeros(3)
            axes = tuple(float(a) for a in rng.uniform(6.0, 22.0, 3))
            blobs.append(Blob(tuple(float(c) for c in centre + offset), axes, _rotation(rng), rim, True, reach,
                              float(rng.uniform(0.1, 0.3)), True, float(rng.uniform(0.0, 0.3))))
    elif family == "metastasis":
        seeds = _junction_candidates()
        count = int(rng.integers(1, 6))
        for _ in range(200):
            if len(blobs) == count:
                break
            centre = seeds[rng.integers(len(seeds))]
            radius = float(rng.uniform(3.0, 15.0))
            if not _far_enough(centre, radius, blobs):
                continue
            axes = tuple(radius * float(s) for s in rng.uniform(0.85, 1.15, 3))
            blobs.append(Blob(tuple(float(c) for c in centre), axes, _rotation(rng), float(rng.uniform(1.0, 3.0)),
                              radius > 6.0, min(float(rng.uniform(1.0, 3.0)) * radius, 35.0),
                              float(rng.uniform(0.1, 0.3)), True, float(rng.uniform(0.0, 0.2))))
    elif family == "ms":
        seeds, directions = _periventricular_candidates()
        count = int(rng.integers(3, 21))
        for _ in range(500):
            if len(blobs) == count:
                break
            i = rng.integers(len(seeds))
            long_axis, short = float(rng.uniform(3.0, 9.0)), float(rng.uniform(1.5, 4.0))
            if not _far_enough(seeds[i], long_axis, blobs, gap=1.0):
                continue
            axes = (long_axis, short, short * float(rng.uniform(0.8, 1.2)))
            blobs.append(Blob(tuple(float(c) for c in seeds[i]), axes, _aligned(directions[i]), 0.0, False, 0.0, 0.3,
                              False))
    elif family == "cavity":
        seeds = _cortex_candidates()
        centre = seeds[rng.integers(len(seeds))]
        axes = tuple(float(a) for a in rng.uniform(8.0, 22.0, 3))
        rim = float(rng.uniform(1.0, 2.0)) if rng.random() < 0.3 else 0.0
        blobs.append(Blob(tuple(float(c) for c in centre), axes, _rotation(rng), rim, True,
                          float(rng.uniform(2.0, 8.0)), float(rng.uniform(0.3, 0.6)), True))
    else:
        raise InputError(f"{family!r} is not a test lesion family; choose from {', '.join(TEST_FAMILIES)}")
    return blobs


def blob_fractions(points_mm: np.ndarray, blobs: list[Blob], noise: np.ndarray, spacing: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Partial-volume fractions (N,) of core, necrosis, and the reach into WM and into GM.

    ``noise`` (2, N) unit-variance smooth noise roughens the boundary (row 0) and the reach's front
    (row 1). Only points near a blob are evaluated.
    """
    n = points_mm.shape[0]
    core, necrosis = np.zeros(n, np.float32), np.zeros(n, np.float32)
    reach_wm, reach_gm = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ramp = 1.0 / spacing
    for blob in blobs:
        c = np.asarray(blob.centre_mm, np.float32)
        extent = max(blob.axes_mm) * 1.3 + blob.reach_mm * 1.4 + 2.0 * spacing
        near = np.flatnonzero(np.all(np.abs(points_mm - c) <= extent, axis=1))
        if near.size == 0:
            continue
        local = (points_mm[near] - c) @ np.asarray(blob.rotation, np.float32).T  # coordinates along the axes
        scaled = np.linalg.norm(local / np.asarray(blob.axes_mm, np.float32), axis=1)
        dist = scaled + 0.12 * noise[0, near]
        depth_mm = (1.0 - dist) * float(np.mean(blob.axes_mm))  # > 0 inside the blob
        inside = np.clip(depth_mm * ramp + 0.5, 0.0, 1.0)
        if blob.core:
            core[near] = np.maximum(core[near], inside)
            if blob.necrotic:
                interior = np.clip((depth_mm - blob.rim_mm) * ramp + 0.5, 0.0, 1.0)
                necrosis[near] = np.maximum(necrosis[near], interior)
        else:  # the blob is reach tissue itself (white and grey matter replaced alike, scaled by gm_reach)
            reach_wm[near] = np.maximum(reach_wm[near], inside)
            reach_gm[near] = np.maximum(reach_gm[near], inside * blob.gm_reach)
        if blob.reach_mm > 0:
            outside = np.maximum(-depth_mm, 0.0)
            front = blob.reach_mm * (1.0 + 0.5 * noise[1, near])
            reach_wm[near] = np.maximum(reach_wm[near], np.clip(1.0 - outside / np.maximum(front, 1e-3), 0.0, 1.0))
            gm_front = np.maximum(blob.gm_reach * front, 1e-3)
            reach_gm[near] = np.maximum(reach_gm[near], np.clip(1.0 - outside / gm_front, 0.0, 1.0))
    return core, np.minimum(necrosis, core), reach_wm, reach_gm
