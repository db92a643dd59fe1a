"""MRML volume nodes <-> NIfTI files, geometry preserved.

Only needs ``slicer`` (MRML, ``slicer.util`` array helpers), ``vtk``, ``numpy`` and
``nibabel``; it runs inside 3D Slicer and, for tests, with the ``slicer-core`` wheel.

Geometry: a NIfTI affine maps voxel (i, j, k) to RAS mm, exactly Slicer's IJKToRAS
matrix; ``slicer.util.arrayFromVolume`` returns (k, j, i) arrays, so arrays are transposed
on the way in and out.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

#: output name of ``localdiffusion run`` / the MONAI Label app -> (node name suffix, is label map)
OUTPUTS = {
    "local": ("Local Diffusion", False),
    "baseline": ("baseline", False),
    "ood": ("OOD probability", False),
    "ood_mask": ("OOD mask", True),
    "risk": ("hallucination risk", False),
}


def node_to_nifti(node, path: str | os.PathLike) -> Path:
    """Write a scalar volume node as NIfTI with its IJKToRAS geometry."""
    import slicer
    import vtk

    array = slicer.util.arrayFromVolume(node)
    if array is None or array.size == 0:
        raise ValueError(f"volume {node.GetName()!r} holds no image data")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    affine = slicer.util.arrayFromVTKMatrix(matrix)
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.float32), affine)
    nib.save(image, str(path))
    return Path(path)


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
    image = nib.load(str(path))
    return array_to_node(np.asarray(image.dataobj), image.affine, scene, name, label)


def output_nodes(volumes: dict[str, tuple[np.ndarray, np.ndarray]], scene, input_name: str) -> dict[str, object]:
    """Nodes for the outputs in ``volumes`` (name -> (array, affine)), named after the input."""
    return {key: array_to_node(data, affine, scene, f"{input_name} {OUTPUTS[key][0]}", OUTPUTS[key][1])
            for key, (data, affine) in volumes.items() if key in OUTPUTS}
