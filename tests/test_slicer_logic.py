"""Slicer module logic on real MRML nodes (slicer-core wheel), with the tiny models."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel (test extra) provides MRML")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion"))

from SlicerLocalDiffusionLib import TranslationRequest, nifti_to_node, node_to_nifti, run_translation  # noqa: E402


def _tumour_case(cohort):
    return next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)


def test_nifti_node_round_trip_preserves_geometry(cohort, tmp_path):
    case = _tumour_case(cohort)
    src = case / f"{case.name}_t1.nii.gz"
    scene = slicer.vtkMRMLScene()
    node = nifti_to_node(src, scene, "T1")
    assert node.IsA("vtkMRMLScalarVolumeNode") and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    out = node_to_nifti(node, tmp_path / "back.nii.gz")
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_allclose(a.affine, b.affine)
    np.testing.assert_array_equal(np.asarray(a.dataobj, np.float32), b.get_fdata(dtype=np.float32))


def test_translation_from_node_to_nodes(tiny_models, cohort):
    case = _tumour_case(cohort)
    scene = slicer.vtkMRMLScene()
    t1 = nifti_to_node(case / f"{case.name}_t1.nii.gz", scene, "T1")
    request = TranslationRequest(direction="t1_to_flair", steps=2, t_intermediate=5, models=str(tiny_models))
    nodes = run_translation(t1, request, scene, timeout=600)
    assert set(nodes) == {"local", "baseline", "ood", "ood_mask"}
    assert nodes["ood_mask"].IsA("vtkMRMLLabelMapVolumeNode")
    import vtk

    ref, got = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    t1.GetIJKToRASMatrix(ref)
    for node in nodes.values():
        node.GetIJKToRASMatrix(got)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(got), slicer.util.arrayFromVTKMatrix(ref))
        assert slicer.util.arrayFromVolume(node).shape == slicer.util.arrayFromVolume(t1).shape
    assert nodes["local"].GetName() == "T1 Local Diffusion"


def test_failed_translation_reports_the_error(tiny_models, tmp_path):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    slicer.util.updateVolumeFromArray(node, np.zeros((8, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match="empty"):
        run_translation(node, TranslationRequest(models=str(tiny_models)), scene, timeout=300)
