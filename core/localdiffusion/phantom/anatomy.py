"""Tissue-fraction templates from nilearn's MNI ICBM152 2009 (symmetric) maps at 1 mm.

GM and WM probability maps ship with nilearn; CSF = brain mask - GM - WM, clipped to
[0, 1]. No download is needed: the files are inside the nilearn package.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions on the template grid, each (X, Y, Z) float32 in [0, 1]."""

    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    affine: np.ndarray  # template voxel -> MNI mm

    def stack(self) -> np.ndarray:
        """(4, X, Y, Z): wm, gm, csf, brain."""
        return np.stack([self.wm, self.gm, self.csf, self.brain])


def _nilearn_data_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


@functools.lru_cache(maxsize=4)
def load_anatomy(smoothing_mm: float = 0.0) -> Anatomy:
    """Load the template fractions; ``smoothing_mm`` (Gaussian sigma) anti-aliases coarse grids."""
    from nilearn.datasets import load_mni152_brain_mask

    folder = _nilearn_data_dir()
    maps = {}
    for name in ("gm", "wm"):
        img = nib.load(str(folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
        maps[name] = np.clip(np.asarray(img.dataobj, dtype=np.float32) / 255.0, 0.0, 1.0)
        affine = img.affine
    brain = np.asarray(load_mni152_brain_mask(resolution=1).dataobj, dtype=np.float32)
    brain = np.clip(np.maximum(brain, maps["gm"] + maps["wm"] > 0.5), 0.0, 1.0).astype(np.float32)
    wm = maps["wm"] * brain
    gm = np.minimum(maps["gm"], 1.0 - wm) * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    fields = [wm, gm, csf, brain]
    if smoothing_mm > 0:
        fields = [ndimage.gaussian_filter(f, smoothing_mm) for f in fields]
    return Anatomy(*[np.ascontiguousarray(f, dtype=np.float32) for f in fields], affine=affine.astype(np.float64))


@functools.lru_cache(maxsize=1)
def tumour_seed_candidates(min_wm: float = 0.9, edge_margin_mm: float = 10.0) -> np.ndarray:
    """MNI coordinates (N, 3) in mm of deep cerebral white-matter voxels (tumour seeds).

    Cerebral: excludes cerebellum and brainstem by MNI position (below z = -5 mm only
    anterior to y = -35 mm, down to z = -25 mm); at least ``edge_margin_mm`` inside the brain.
    """
    anatomy = load_anatomy()
    inner = brain_depth_mm() > edge_margin_mm
    return cerebral_mm((anatomy.wm >= min_wm) & inner)


@functools.lru_cache(maxsize=1)
def brain_depth_mm() -> np.ndarray:
    """(X, Y, Z) distance in mm of each template voxel below the brain surface (the template is 1 mm)."""
    return ndimage.distance_transform_edt(load_anatomy().brain > 0.5)


def cerebral_mm(selected: np.ndarray) -> np.ndarray:
    """MNI coordinates (N, 3) in mm of the ``selected`` template voxels in the cerebrum: cerebellum and
    brainstem are left out by MNI position (below z = -5 mm only anterior to y = -35 mm, down to z = -25 mm)."""
    mm = nib.affines.apply_affine(load_anatomy().affine, np.argwhere(selected))
    x, y, z = mm.T
    return mm[(z > -5.0) | ((z > -25.0) & (y > -35.0))].astype(np.float32)
