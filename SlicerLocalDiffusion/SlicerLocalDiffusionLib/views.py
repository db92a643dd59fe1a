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
    """Colour map, threshold (values below are transparent), opacity and colour legend of the overlay."""
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
    color_legend(scene, overlay, threshold)


def color_legend(scene, overlay, threshold: float):
    """The overlay's colour legend in the slice views (Slicer's own colour-legend display node), titled with
    what the map is and showing values from ``threshold`` (the flag level) to 1."""
    import slicer

    display = overlay.GetDisplayNode()
    legend = None
    for i in range(overlay.GetNumberOfDisplayNodes()):
        node = overlay.GetNthDisplayNode(i)
        if node is not None and node.IsA("vtkMRMLColorLegendDisplayNode"):
            legend = node
    if legend is None:
        if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):  # a scene without the Colors module
            scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", f"{overlay.GetName()} legend")
        overlay.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetAndObservePrimaryDisplayNode(display)
    name = overlay.GetName()
    legend.SetTitleText("hallucination risk" if "risk" in name else "OOD probability" if "OOD" in name else name)
    legend.SetScalarRangeFlag(legend.UseManualScalarRange)  # the colours shown: the flag level to 1
    legend.SetScalarRange(threshold, 1.0)
    legend.SetVisibility(True)
    return legend
