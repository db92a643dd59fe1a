"""Showing results in Slicer's views through MRML only (layout, slice composite and display
nodes), so the same code runs in Slicer and, for tests, on a ``slicer-core`` scene.

In Slicer the layout manager follows the scene's layout node and the Red/Yellow slice
views follow their slice composite nodes, which is what this module edits.
"""

from __future__ import annotations

COLOR_NODE_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
VIEWS = ("Red", "Yellow")
#: the panel's defaults (its parameter node's, which tests compare): the overlay's opacity and its flag level
OVERLAY_OPACITY, OVERLAY_THRESHOLD = 0.5, 0.99
#: the narrowest colour window of the overlay (a flag level of 1 still gets a ramp)
MIN_WINDOW = 1e-3
#: the colour legend: labels, their format, and its size as fractions of the view (width, height)
LEGEND_LABELS, LEGEND_FORMAT, LEGEND_SIZE = 3, "%.3f", (0.1, 0.35)


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


def colour_window(threshold: float) -> tuple[float, float]:
    """The overlay values its colours span: the flag level to 1 (a window at least :data:`MIN_WINDOW` wide)."""
    return min(threshold, 1.0 - MIN_WINDOW), 1.0


def style_overlay(scene, overlay, opacity: float, threshold: float) -> None:
    """Colour map, threshold (values below are transparent), opacity and colour legend of the overlay.

    The colours span :func:`colour_window`, the values the overlay shows, so that the whole colour ramp tells
    shown values apart and the legend (which Slicer draws over a volume's window) labels them.
    """
    if overlay is None:
        return
    if overlay.GetDisplayNode() is None:
        overlay.CreateDefaultDisplayNodes()
    display = overlay.GetDisplayNode()
    display.SetAndObserveColorNodeID(COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(*colour_window(threshold))
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(threshold)
    display.SetUpperThreshold(1.0)
    for composite in composite_nodes(scene).values():
        composite.SetForegroundOpacity(opacity)
    color_legend(scene, overlay)


def color_legend(scene, overlay):
    """The overlay's colour legend in the slice views (Slicer's own colour-legend display node), titled with
    what the map is; it shows the overlay's window, the flag level to 1 (:func:`colour_window`)."""
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
    # Slicer labels a volume's legend from the volume's window (style_overlay), not from the legend's own range;
    # three labels with enough digits to tell 0.990 from 1.000
    legend.SetNumberOfLabels(LEGEND_LABELS)
    legend.SetLabelFormat(LEGEND_FORMAT)
    legend.SetSize(*LEGEND_SIZE)
    legend.SetVisibility(True)
    return legend
