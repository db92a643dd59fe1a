"""Readers for BraTS 2020/2021, BraTS 2023 and MSD Task01 into one :class:`Case`.

Canonical modality names are ``t1``, ``t1ce``, ``t2`` and ``flair``; labels are mapped to
the BraTS 2021 convention: 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing.

Layouts:

* BraTS 2020/2021: ``CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz``
* BraTS 2023: ``CASE/CASE-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (label 3 = enhancing)
* MSD Task01: ``imagesTr/CASE.nii.gz`` 4D (FLAIR, T1w, T1gd, T2w) and
  ``labelsTr/CASE.nii.gz`` (1 oedema, 2 non-enhancing, 3 enhancing)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from localdiffusion.data.io import check_same_geometry, load_label, load_volume, validate_array
from localdiffusion.errors import InputError

MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS2021_SUFFIX = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
BRATS2023_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MSD_CHANNEL = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
#: label maps to the BraTS 2021 convention
BRATS2021_LABELS = {0: 0, 1: 1, 2: 2, 4: 4}  # already ours: 1 necrosis, 2 oedema, 4 enhancing
BRATS2023_LABELS = {0: 0, 1: 1, 2: 2, 3: 4}
MSD_LABELS = {0: 0, 1: 2, 2: 1, 3: 4}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Case:
    """One subject: co-registered 3D images sharing ``affine``.

    ``images[m]`` is a float32 array (X, Y, Z) in scanner intensities; ``seg`` is uint8 in
    the BraTS 2021 convention or ``None`` when the layout has no label file.
    """

    case_id: str
    images: dict[str, np.ndarray]
    affine: np.ndarray
    seg: np.ndarray | None = None
    layout: str = "brats2021"
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def detect_layout(path: str | Path) -> str:
    """Return ``brats2021``, ``brats2023`` or ``msd`` for a case folder or MSD image file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: case not found")
    if path.is_file():
        return "msd"
    name = path.name
    if _find(path, f"{name}_t1") or _find(path, f"{name}_flair") or _find(path, f"{name}_seg"):
        return "brats2021"
    if _find(path, f"{name}-t1n") or _find(path, f"{name}-t2f") or _find(path, f"{name}-seg"):
        return "brats2023"
    raise InputError(f"{path}: no BraTS 2020/2021 (CASE_t1.nii.gz) or 2023 (CASE-t1n.nii.gz) files found")


def source_file(folder: str | Path, modality: str) -> Path:
    """The file of ``modality`` in a BraTS case folder (2020/2021 or 2023 naming); when it is
    missing, the path it should have (reading it then names the problem for this case only)."""
    folder = Path(folder)
    sep, suffixes = ("_", BRATS2021_SUFFIX) if detect_layout(folder) == "brats2021" else ("-", BRATS2023_SUFFIX)
    stem = f"{folder.name}{sep}{suffixes[modality]}"
    return _find(folder, stem) or folder / f"{stem}.nii.gz"


def label_file(folder: str | Path, layout: str | None = None) -> Path | None:
    """The label map of a BraTS case folder (``CASE_seg`` or, in 2023 naming, ``CASE-seg``), or None.
    ``layout``: the folder's (:func:`detect_layout`), when already known."""
    folder = Path(folder)
    sep = "_" if (layout or detect_layout(folder)) == "brats2021" else "-"
    return _find(folder, f"{folder.name}{sep}seg")


def read_case(path: str | Path, modalities: Sequence[str] = ("t1", "flair"), *, with_seg: bool = True) -> Case:
    """Read ``modalities`` (and the label map) of one case in any supported layout."""
    for m in modalities:
        if m not in MODALITIES:
            raise InputError(f"unknown modality {m!r}; expected one of {MODALITIES}")
    layout = detect_layout(path)
    if layout == "msd":
        return _read_msd(Path(path), modalities, with_seg)
    return _read_brats_folder(Path(path), modalities, with_seg, layout)


def _read_brats_folder(folder: Path, modalities: Sequence[str], with_seg: bool, layout: str) -> Case:
    sep, suffixes = ("_", BRATS2021_SUFFIX) if layout == "brats2021" else ("-", BRATS2023_SUFFIX)
    name = folder.name
    images, paths = {}, {}
    affine = shape = None
    first = None
    for m in modalities:
        stem = f"{name}{sep}{suffixes[m]}"
        p = _find(folder, stem)
        if p is None:
            raise InputError(f"{folder / (stem + '.nii.gz')}: missing modality {m!r}")
        data, aff = load_volume(p)
        if affine is None:
            affine, shape, first = aff, data.shape, p
        else:
            check_same_geometry(p, data.shape, aff, first, shape, affine)
        images[m], paths[m] = data, p
    seg = None
    if with_seg:
        p = label_file(folder, layout)
        if p is not None:
            seg = load_label(p, shape, affine)
            seg = _remap(seg, BRATS2023_LABELS if layout == "brats2023" else BRATS2021_LABELS, p)
            paths["seg"] = p
    return Case(name, images, affine, seg, layout, paths)


def _read_msd(image_path: Path, modalities: Sequence[str], with_seg: bool) -> Case:
    if not image_path.name.endswith(NIFTI_SUFFIXES):
        raise InputError(f"{image_path}: not a NIfTI file")
    try:
        image = nib.load(str(image_path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"{image_path}: corrupt or unreadable NIfTI ({exc.__class__.__name__}: {exc})") from exc
    if data.ndim != 4 or data.shape[3] != 4:
        raise InputError(f"{image_path}: MSD Task01 expects a 4D volume with 4 channels, got {data.shape}")
    affine = image.affine.astype(np.float64)
    images = {}
    for m in modalities:
        images[m] = np.ascontiguousarray(data[..., MSD_CHANNEL[m]])
        validate_array(images[m], f"{image_path} channel {MSD_CHANNEL[m]} ({m})")
    case_id = image_path.name
    for suffix in NIFTI_SUFFIXES:
        case_id = case_id.removesuffix(suffix)
    paths = {m: image_path for m in modalities}
    seg = None
    label_path = image_path.parent.parent / "labelsTr" / image_path.name
    if with_seg and label_path.exists():
        seg = _remap(load_label(label_path, data.shape[:3], affine), MSD_LABELS, label_path)
        paths["seg"] = label_path
    return Case(case_id, images, affine, seg, "msd", paths)


def _remap(seg: np.ndarray, mapping: dict[int, int], path: Path) -> np.ndarray:
    unknown = set(np.unique(seg).tolist()) - set(mapping)
    if unknown:
        raise InputError(f"{path}: unexpected label values {sorted(unknown)}")
    lut = np.zeros(256, dtype=np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut[seg]


def list_cases(root: str | Path) -> list[Path]:
    """Case folders (BraTS layouts) or image files (MSD ``imagesTr``) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    if (root / "imagesTr").is_dir():
        return sorted(p for p in (root / "imagesTr").iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
    cases = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            try:
                detect_layout(p)
            except InputError:
                continue
            cases.append(p)
    return cases
