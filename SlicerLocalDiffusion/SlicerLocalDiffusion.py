"""SlicerLocalDiffusion: hallucination-aware T1 <-> FLAIR translation in 3D Slicer.

Module (metadata), parameter node, Widget (GUI only), Logic (no GUI; the work is in
``SlicerLocalDiffusionLib``, run in a background process) and Test. Research use only.
"""

from __future__ import annotations

import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SlicerLocalDiffusionLib import BackgroundTranslation, TranslationRequest

REQUIRED_PACKAGES = "localdiffusion"


class SlicerLocalDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Local Diffusion"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerLocalDiffusion developers"]
        self.parent.helpText = (
            "Translate a T1 volume to FLAIR (or FLAIR to T1) with a diffusion model, see where the input is "
            "out of distribution, and compare the baseline with the hallucination-reduced Local Diffusion "
            "translation. Research use only, not for diagnosis.")
        self.parent.acknowledgementText = "Built on MONAI, timm and faiss; methods after Kim, Jin et al. (ECCV 2024)."


@parameterNodeWrapper
class SlicerLocalDiffusionParameterNode:
    """Everything the panel edits; outputs are node references filled after a run."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    direction: Annotated[str, Choice(["t1_to_flair", "flair_to_t1"])] = "t1_to_flair"
    steps: Annotated[int, WithinRange(1, 100)] = 25
    seed: Annotated[int, WithinRange(0, 1_000_000)] = 0
    tIntermediate: Annotated[int, WithinRange(-1, 99)] = -1
    oodOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    oodThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.99
    showLocalDiffusion: bool = True
    overlay: Annotated[str, Choice(["ood", "risk"])] = "ood"
    baselineVolume: vtkMRMLScalarVolumeNode
    localVolume: vtkMRMLScalarVolumeNode
    oodVolume: vtkMRMLScalarVolumeNode
    oodMask: vtkMRMLLabelMapVolumeNode
    riskVolume: vtkMRMLScalarVolumeNode


class SlicerLocalDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: binds the .ui to the parameter node and drives a background job."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(500)
        self._timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SlicerLocalDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SlicerLocalDiffusionLogic()
        self.ui.translateButton.connect("clicked(bool)", self.onTranslate)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.toggleButton.connect("clicked(bool)", self.onToggle)
        self.ui.oodOpacitySlider.connect("valueChanged(double)", self.onDisplayChanged)
        self.ui.oodThresholdSlider.connect("valueChanged(double)", self.onDisplayChanged)
        self.ui.overlayComboBox.connect("currentIndexChanged(int)", self.onOverlayChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self.setParameterNode(None)

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._updateButtons()

    def _updateButtons(self):
        running = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.translateButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        self.ui.toggleButton.enabled = bool(self._parameterNode and self._parameterNode.localVolume)

    def onTranslate(self):
        if not self.logic.ensureDependencies():
            return
        p = self._parameterNode
        try:
            self._job = self.logic.start(p.inputVolume, self.logic.request(p))
        except Exception as exc:  # shown to the user, not swallowed
            slicer.util.errorDisplay(f"Could not start the translation: {exc}")
            self._job = None
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Translating..."
        self._timer.start()
        self._updateButtons()

    def onPoll(self):
        status = self._job.poll()
        self.ui.progressBar.value = int(100 * self._job.progress)
        if status == "running":
            return
        self._timer.stop()
        job, self._job = self._job, None
        if status == "done":
            self.logic.storeResults(self._parameterNode, job.load_results(slicer.mrmlScene))
            self.logic.showResults(self._parameterNode)
            self.ui.statusLabel.text = "Done."
        else:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"Translation failed:\n{job.error_message()}")
        job.cleanup()
        self._updateButtons()

    def onCancel(self):
        if self._job is not None:
            self._timer.stop()
            self._job.cancel()
            self._job = None
            self.ui.statusLabel.text = "Cancelled."
        self._updateButtons()

    def onToggle(self):
        self._parameterNode.showLocalDiffusion = not self._parameterNode.showLocalDiffusion
        self.logic.showResults(self._parameterNode)

    def onDisplayChanged(self, _value=None):
        if self._parameterNode and self.logic.overlayVolume(self._parameterNode):
            self.logic.updateOodDisplay(self._parameterNode)

    def onOverlayChanged(self, _index=None):
        if self._parameterNode and self._parameterNode.localVolume:
            self.logic.showResults(self._parameterNode)


class SlicerLocalDiffusionLogic(ScriptedLoadableModuleLogic):
    """No GUI: builds the request, runs it in the background, shows results in views."""

    def getParameterNode(self):
        return SlicerLocalDiffusionParameterNode(super().getParameterNode())

    @staticmethod
    def request(p) -> TranslationRequest:
        return TranslationRequest(direction=p.direction, steps=p.steps, seed=p.seed, t_intermediate=p.tIntermediate,
                                  python=os.environ.get("SLICER_LOCALDIFFUSION_PYTHON", slicer.app.pythonExecutable
                                                        if hasattr(slicer, "app") else "python"))

    @staticmethod
    def ensureDependencies() -> bool:
        """Offer to install ``localdiffusion`` (torch through the PyTorch extension) on first use."""
        try:
            import localdiffusion  # noqa: F401
            return True
        except ImportError:
            pass
        if not slicer.util.confirmOkCancelDisplay("Local Diffusion needs the 'localdiffusion' Python package "
                                                  "(and PyTorch from the PyTorch extension). Install now?"):
            return False
        try:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
        except ImportError:
            slicer.util.errorDisplay("Please install the PyTorch extension first.")
            return False
        slicer.util.pip_install(REQUIRED_PACKAGES)
        return True

    @staticmethod
    def start(inputNode, request: TranslationRequest) -> BackgroundTranslation:
        job = BackgroundTranslation(inputNode, request)
        job.start()
        return job

    @staticmethod
    def storeResults(p, nodes: dict) -> None:
        p.localVolume, p.baselineVolume = nodes.get("local"), nodes.get("baseline")
        p.oodVolume, p.oodMask = nodes.get("ood"), nodes.get("ood_mask")
        p.riskVolume = nodes.get("risk")

    @staticmethod
    def overlayVolume(p):
        """The overlay the user picked: the OOD probability or the hallucination risk (if computed)."""
        return p.riskVolume if p.overlay == "risk" and p.riskVolume else p.oodVolume

    def showResults(self, p) -> None:
        """Side-by-side linked views: left the selected translation, right the other (or the
        reference); the OOD map (or the risk map) as a coloured overlay on both."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        primary = p.localVolume if p.showLocalDiffusion else p.baselineVolume
        secondary = p.referenceVolume or (p.baselineVolume if p.showLocalDiffusion else p.localVolume)
        for viewName, volume in (("Red", primary), ("Yellow", secondary)):
            composite = layoutManager.sliceWidget(viewName).sliceLogic().GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(volume.GetID() if volume else None)
            overlay = self.overlayVolume(p)
            composite.SetForegroundVolumeID(overlay.GetID() if overlay else None)
            composite.SetLinkedControl(True)
        self.updateOodDisplay(p)

    @classmethod
    def updateOodDisplay(cls, p) -> None:
        """Colour, threshold and opacity of the overlay (both maps are probabilities in [0, 1])."""
        volume = cls.overlayVolume(p)
        if not volume:
            return
        if volume.GetDisplayNode() is None:
            volume.CreateDefaultDisplayNodes()
        display = volume.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(p.oodThreshold)
        display.SetUpperThreshold(1.0)
        if hasattr(slicer, "app"):
            for viewName in ("Red", "Yellow"):
                composite = slicer.app.layoutManager().sliceWidget(viewName).sliceLogic().GetSliceCompositeNode()
                composite.SetForegroundOpacity(p.oodOpacity)


class SlicerLocalDiffusionTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer: phantom T1 -> nodes for every output, geometry preserved."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_translate_phantom()

    def test_translate_phantom(self):
        import tempfile
        from pathlib import Path

        from localdiffusion.phantom.dataset import write_cohort
        from SlicerLocalDiffusionLib import nifti_to_node, run_translation

        self.delayDisplay("Generating a phantom glioma case")
        folder = Path(tempfile.mkdtemp())
        entry = write_cohort(folder, 0, 1, 0, split="test")[0]
        t1 = nifti_to_node(folder / entry["case_id"] / f"{entry['case_id']}_t1.nii.gz", slicer.mrmlScene, "T1")
        self.delayDisplay("Translating (a few minutes on a CPU)")
        nodes = run_translation(t1, TranslationRequest(steps=10), slicer.mrmlScene)
        self.assertTrue({"local", "baseline", "ood", "ood_mask"} <= set(nodes))  # "risk" with the calibrated step count
        ref, got = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        t1.GetIJKToRASMatrix(ref)
        for node in nodes.values():
            node.GetIJKToRASMatrix(got)
            for r in range(4):
                for c in range(4):
                    self.assertAlmostEqual(ref.GetElement(r, c), got.GetElement(r, c), places=4)
        self.delayDisplay("Test passed")
