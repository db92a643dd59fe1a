"""A scene like the one 3D Slicer's application starts with, and its slice views drawn offscreen, for tests and
checks on the slicer-core wheel.

:func:`render_slice_views` draws a slice view the way Slicer's own view widget does (qMRMLSliceView in
Libs/MRML/Widgets): the slice logic's blended layers (background, foreground overlay at its opacity and
threshold) as a 2D image, with the slice displayable managers (segmentation outlines, colour legend) drawn over
it, into an offscreen render window.
"""

from __future__ import annotations

import numpy as np

#: the overlay colour table the module asks for (Slicer ships it as a colour file, which slicer-core lacks)
COLD_TO_HOT_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
_COLOUR_LOGICS: list = []
#: the slice displayable managers drawn over the image
DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLColorLegendDisplayableManager")


def slicer_like_scene(colours: bool = False):
    """A scene with the layout node and the Red/Yellow/Green slice composite nodes Slicer creates; with
    ``colours``, also the default colour tables Slicer's Colors module adds (grey for volumes) and a stand-in for
    its cold-to-hot rainbow file table (matplotlib's jet, the same blue-to-red ramp), so that views can be drawn."""
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLLayoutNode())
    for name in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
    if colours:
        logic = slicer.vtkMRMLColorLogic()
        logic.SetMRMLScene(scene)
        logic.AddDefaultColorNodes()
        _COLOUR_LOGICS.append(logic)  # the logic removes its colour nodes when it is deleted
        _add_cold_to_hot(scene)
    return scene


def _add_cold_to_hot(scene) -> None:
    import slicer
    from matplotlib import colormaps

    table = slicer.vtkMRMLColorTableNode()
    table.SetSingletonTag("FileColdToHotRainbow.txt")  # the scene names a singleton <class><tag>: the module's ID
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for i, rgba in enumerate(colormaps["jet"](np.linspace(0.0, 1.0, 256))):
        table.SetColor(i, f"{i}", *rgba)
    table.SetName("ColdToHotRainbow")
    scene.AddNode(table)
    assert table.GetID() == COLD_TO_HOT_ID, table.GetID()


class SliceViews:
    """Slice views of ``scene`` drawn offscreen, made as Slicer's application makes its views: before any data is
    loaded, so that the displayable managers see every node added later (the colour legend makes its actor when
    its display node is added).

    Args:
        scene: the scene (:func:`slicer_like_scene` with ``colours``).
        views: layout names whose slice composite nodes (background, foreground, opacity) are drawn.
        size: pixels per side.
    """

    def __init__(self, scene, views: tuple[str, ...] = ("Red", "Yellow"), size: int = 384):
        import slicer
        import vtk

        self.application = slicer.vtkMRMLApplicationLogic()
        self.application.SetMRMLScene(scene)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(self.application)
        for name in DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.logics = {}
        for view in views:  # every view's slice logic, known to the application logic (the colour legend asks it)
            self.logics[view] = slicer.vtkMRMLSliceLogic()
            self.logics[view].SetMRMLApplicationLogic(self.application)
            self.logics[view].SetMRMLScene(scene)
            self.logics[view].AddSliceNode(view).SetDimensions(size, size, 1)
        collection = vtk.vtkCollection()
        for logic in self.logics.values():
            collection.AddItem(logic)
        self.application.SetSliceLogics(collection)
        self.windows, self.managers, self.images, self._keep = {}, {}, {}, []
        for view, logic in self.logics.items():
            window = vtk.vtkRenderWindow()
            window.SetOffScreenRendering(1)
            window.SetSize(size, size)
            renderer = vtk.vtkRenderer()
            window.AddRenderer(renderer)
            interactor = vtk.vtkRenderWindowInteractor()  # the displayable managers' widgets need one; never started
            interactor.SetRenderWindow(window)
            rgb = vtk.vtkImageExtractComponents()  # the blended layers' colours (alpha: the layers' coverage)
            rgb.SetComponents(0, 1, 2)
            mapper = vtk.vtkImageMapper()  # as Slicer's light-box renderer manager: the blended image in pixels
            mapper.SetInputConnection(rgb.GetOutputPort())
            mapper.SetColorWindow(255)
            mapper.SetColorLevel(127.5)
            actor = vtk.vtkActor2D()
            actor.SetMapper(mapper)
            renderer.AddViewProp(actor)
            managers = factory.InstantiateDisplayableManagers(renderer)
            managers.SetMRMLDisplayableNode(logic.GetSliceNode())
            self.windows[view], self.managers[view], self.images[view] = window, managers, rgb
            self._keep += [interactor, mapper, actor]

    def render(self, orientations: tuple[str, ...] = ("Axial", "Sagittal", "Coronal"),
               centre_ras: tuple[float, float, float] | None = None) -> dict:
        """Every view in every orientation, fitted to the volumes, through ``centre_ras`` when given.

        Returns:
            ``{(view, orientation): uint8 array (size, size, 3)}``, row 0 at the top.
        """
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        images = {}
        for view, logic in self.logics.items():
            node, window = logic.GetSliceNode(), self.windows[view]
            for orientation in orientations:
                node.SetOrientation(orientation)
                logic.FitSliceToAll()
                if centre_ras is not None:
                    node.JumpSliceByOffsetting(*centre_ras)
                # the blended layers, whose pipeline the logic makes once a volume is shown (Slicer's slice widget
                # follows it the same way)
                self.images[view].SetInputConnection(logic.GetImageDataConnection())
                window.Render()
                grab = vtk.vtkWindowToImageFilter()
                grab.SetInput(window)
                grab.Update()
                output = grab.GetOutput()
                width, height, _ = output.GetDimensions()
                pixels = vtk_to_numpy(output.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
                images[(view, orientation)] = np.ascontiguousarray(pixels)
        return images

    def close(self) -> None:
        for view, managers in self.managers.items():
            managers.SetMRMLDisplayableNode(None)
            self.windows[view].Finalize()
