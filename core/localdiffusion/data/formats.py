"""Image file formats: which reader and writer a path takes, and geometry in one convention.

Every volume inside the package is ``(array indexed i, j, k; 4x4 voxel-to-RAS affine)``, the
NIfTI convention. NIfTI and MGZ go through nibabel (both store a RAS affine); NRRD,
MetaImage (.mha/.mhd) and DICOM series go through SimpleITK, whose geometry is LPS
(origin, spacing, direction cosines) and whose arrays are indexed k, j, i; the two
conversions below are the only place that knows this.

A folder is read as a DICOM series; a folder with several series gives the one with the
most slices, and says which it took.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

from localdiffusion.errors import InputError

log = logging.getLogger("localdiffusion")

#: file suffix -> format name (longest suffixes first so ``.nii.gz`` wins over ``.gz``)
SUFFIX_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".mgz": "mgz", ".mgh": "mgz", ".nrrd": "nrrd",
                  ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}
#: format name (every one of OUTPUT_FORMATS but "input") -> the suffix its outputs get (MetaImage
#: outputs are single .mha files: a .mhd header and its .raw could not be replaced atomically)
OUTPUT_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "mgz": ".mgz"}
#: formats whose header names a second data file: readable, but not written (no atomic replace of two files)
DETACHED_SUFFIXES = (".nhdr", ".mhd")
#: the suffixes outputs may have
WRITABLE_SUFFIXES = tuple(s for s in SUFFIX_FORMATS if s not in DETACHED_SUFFIXES)
#: what a folder input is read as
FOLDER_FORMAT = "dicom"
#: a DICOM input's outputs are NIfTI unless asked otherwise
DICOM_OUTPUT_FORMAT = "nifti"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """``CASE_t1.nii.gz`` -> ``("CASE_t1", ".nii.gz")``; a folder or an unknown suffix -> ``(name, "")``."""
    name = Path(path).name
    for suffix in SUFFIX_FORMATS:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def volume_format(path: str | os.PathLike) -> str:
    """The format of an input path: a name in :data:`SUFFIX_FORMATS`, or ``"dicom"`` for a folder."""
    path = Path(path)
    if path.is_dir():
        return FOLDER_FORMAT
    suffix = split_suffix(path)[1]
    if not suffix:
        raise InputError(f"{path}: unknown image format (expected NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage "
                         f".mha/.mhd, MGZ .mgz/.mgh, or a folder of DICOM files)")
    return SUFFIX_FORMATS[suffix.lower()]


def output_suffix_for(input_path: str | os.PathLike, output_format: str = "input") -> str:
    """The suffix of outputs made from ``input_path``: its own format's (``"input"``), NIfTI for
    a DICOM series, or the named format's."""
    if output_format == "input":
        fmt = volume_format(input_path)
        output_format = DICOM_OUTPUT_FORMAT if fmt == FOLDER_FORMAT else fmt
    return OUTPUT_SUFFIX[output_format]


#: the most voxels an input may declare (about 1 GiB as float32; a 0.5 mm whole head is ~1e8), checked before
#: reading; ``LOCALDIFFUSION_MAX_VOXELS`` overrides it
MAX_VOXELS = 2 ** 28


def max_voxels() -> int:
    """:data:`MAX_VOXELS`, or the ``LOCALDIFFUSION_MAX_VOXELS`` environment variable when set."""
    value = os.environ.get("LOCALDIFFUSION_MAX_VOXELS", "")
    try:
        return int(value) if value else MAX_VOXELS
    except ValueError:
        raise InputError(f"LOCALDIFFUSION_MAX_VOXELS={value!r} is not a whole number") from None


def check_size(path: Path, shape) -> None:
    """Refuse a declared shape beyond :func:`max_voxels` before any voxel is read."""
    voxels = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if voxels > max_voxels():
        raise InputError(f"{path}: the header declares {' x '.join(str(int(v)) for v in shape)} voxels "
                         f"({voxels:,}), more than the {max_voxels():,} this tool reads (about "
                         f"{4 * max_voxels() / 2 ** 30:.0f} GiB as float32); set LOCALDIFFUSION_MAX_VOXELS to read it")


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(raw array, RAS affine)`` of a file or DICOM folder; :class:`InputError` if unreadable, or if it declares
    more than :func:`max_voxels` voxels (checked before reading)."""
    fmt = volume_format(path)
    if fmt in ("nifti", "mgz"):
        return _read_nibabel(path, fmt)
    return _read_sitk(path, fmt)


def _read_nibabel(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    kind = {"nifti": (nib.Nifti1Image, nib.Nifti2Image), "mgz": (nib.MGHImage,)}[fmt]
    label = {"nifti": "NIfTI", "mgz": "MGZ"}[fmt]
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad headers
        raise InputError(f"{path}: not a readable {label} file ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(image, kind):
        raise InputError(f"{path}: not a {label} file (read as {type(image).__name__})")
    check_size(path, image.shape)
    declared = int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize
    if not str(path).lower().endswith((".gz", ".mgz")) and hasattr(image.header, "get_data_offset"):
        available = path.stat().st_size - int(image.header.get_data_offset())
        if declared > available:  # a header promising more voxels than the file holds (checked before reading)
            shape = " x ".join(map(str, image.shape))
            raise InputError(f"{path}: corrupt or truncated {label} data (the header declares {shape} voxels, "
                             f"{declared} bytes; the file holds {available})")
    try:
        raw = np.asanyarray(image.dataobj)
    except Exception as exc:  # truncated gzip streams, short files
        raise InputError(f"{path}: corrupt or truncated {label} data ({exc.__class__.__name__}: {exc})") from exc
    return raw, image.affine.astype(np.float64)


def _read_sitk(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    header_read = False
    try:
        with _quiet_stderr():
            if fmt != FOLDER_FORMAT:
                info = sitk.ImageFileReader()
                info.SetFileName(str(path))
                info.ReadImageInformation()
                header_read = True
                check_size(path, info.GetSize())
            image = _read_dicom_series(path) if fmt == FOLDER_FORMAT else sitk.ReadImage(str(path))
    except InputError:
        raise
    except Exception as exc:  # ITK raises RuntimeError with a long C++ trace; keep its first line
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        if header_read and "No such file" in first:  # MetaIO's words for a file shorter than its header
            raise InputError(f"{path}: corrupt or truncated {fmt} data (the file ends before the voxels its "
                             f"header declares)") from exc
        raise InputError(f"{path}: not a readable {fmt} image ({first[:200]})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(a colour or vector image, not an MR volume)")
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D volume, got a {image.GetDimension()}D image")
    raw = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK arrays are (k, j, i)
    return raw, sitk_affine(image)


def holds_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    with _quiet_stderr():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


@contextlib.contextmanager
def _quiet_stderr():
    """ITK, GDCM and MetaIO print their own diagnostics on the C-level stderr; the reader's one
    error line says what matters, so those are dropped while SimpleITK reads."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_dicom_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    files = {uid: reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    chosen = max(series, key=lambda uid: len(files[uid]))
    if len(series) > 1:
        others = ", ".join(f"{uid} ({len(files[uid])} files)" for uid in series if uid != chosen)
        log.warning("note: %s: %d DICOM series; took %s (%d files), not %s", folder, len(series), chosen,
                    len(files[chosen]), others)
    if len(files[chosen]) < 2:
        raise InputError(f"{folder}: DICOM series {chosen} has one slice (a 2D image, not a volume)")
    check_slices(folder, files[chosen])
    reader.SetFileNames(files[chosen])
    return reader.Execute()


#: slice gaps may differ from the median gap by this fraction before the series is called uneven
SLICE_GAP_TOLERANCE = 0.1


def check_slices(folder: Path, files) -> None:
    """Refuse a DICOM series whose slices cannot make one regular volume: an unreadable file, slices of different
    size or orientation, or uneven positions along the slice normal (missing slices, mixed stacks), naming the
    positions; and one declaring more than :func:`max_voxels` voxels. Read from the headers only."""
    import SimpleITK as sitk

    positions, shapes, normals = [], set(), []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(name))
        try:
            reader.ReadImageInformation()
            position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            orientation = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            raise InputError(f"{folder}: slice file {Path(name).name} is unreadable or has no position/orientation "
                             f"(DICOM tags 0020,0032 and 0020,0037)") from None
        shapes.add(tuple(reader.GetSize()[:2]))
        normals.append(np.cross(orientation[:3], orientation[3:]))
        positions.append(position)
    if len(shapes) > 1:
        raise InputError(f"{folder}: the series mixes slice sizes {sorted(shapes)}")
    normal = normals[0] / (np.linalg.norm(normals[0]) or 1.0)
    if any(abs(float(np.dot(n / (np.linalg.norm(n) or 1.0), normal))) < 0.999 for n in normals):
        raise InputError(f"{folder}: the series mixes slice orientations (not one stack)")
    check_size(folder, (*next(iter(shapes)), len(files)))
    along = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(along)
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise InputError(f"{folder}: several slices share one position ({along[0]:.2f} mm along the slice normal)")
    uneven = np.flatnonzero(np.abs(gaps - step) > SLICE_GAP_TOLERANCE * step)
    if uneven.size:
        where = ", ".join(f"{along[i]:.2f} to {along[i + 1]:.2f} mm" for i in uneven[:5])
        missing = int(round(float(np.sum(gaps[uneven] / step - 1))))
        gap_words = "1 gap" if uneven.size == 1 else f"{uneven.size} gaps"
        slice_words = "1 slice" if missing == 1 else f"{missing} slices"
        raise InputError(f"{folder}: uneven slice positions ({gap_words} unlike the {step:.2f} mm spacing: "
                         f"{where}{', ...' if uneven.size > 5 else ''}; about {slice_words} missing or "
                         f"unreadable): refusing to read it as one regular volume")


def sitk_affine(image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image (LPS origin, spacing, direction)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def write_image(path: Path, data: np.ndarray, affine: np.ndarray, fmt: str, description: str = "") -> None:
    """Write ``data`` with the RAS ``affine`` as ``fmt`` to ``path`` (callers make it atomic); ``description``
    (provenance) goes into the NIfTI header's 80-character ``descrip`` field."""
    if fmt == "nifti":
        import nibabel as nib

        image = nib.Nifti1Image(data, affine)
        if description:
            image.header["descrip"] = description.encode("ascii", "replace")[:79]
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nib.save(image, str(path))
    elif fmt == "mgz":
        import nibabel as nib

        nib.save(nib.MGHImage(data, affine), str(path))
    else:
        import SimpleITK as sitk

        order = (2, 1, 0, 3)[: data.ndim]  # ITK arrays are (k, j, i[, channel])
        image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(order)), isVector=data.ndim == 4)
        lps = _LPS_TO_RAS @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / spacing[None, :]
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise InputError(f"{path}: the geometry is sheared, which {fmt} cannot store; write NIfTI instead")
        image.SetSpacing(spacing.tolist())
        image.SetOrigin(lps[:3, 3].tolist())
        image.SetDirection(direction.flatten().tolist())
        # the suffix of a temporary name decides the format; compress like the NIfTI outputs
        sitk.WriteImage(image, str(path), useCompression=True)
