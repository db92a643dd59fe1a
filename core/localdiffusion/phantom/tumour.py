"""Synthetic gliomas: necrotic core, enhancing rim, oedema along white matter, mass effect.

A lesion is a noisy distance field around a seed in deep cerebral white matter. All
geometry lives in template (MNI) millimetres, so lesions move with the subject's pose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from localdiffusion.phantom.anatomy import tumour_seed_candidates


@dataclass(frozen=True)
class Lesion:
    centre_mm: tuple[float, float, float]
    core_radius_mm: float  # enhancing + necrotic core
    rim_mm: float  # enhancing rim thickness
    oedema_mm: float  # oedema reach beyond the core, along white matter
    irregularity: float  # amplitude of the noise added to the normalised distance
    mass_effect: float  # fraction of the core radius by which tissue is pushed outward

    def as_dict(self) -> dict:
        return {k: (list(map(float, v)) if isinstance(v, tuple) else float(v)) for k, v in asdict(self).items()}


def draw_lesions(rng: np.random.Generator) -> list[Lesion]:
    """One to three lesions, each 1 to 6 cm across (core plus oedema)."""
    count = int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.10]))
    candidates = tumour_seed_candidates()
    lesions: list[Lesion] = []
    max_core = 25.0 if count == 1 else 14.0
    for _ in range(200):
        if len(lesions) == count:
            break
        centre = candidates[rng.integers(len(candidates))]
        core = float(rng.uniform(5.0, max_core))
        oedema = float(min(rng.uniform(3.0, 12.0), 30.0 - core))
        reach = core + oedema
        if any(np.linalg.norm(centre - np.array(l.centre_mm)) < reach + l.core_radius_mm + l.oedema_mm for l in lesions):
            continue
        lesions.append(Lesion(
            centre_mm=tuple(float(c) for c in centre),
            core_radius_mm=core,
            rim_mm=float(rng.uniform(2.0, 5.0)),
            oedema_mm=oedema,
            irregularity=float(rng.uniform(0.08, 0.22)),
            mass_effect=float(rng.uniform(0.2, 0.5)),
        ))
    return lesions


def displace_for_mass_effect(points_mm: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """Template points (N, 3) to sample tissue from so that tissue is pushed outward.

    For a lesion at ``c`` with core radius ``R``, a point at radius ``r`` samples the
    template at radius ``r (1 - k exp(-r^2 / (2 (1.5 R)^2)))`` with ``k < 1``: monotone in
    ``r`` (no folding) and the identity far from the lesion.
    """
    out = points_mm.copy()
    for lesion in lesions:
        c = np.asarray(lesion.centre_mm, dtype=np.float32)
        d = out - c
        r2 = np.einsum("ij,ij->i", d, d)
        sigma = 1.5 * lesion.core_radius_mm
        shrink = 1.0 - lesion.mass_effect * np.exp(-r2 / (2.0 * sigma * sigma))
        out = c + d * shrink[:, None]
    return out


def lesion_fractions(points_mm: np.ndarray, lesions: list[Lesion], noise: np.ndarray, spacing: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Partial-volume fractions (N,) of core, necrosis, and oedema reach in WM and in GM.

    ``noise`` is (2, N) unit-variance smooth noise: row 0 roughens the core boundary,
    row 1 the oedema front. Oedema reaches ``oedema_mm`` into white matter and only a
    quarter of that into grey matter, so it spreads mainly along white matter.
    """
    n = points_mm.shape[0]
    core = np.zeros(n, np.float32)
    necrosis = np.zeros(n, np.float32)
    reach_wm = np.zeros(n, np.float32)
    reach_gm = np.zeros(n, np.float32)
    ramp = 1.0 / spacing  # one voxel of partial volume at the boundary
    for lesion in lesions:
        radius = lesion.core_radius_mm
        r = np.linalg.norm(points_mm - np.asarray(lesion.centre_mm, np.float32), axis=1)
        dist = r / radius + lesion.irregularity * noise[0]  # normalised, noisy distance
        depth_mm = (1.0 - dist) * radius  # > 0 inside the core
        core = np.maximum(core, np.clip(depth_mm * ramp + 0.5, 0.0, 1.0))
        if radius > 1.5 * lesion.rim_mm:
            necrosis = np.maximum(necrosis, np.clip((depth_mm - lesion.rim_mm) * ramp + 0.5, 0.0, 1.0))
        outside_mm = np.maximum(-depth_mm, 0.0)
        front = lesion.oedema_mm * (1.0 + 0.35 * noise[1])
        reach_wm = np.maximum(reach_wm, np.clip(1.0 - outside_mm / np.maximum(front, 1e-3), 0.0, 1.0))
        reach_gm = np.maximum(reach_gm, np.clip(1.0 - outside_mm / np.maximum(0.25 * front, 1e-3), 0.0, 1.0))
    return core, np.minimum(necrosis, core), reach_wm, reach_gm
