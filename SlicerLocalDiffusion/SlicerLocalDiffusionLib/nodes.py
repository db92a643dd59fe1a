"""MRML volume nodes <-> NIfTI files, geometry preserved.

Only needs what a stock 3D Slicer bundles: ``slicer`` (MRML, ``slicer.util`` array helpers), ``vtk``,
``numpy`` and ``SimpleITK`` (the files); it runs inside 3D Slicer and, for tests, with the ``slicer-core``
wheel.

Geometry: a NIfTI affine maps voxel (i, j, k) to RAS mm, exactly Slicer's IJKToRAS
matrix; ``slicer.util.arrayFromVolume`` returns (k, j, i) arrays, so arrays are transposed
on the way in and out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: output name of ``localdiffusion run`` / the MONAI Label app -> (node name suffix, is label map)
OUTPUTS = {
    "local": ("Local Diffusion", False),
    "baseline": ("baseline", False),
    "ood": ("OOD probability", False),
    "ood_mask": ("OOD mask", True),
    "risk": ("hallucination risk", False),
    "risk_regions": ("flagged regions", True),
}
#: the name of the translation node when Local Diffusion did not make it
PLAIN_TRANSLATION = "translation"
#: the colour of the flagged regions' outlines (RGB, 0..1)
REGION_COLOR = (1.0, 0.85, 0.0)
#: the flagged-region table's columns: (report key, title)
REGION_COLUMNS = (("label", "Region"), ("volume_ml", "Volume (ml)"), ("position", "Centre (mm)"),
                  ("max_risk", "Largest risk"), ("detectors", "Flagged by"))


def node_to_nifti(node, path: str | os.PathLike) -> Path:
    """Write a scalar volume node as NIfTI with its IJKToRAS geometry."""
    import slicer
    import vtk

    array = slicer.util.arrayFromVolume(node)
    if array is None or array.size == 0:
        raise ValueError(f"volume {node.GetName()!r} holds no image data")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    write_nifti(path, array.transpose(2, 1, 0).astype(np.float32), slicer.util.arrayFromVTKMatrix(matrix))
    return Path(path)


#: RAS <-> LPS (ITK's world coordinates)
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write an (i, j, k) array with its voxel-to-RAS ``affine`` as NIfTI (SimpleITK)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    lps = _FLIP @ np.asarray(affine, np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
    return Path(path)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(array (i, j, k[, channel]), voxel-to-RAS affine)`` of a 3D or 4D (channels last) NIfTI file
    (SimpleITK)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    n = image.GetDimension()
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection(), np.float64).reshape(n, n)[:3, :3]
    lps[:3, :3] = direction * np.asarray(image.GetSpacing()[:3])
    lps[:3, 3] = image.GetOrigin()[:3]
    array = sitk.GetArrayFromImage(image)
    return array.transpose(tuple(range(array.ndim))[::-1]), _FLIP @ lps


def array_to_node(data: np.ndarray, affine: np.ndarray, scene, name: str, label: bool = False):
    """A new scalar (or label map) volume node of ``scene`` from an (i, j, k) array and its affine."""
    import slicer
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    data = np.asarray(data).astype(np.uint8 if label else np.float32)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    node.SetIJKToRASMatrix(matrix)
    return node


def nifti_to_node(path: str | os.PathLike, scene, name: str, label: bool = False):
    """Load a NIfTI file into a new scalar (or label map) volume node of ``scene``."""
    data, affine = read_nifti(path)
    return array_to_node(data, affine, scene, name, label)


def output_nodes(volumes: dict[str, tuple[np.ndarray, np.ndarray]], scene, input_name: str) -> dict[str, object]:
    """Nodes for the outputs in ``volumes`` (name -> (array, affine)), named after the input. The translation is
    Local Diffusion's when a baseline came with it (the module always asks for one; a direction whose model
    translates without Local Diffusion writes none), else the plain translation, named so."""
    def title(key: str) -> str:
        return PLAIN_TRANSLATION if key == "local" and "baseline" not in volumes else OUTPUTS[key][0]

    return {key: array_to_node(data, affine, scene, f"{input_name} {title(key)}", OUTPUTS[key][1])
            for key, (data, affine) in volumes.items() if key in OUTPUTS}


def region_cells(region: dict) -> list[str]:
    """One row of the flagged-region table from a region of the run's report."""
    cells = []
    for key, _ in REGION_COLUMNS:
        value = region.get(key)
        if key == "detectors":
            cells.append(", ".join(value) if value else "the combination")
        elif key == "max_risk":
            cells.append(f"{float(value):.4f}")
        elif key == "volume_ml":
            cells.append(f"{float(value):.2f}")
        else:
            cells.append(str(value))
    return cells


def region_nodes(label_node, regions: list[dict], scene, name: str) -> tuple[object, object]:
    """The flagged regions as a segmentation (one segment per region, ``region n``, shown as an outline) and a
    table (:data:`REGION_COLUMNS`, one row per region), from the ``risk_regions`` label map node and the
    report's regions.

    Returns:
        (segmentation node, table node).
    """
    import slicer

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation):
        raise RuntimeError(f"could not turn {label_node.GetName()!r} into a segmentation")
    by_label = {int(r["label"]): r for r in regions}
    segments = segmentation.GetSegmentation()
    for i in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(i)
        region = by_label.get(int(segment.GetLabelValue()))
        segment.SetName(f"region {segment.GetLabelValue()}" + (f" ({float(region['volume_ml']):.1f} ml, risk "
                                                               f"{float(region['max_risk']):.4f})" if region else ""))
        segment.SetColor(*REGION_COLOR)
    segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetSliceIntersectionThickness(2)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    for _, title in REGION_COLUMNS:
        table.AddColumn().SetName(title)
    for region in regions:
        row = table.AddEmptyRow()
        for column, text in enumerate(region_cells(region)):
            table.SetCellText(row, column, text)
    return segmentation, table


def remove_nodes(scene, nodes) -> None:
    """Remove result nodes from ``scene`` with their display, storage and colour-legend nodes."""
    for node in nodes:
        if node is None or scene.GetNodeByID(node.GetID()) is None:
            continue
        owned = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
            if hasattr(node, "GetNumberOfDisplayNodes") else []
        owned += [node.GetStorageNode()] if hasattr(node, "GetStorageNode") else []
        for extra in owned:
            if extra is not None and scene.GetNodeByID(extra.GetID()) is not None:
                scene.RemoveNode(extra)
        scene.RemoveNode(node)
