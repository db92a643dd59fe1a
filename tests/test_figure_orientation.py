"""The product's figures (the demo's, the phantom preview) draw each plane as 3D Slicer does, the patient's sides
lettered: a radiologist who reads the PNG beside the Slicer view or the region report must not swap left and right."""

import numpy as np
import pytest

from localdiffusion.data.io import PLANE_SIDES, orient_plane

#: RAS axis letters (positive direction, negative direction)
AXES = (("R", "L"), ("A", "P"), ("S", "I"))
#: each plane's cut of an RAS-ordered array as the figures take it: (screen x axis, screen y axis) as RAS axes
CUT_AXES = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}


def test_the_patients_right_is_drawn_on_the_left():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume = np.zeros((40, 40, 5), np.float32)
    volume[30:38, 16:24, :] = 1.0  # toward the patient's right (high i in RAS order)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=50, facecolor="black")
    ax.imshow(volume[:, :, 2].T, origin="lower", cmap="gray", vmin=0, vmax=1)
    orient_plane(ax, "axial")
    ax.axis("off")
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., 0].astype(float)
    box = ax.get_window_extent()
    columns = np.nonzero((image > 200).any(axis=0))[0]
    columns = columns[(columns > box.x0 + 15) & (columns < box.x1 - 15)]  # the block, not the letters
    assert columns.size and columns.mean() < (box.x0 + box.x1) / 2  # drawn on the left half
    assert [t.get_text() for t in ax.texts] == list(PLANE_SIDES["axial"])
    plt.close(fig)


def test_the_sides_are_those_of_slicers_own_slice_orientations():
    """Each plane's lettered sides follow Slicer's slice orientation presets: the screen's right and up are the
    RAS directions of the slice-to-RAS matrix's first two columns."""
    slicer = pytest.importorskip("slicer", reason="the slicer-core wheel (test extra) provides MRML")

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddSliceNode("Red")
    for plane, (x_axis, y_axis) in CUT_AXES.items():
        node.SetOrientation(plane.capitalize())
        to_ras = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())[:3, :2]
        right, up = to_ras[:, 0], to_ras[:, 1]
        left_letter, right_letter, bottom_letter, top_letter = PLANE_SIDES[plane]
        assert right[x_axis] != 0 and up[y_axis] != 0
        assert right_letter == AXES[x_axis][0 if right[x_axis] > 0 else 1]
        assert left_letter == AXES[x_axis][1 if right[x_axis] > 0 else 0]
        assert top_letter == AXES[y_axis][0 if up[y_axis] > 0 else 1]
        assert bottom_letter == AXES[y_axis][1 if up[y_axis] > 0 else 0]
