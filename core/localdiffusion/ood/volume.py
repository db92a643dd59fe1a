"""Volume-level OOD: build a calibrated bank from a cohort, map a NIfTI volume.

``build_bank`` fits on healthy *training* slices and calibrates on healthy *validation*
slices; ``map_volume`` writes the OOD probability map (input geometry) and the binary
mask at the calibrated threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import InputError, save_volume
from ..slice_data import has_manifest, load_slice_set
from ..slices import DEFAULT_IN_PLANE, DEFAULT_SPACING_MM, PreparedCase
from .features import DiffusionEncoderExtractor, FeatureExtractor
from .patchcore import PatchCore

#: with ImageNet (or a local weights file): the PatchCore paper's backbone and stages
PRETRAINED_DEFAULT = ("wide_resnet50_2", ("layer2", "layer3"))
#: offline (random init, BatchNorm recalibrated): chosen by pixel AUPRC on the phantom's
#: tumour validation split among the options in docs/BENCHMARK.md
OFFLINE_DEFAULT = ("resnet18", ("layer1", "layer2"))


def make_extractor(backbone: str | None = None, weights: str = "random", *, layers=None,
                   input_scale: float = 2.0, projection_dim: int | None = None, seed: int = 0):
    """Feature extractor; ``weights='diffusion:<model dir>'`` selects the diffusion U-Net encoder.

    ``backbone``/``layers`` default to :data:`OFFLINE_DEFAULT` for random weights and to
    :data:`PRETRAINED_DEFAULT` for ``imagenet`` or a weights file.
    """
    if weights.startswith("diffusion:"):
        return DiffusionEncoderExtractor(weights.split(":", 1)[1])
    default_backbone, default_layers = OFFLINE_DEFAULT if weights == "random" else PRETRAINED_DEFAULT
    return FeatureExtractor(backbone or default_backbone, tuple(layers or default_layers), weights=weights,
                            input_scale=input_scale, projection_dim=projection_dim, seed=seed)


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


def probability_volume(model: PatchCore, prepared: PreparedCase) -> np.ndarray:
    """OOD probability on the working grid (X, Y, Z); 0 outside brain slices."""
    modality = model.meta["modality"]
    ks = prepared.brain_slices()
    slices = np.moveaxis(prepared.images[modality][:, :, ks], 2, 0)
    brain = np.moveaxis(prepared.brain[:, :, ks], 2, 0)
    prob, _ = model.probability(slices, brain)
    volume = np.zeros(prepared.grid.shape, np.float32)
    volume[:, :, ks] = np.moveaxis(prob, 0, 2)
    return volume


def bank_grid(model: PatchCore) -> tuple[float, tuple[int, int]]:
    """The working grid (spacing mm, in-plane size) the bank was fitted on."""
    meta = model.meta
    return float(meta.get("spacing_mm", DEFAULT_SPACING_MM)), tuple(meta.get("in_plane", meta["slice_size"]))


def map_volume(input_path: str | Path, bank_path: str | Path, out_path: str | Path,
               mask_path: str | Path | None = None, modality: str | None = None) -> tuple[Path, Path]:
    """Write the OOD probability map and the binary mask (``*_mask.nii.gz`` by default).

    ``modality`` (optional) is the input's contrast; it must match the bank's.
    """
    from ..translate import prepare_input

    model = PatchCore.load(bank_path, modality=modality)
    prepared = prepare_input(input_path, model.meta["modality"], *bank_grid(model))
    prob = prepared.to_input_brain(probability_volume(model, prepared))
    out_path = Path(out_path)
    if mask_path is None:
        name = out_path.name.removesuffix(".nii.gz").removesuffix(".nii")
        mask_path = out_path.with_name(f"{name}_mask.nii.gz")
    save_volume(out_path, prob, prepared.input_affine, protect=[input_path])
    save_volume(mask_path, (prob >= model.threshold).astype(np.uint8), prepared.input_affine, protect=[input_path])
    return out_path, Path(mask_path)
