"""Volume input/output with validation and atomic writes (formats: :mod:`.formats`).

Every reader here raises :class:`InputError` naming the file and the problem; the CLI
turns it into a message and a non-zero exit code. Every writer writes to a temporary
file in the destination folder and renames it into place, so a crash never leaves a
partial output, and refuses to overwrite a file that was an input of the same run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from localdiffusion.data.formats import (FOLDER_FORMAT, SUFFIX_FORMATS, read_image, split_suffix, volume_format,
                                         write_image)
from localdiffusion.errors import InputError

#: Two affines are "the same geometry" when every entry agrees within this (mm).
AFFINE_TOLERANCE_MM = 1e-3


def load_volume(path: str | os.PathLike, *, expect_3d: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume (NIfTI, MGZ, NRRD, MetaImage or a DICOM series folder) as ``(float32
    array, 4x4 RAS affine)`` and validate it.

    Raises :class:`InputError` for a missing, unreadable or truncated file, a 4D volume
    where 3D is expected, a singular geometry, NaN or infinite voxels, and an all-zero volume.
    """
    path = Path(path)
    check_exists(path)
    if not path.is_file() and volume_format(path) != FOLDER_FORMAT:
        raise InputError(f"{path}: not a file")
    raw, affine = read_image(path)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the header's voxel-to-world matrix is singular or not finite (no usable geometry)")
    if raw.dtype.names is not None or raw.dtype.kind not in "biuf":
        raise InputError(f"{path}: voxels of type {raw.dtype.names or raw.dtype} (a colour, vector or complex image, "
                         "not an MR magnitude volume)")
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4:
        big = np.isfinite(raw) & (np.abs(raw) > np.finfo(np.float32).max)
        if big.any():
            raise InputError(f"{path}: {int(big.sum())} voxels exceed the float32 range (largest {np.abs(raw[big]).max():.3g})")
    data = raw.astype(np.float32)
    if expect_3d:
        data = _squeeze_to_3d(data, path)
    validate_array(data, path)
    return data, affine


def check_exists(path: Path) -> None:
    """A clear message for a missing file and for a symbolic link that leads nowhere."""
    try:
        path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(f"{path}: broken symbolic link (its target does not exist)") from None
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:  # e.g. a symbolic-link loop
        raise InputError(f"{path}: cannot be opened ({exc.strerror})") from None


def volume_stem(path: str | os.PathLike) -> str:
    """The name without its image suffix: ``CASE_t1.nii.gz`` -> ``CASE_t1``; a DICOM folder's name."""
    return split_suffix(path)[0]


def load_label(path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Read a label map that must share ``shape`` and ``affine``; zeros are allowed."""
    path = Path(path)
    check_exists(path)
    data, label_affine = read_image(path)
    data = _squeeze_to_3d(data, path)
    check_same_geometry(path, data.shape, label_affine, "image", shape, affine)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: label map contains NaN or infinite values")
    return np.rint(data).astype(np.uint8)


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    return data


def validate_array(data: np.ndarray, name: object) -> None:
    """Reject NaN/inf voxels and an all-zero (empty) volume."""
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{name}: contains {int((~finite).sum())} NaN or infinite voxels")
    if not np.any(data):
        raise InputError(f"{name}: volume is empty (all voxels are zero)")


def check_same_geometry(name_a: object, shape_a, affine_a, name_b: object, shape_b, affine_b) -> None:
    """Raise :class:`InputError` unless two volumes share shape and affine."""
    if tuple(shape_a)[:3] != tuple(shape_b)[:3]:
        raise InputError(f"{name_a}: shape {tuple(shape_a)} does not match {name_b} shape {tuple(shape_b)}")
    if not np.allclose(affine_a, affine_b, atol=AFFINE_TOLERANCE_MM):
        raise InputError(f"{name_a}: affine does not match {name_b} (volumes are not on the same grid)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, protect: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place on success.

    ``protect`` lists input files: writing onto one of them raises :class:`InputError`
    before anything is written.
    """
    path = Path(path)
    for p in protect:
        if Path(p).exists() and path.exists() and path.resolve() == Path(p).resolve():
            raise InputError(f"{path}: refusing to overwrite an input file")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *,
                protect: Iterable[str | os.PathLike] = (), dtype: str | np.dtype | None = None) -> Path:
    """Write ``data`` with ``affine`` atomically in the format its suffix names (NIfTI when the
    suffix names none), as ``dtype`` (default: float32, or uint8 for labels; a 4D array is
    written with its last axis as channels)."""
    save_volumes({path: (data, affine)}, protect=protect, dtype=dtype)
    return Path(path)


def save_volumes(volumes: dict[str | os.PathLike, tuple[np.ndarray, np.ndarray]], *,
                 protect: Iterable[str | os.PathLike] = (), dtype: str | np.dtype | None = None,
                 description: str = "") -> None:
    """Write several volumes all-or-nothing: each goes to a temporary file beside its target,
    and only when every one is written are they renamed into place; a failure removes them all.
    ``description``: provenance for the NIfTI header (:func:`~localdiffusion.data.formats.write_image`)."""
    protect = list(protect)
    with contextlib.ExitStack() as stack:
        for path, (data, affine) in volumes.items():
            tmp = stack.enter_context(atomic_path(path, protect=protect))
            data = np.asarray(data)
            if dtype is not None:
                data = data.astype(dtype)
            elif data.dtype != np.uint8:
                data = data.astype(np.float32)
            suffix = split_suffix(path)[1].lower()
            write_image(tmp, data, np.asarray(affine, dtype=np.float64), SUFFIX_FORMATS.get(suffix, "nifti"),
                        description)


def save_png(path: str | os.PathLike, figure) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


#: the patient's side at each edge of a plane drawn as 3D Slicer draws it (radiological: the patient's right on the
#: screen's left; sagittal: anterior on the left): plane -> (left, right, bottom, top)
PLANE_SIDES = {"axial": ("R", "L", "P", "A"), "coronal": ("R", "L", "I", "S"), "sagittal": ("A", "P", "I", "S")}


def orient_plane(ax, plane: str) -> None:
    """Turn a matplotlib axis that shows a cut of an RAS-ordered volume the way the figures draw it
    (``imshow(cut.T, origin="lower")``; axial ``v[:, :, k]``, coronal ``v[:, j, :]``, sagittal ``v[i, :, :]``) into
    the view 3D Slicer shows (:data:`PLANE_SIDES`), and letter its edges with the patient's sides.

    Args:
        ax: the axis, after its images and contours are drawn.
        plane: ``axial``, ``coronal`` or ``sagittal``.
    """
    ax.invert_xaxis()  # each cut's first axis runs to the patient's right (R) or front (A): shown to the left
    left, right, bottom, top = PLANE_SIDES[plane]
    for x, y, text, ha, va in ((0.02, 0.5, left, "left", "center"), (0.98, 0.5, right, "right", "center"),
                               (0.5, 0.02, bottom, "center", "bottom"), (0.5, 0.98, top, "center", "top")):
        ax.text(x, y, text, transform=ax.transAxes, color="white", fontsize=8, fontweight="bold", ha=ha, va=va)
