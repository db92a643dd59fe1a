"""Showing results in Slicer's views through MRML only (layout, slice composite and display
nodes), so the same code runs in Slicer and, for tests, on a ``slicer-core`` scene.

In Slicer the layout manager follows the scene's layout node and the Red/Yellow slice
views follow their slice composite nodes, which is what this module edits.
"""

from __future__ import annotations

COLOR_NODE_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
VIEWS = ("Red", "Yellow")


def composite_nodes(scene) -> dict[str, object]:
    """Slice composite nodes of the side-by-side views, by layout name (Red, Yellow)."""
    nodes = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() in VIEWS:
            nodes[node.GetLayoutName()] = node
    return nodes


def show_side_by_side(scene, left, right, overlay, opacity: float, threshold: float) -> None:
    """Side-by-side linked views: ``left`` and ``right`` as backgrounds, ``overlay`` (a
    probability map in [0, 1], or None) as the coloured foreground of both."""
    import slicer

    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    views = composite_nodes(scene)
    missing = [name for name in VIEWS if name not in views]
    if missing:
        raise RuntimeError(f"the scene has no slice view {missing}")
    for name, volume in zip(VIEWS, (left, right)):
        composite = views[name]
        composite.SetBackgroundVolumeID(volume.GetID() if volume else None)
        composite.SetForegroundVolumeID(overlay.GetID() if overlay else None)
        composite.SetLinkedControl(True)
    style_overlay(scene, overlay, opacity, threshold)


def style_overlay(scene, overlay, opacity: float, threshold: float) -> None:
    """Colour map, threshold (values below are transparent) and opacity of the overlay."""
    if overlay is None:
        return
    if overlay.GetDisplayNode() is None:
        overlay.CreateDefaultDisplayNodes()
    display = overlay.GetDisplayNode()
    display.SetAndObserveColorNodeID(COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(threshold)
    display.SetUpperThreshold(1.0)
    for composite in composite_nodes(scene).values():
        composite.SetForegroundOpacity(opacity)
