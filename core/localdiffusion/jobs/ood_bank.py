"""Build a calibrated PatchCore bank from a cohort: fit on healthy *training* slices,
calibrate on healthy *validation* slices (``localdiffusion ood build``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from localdiffusion.errors import InputError
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.volume.cohort import has_manifest, load_slice_set
from localdiffusion.volume.grid import DEFAULT_IN_PLANE, DEFAULT_SPACING_MM


def build_bank(data: str | Path, modality: str, extractor, *, bank_size: int = 4000, slice_stride: int = 2,
               false_positive_rate: float = 0.01, seed: int = 0, max_val_slices: int = 400) -> PatchCore:
    kind = "healthy" if has_manifest(data) else None
    train = load_slice_set(data, "train", (modality,), kind=kind).healthy()
    train = train.subset(slice(None, None, slice_stride))
    val = load_slice_set(data, "val", (modality,), kind=kind).healthy()
    if len(val) == 0:
        raise InputError(f"{data}: no healthy validation slices to calibrate on")
    pick = np.sort(np.random.default_rng(seed).permutation(len(val))[:max_val_slices])
    val = val.subset(pick)
    model = PatchCore.fit(extractor, train.images[modality], train.brain, modality=modality, bank_size=bank_size,
                          seed=seed, grid={"spacing_mm": DEFAULT_SPACING_MM, "in_plane": list(DEFAULT_IN_PLANE)})
    model.calibrate(val.images[modality], val.brain, false_positive_rate)
    return model
