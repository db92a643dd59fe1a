"""Write a volume as a DICOM series (one file per slice) for the reader tests."""

import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from localdiffusion.data.formats import sitk_affine


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, folder: Path, series_uid: str,
                       description: str = "T1") -> None:
    """``volume`` (i, j, k; stored as int16) with the RAS ``affine`` as files ``<uid>_<k>.dcm``.

    GDCM's writer resets the process locale to "C" (text files would then default to ASCII);
    the caller's locale is restored afterwards."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write(volume, affine, folder, series_uid, description)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write(volume: np.ndarray, affine: np.ndarray, folder: Path, series_uid: str, description: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.astype(np.int16).transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    assert np.allclose(sitk_affine(image), affine)
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in {"0008|0060": "MR", "0008|103e": description, "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                           "0020|000e": series_uid, "0020|0032": position, "0020|0037": orientation,
                           "0020|0013": str(k + 1), "0008|0018": f"{series_uid}.{k + 1}",
                           "0018|0050": f"{spacing[2]:.6f}"}.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_)
