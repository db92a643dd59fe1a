"""What the module's slice views show, drawn by Slicer's own slice logic and displayable managers offscreen
(slicer-core; ``slicer_scene.SliceViews``).

A synthetic scene whose every pixel is known: a grey square volume, a risk overlay with a block below the flag
level and a block inside the colour window, and that block as a flagged region. The module's display code
(``show_side_by_side``, ``region_nodes``) styles them; the drawn pixels are checked.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel (test extra) provides MRML")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from SlicerLocalDiffusionLib import show_side_by_side  # noqa: E402
from SlicerLocalDiffusionLib.nodes import REGION_COLOR, array_to_node, output_nodes, region_nodes  # noqa: E402
from slicer_scene import SliceViews, slicer_like_scene  # noqa: E402

SIZE = 240
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # voxel (i, j, k) -> RAS mm
LOW, HIGH = (slice(6, 14), slice(20, 28)), (slice(22, 32), slice(20, 30))  # (i, j) blocks, every k


def _pixel(xy_to_ras, ras):
    """The (row, column) of the drawn image where the view with ``xy_to_ras`` shows ``ras``."""
    x, y = (np.linalg.inv(xy_to_ras) @ np.array([*ras, 1.0]))[:2]
    return SIZE - 1 - int(round(y)), int(round(x))


def _centre_ras(block):
    return tuple(AFFINE[d, d] * (block[d].start + block[d].stop - 1) / 2.0 for d in range(2)) + (AFFINE[2, 2] * 5,)


def draw(out: Path) -> None:
    """Build the scene, draw the Red view axially through the flagged block and save the image and the view's
    XY-to-RAS matrix in ``out`` (.npz)."""
    scene = slicer_like_scene(colours=True)
    views = SliceViews(scene, views=("Red",), size=SIZE)  # before the data, as Slicer makes its views
    image = np.zeros((48, 48, 11), np.float32)
    image[2:36, 2:46] = 0.5  # a grey square, away from the right edge where the legend sits
    risk = np.zeros_like(image)
    risk[LOW] = 0.5  # below the flag level: not drawn
    risk[HIGH] = 0.995  # the middle of the colour window [0.99, 1]
    labels = np.zeros(image.shape, np.uint8)
    labels[HIGH] = 1
    volume = array_to_node(image, AFFINE, scene, "T1 Local Diffusion")
    overlay = array_to_node(risk, AFFINE, scene, "T1 hallucination risk")
    region_label = array_to_node(labels, AFFINE, scene, "T1 flagged regions", label=True)
    region = {"label": 1, "volume_ml": 0.8, "centre_mm": list(_centre_ras(HIGH)), "position": "R 53.0, A 49.0, S 10.0",
              "max_risk": 0.995, "detectors": ["tumour"]}
    region_nodes(region_label, [region], scene, "T1 flagged regions")
    show_side_by_side(scene, volume, volume, overlay, 0.5, 0.99)
    drawn = views.render(("Axial",), _centre_ras(HIGH))[("Red", "Axial")]
    xy_to_ras = slicer.util.arrayFromVTKMatrix(views.logics["Red"].GetSliceNode().GetXYToRAS())
    views.close()
    np.savez(out, image=drawn, xy_to_ras=xy_to_ras)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    # drawn in a process of its own: the OpenGL libraries offscreen rendering loads must not share a process
    # with the native libraries other tests load later (a crash seen when PyTorch then loads Triton)
    out = tmp_path_factory.mktemp("view") / "red.npz"
    subprocess.run([sys.executable, __file__, str(out)], check=True, timeout=300)
    with np.load(out) as data:
        return data["image"].astype(int), data["xy_to_ras"]


def test_the_volume_is_drawn_grey_and_values_below_the_flag_level_are_not_coloured(drawn):
    image, xy_to_ras = drawn
    r, c = _pixel(xy_to_ras, _centre_ras(LOW))
    red, green, blue = image[r, c]
    assert red > 60 and abs(red - green) <= 3 and abs(green - blue) <= 3  # the grey volume, no overlay colour


def test_a_value_in_the_middle_of_the_window_takes_the_middle_colour(drawn):
    # the colours span the flag level to 1 (jet's middle is green-yellow): a window of 0 to 1 would draw 0.995
    # dark red, and the legend, which Slicer labels from the window, would not match the colours
    image, xy_to_ras = drawn
    r, c = _pixel(xy_to_ras, _centre_ras(HIGH))
    red, green, blue = image[r, c]
    assert green > blue + 30 and green > 100, image[r, c]


def test_the_flagged_region_is_outlined_not_filled(drawn):
    image, xy_to_ras = drawn
    outline = np.array(REGION_COLOR) * 255
    near = np.abs(image - outline).max(axis=2) < 40
    r, c = _pixel(xy_to_ras, _centre_ras(HIGH))
    left = _pixel(xy_to_ras, (AFFINE[0, 0] * HIGH[0].start, 0, 0))[1]
    right = _pixel(xy_to_ras, (AFFINE[0, 0] * (HIGH[0].stop - 1), 0, 0))[1]
    left, right = min(left, right), max(left, right)
    row = near[r]
    assert row[left - 8:left + 8].any() and row[right - 8:right + 8].any()  # both edges of the block
    assert not row[(left + right) // 2 - 5:(left + right) // 2 + 5].any()  # the inside is not filled


def test_the_colour_legend_is_drawn_at_the_right(drawn):
    image, _ = drawn
    strip = image[SIZE // 4: 3 * SIZE // 4, int(0.85 * SIZE):]
    blue = (strip[..., 2] > 150) & (strip[..., 0] < 60)
    red = (strip[..., 0] > 120) & (strip[..., 1] < 60) & (strip[..., 2] < 60)
    assert blue.sum() > 10 and red.sum() > 10  # the colour bar runs from jet's blue to its dark red


def test_the_translation_is_named_local_diffusion_only_when_local_diffusion_made_it():
    scene = slicer.vtkMRMLScene()
    volume = (np.zeros((4, 4, 4), np.float32), AFFINE)
    with_baseline = output_nodes({"local": volume, "baseline": volume}, scene, "FLAIR")
    assert with_baseline["local"].GetName() == "FLAIR Local Diffusion"
    assert with_baseline["baseline"].GetName() == "FLAIR baseline"
    plain = output_nodes({"local": volume, "ood": volume}, scene, "FLAIR")  # a model that translates without it
    assert plain["local"].GetName() == "FLAIR translation"


if __name__ == "__main__":
    draw(Path(sys.argv[1]))
