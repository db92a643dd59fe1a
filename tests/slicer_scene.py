"""A scene like the one 3D Slicer's application starts with, for tests on the slicer-core wheel."""


def slicer_like_scene():
    """A scene with the layout node and the Red/Yellow/Green slice composite nodes Slicer creates."""
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLLayoutNode())
    for name in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
    return scene
