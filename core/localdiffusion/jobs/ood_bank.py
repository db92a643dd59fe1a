"""Build a calibrated PatchCore bank from a cohort: fit on healthy *training* slices,
calibrate on healthy *validation* slices (``localdiffusion ood build``).

A bank for the acquisition-robust map (``ood/robust.py``) can be built on what that map's backbone
sees: every volume intensity-standardised onto a robust calibration's landmarks (``reference``), and
with ``augment`` generic acquisition-augmented copies of each training volume
(``volume/acquisition.py``; research/RECORD.md section 9e).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from localdiffusion.data.readers import read_case
from localdiffusion.errors import InputError
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import standardise_intensities
from localdiffusion.volume.acquisition import augment_acquisition
from localdiffusion.volume.cohort import cases_in_split, has_manifest, load_slice_set
from localdiffusion.volume.grid import DEFAULT_IN_PLANE, DEFAULT_SPACING_MM, prepare_case


def build_bank(data: str | Path, modality: str, extractor, *, bank_size: int = 4000, slice_stride: int = 2,
               false_positive_rate: float = 0.01, seed: int = 0, max_val_slices: int = 400,
               reference: np.ndarray | None = None, augment: int = 0) -> PatchCore:
    """The bank of ``data``'s healthy training slices (every ``slice_stride``-th), calibrated on up to
    ``max_val_slices`` healthy validation slices; with ``reference`` or ``augment``, built volume by volume
    (intensity-standardised onto ``reference``, with ``augment`` acquisition-augmented copies each)."""
    kind = "healthy" if has_manifest(data) else None
    if reference is None and not augment:
        train = load_slice_set(data, "train", (modality,), kind=kind).healthy()
        train = train.subset(slice(None, None, slice_stride))
        val = load_slice_set(data, "val", (modality,), kind=kind).healthy()
        train_images, train_brain = train.images[modality], train.brain
        val_images, val_brain = val.images[modality], val.brain
    else:
        train_images, train_brain = _volume_slices(data, "train", kind, modality, reference, augment, seed,
                                                   slice_stride)
        val_images, val_brain = _volume_slices(data, "val", kind, modality, reference, 0, seed, 1)
    if len(val_images) == 0:
        raise InputError(f"{data}: no healthy validation slices to calibrate on")
    pick = np.sort(np.random.default_rng(seed).permutation(len(val_images))[:max_val_slices])
    model = PatchCore.fit(extractor, train_images, train_brain, modality=modality, bank_size=bank_size,
                          seed=seed, grid={"spacing_mm": DEFAULT_SPACING_MM, "in_plane": list(DEFAULT_IN_PLANE)})
    model.calibrate(val_images[pick], val_brain[pick], false_positive_rate)
    if reference is not None or augment:
        model.meta["robust_input"] = {"standardised": reference is not None, "augmented_copies": int(augment)}
    return model


def _volume_slices(data, split: str, kind: str | None, modality: str, reference: np.ndarray | None, augment: int,
                   seed: int, slice_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Brain slices (N, H, W) and masks of ``split``'s cases, each volume and its ``augment`` augmented copies
    standardised onto ``reference`` if given; healthy slices only (a tumour case's slices with a label are left out)."""
    images, masks = [], []
    cases = cases_in_split(data, split, kind)
    if not cases:
        raise InputError(f"{data}: no cases in split {split!r}")
    for number, path in enumerate(tqdm(cases, desc=f"{split} volumes", unit="case")):
        prepared = prepare_case(read_case(path, (modality,)), DEFAULT_SPACING_MM, DEFAULT_IN_PLANE)
        image, brain = prepared.images[modality], prepared.brain
        keep = prepared.brain_slices()
        if prepared.seg is not None:
            keep = keep[~(prepared.seg[:, :, keep] > 0).any((0, 1))]
        keep = keep[::slice_stride]
        rng = np.random.default_rng([seed, number])
        for copy in [image] + [augment_acquisition(image, brain, modality, rng) for _ in range(augment)]:
            if reference is not None:
                copy = standardise_intensities(copy, brain, reference)
            images.append(np.moveaxis(copy[:, :, keep], 2, 0))
            masks.append(np.moveaxis(brain[:, :, keep], 2, 0))
    return np.concatenate(images), np.concatenate(masks)
