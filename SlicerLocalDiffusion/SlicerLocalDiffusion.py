"""SlicerLocalDiffusion: hallucination-aware T1 <-> FLAIR translation in 3D Slicer.

Module (metadata), parameter node, Widget (GUI only), Logic (no GUI; the work is in
``SlicerLocalDiffusionLib``: a background process with the local ``localdiffusion``
package, or a MONAI Label server) and Test. Research use only.
"""

from __future__ import annotations

import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SlicerLocalDiffusionLib import (TranslationJob, TranslationRequest, remove_nodes, show_side_by_side,
                                    start_translation, style_overlay)



#: the command line's words in the job's messages -> the panel's words for the control that does the same
#: (replaced in this order)
PANEL_WORDS = {"--force translates anyway": "tick Advanced > Translate anyway to translate it",
               "(--force)": "(Translate anyway)", "--force": "Advanced > Translate anyway"}


def panel_words(message: str) -> str:
    """A job's message with the command line's options named as the panel's controls (:data:`PANEL_WORDS`)."""
    for flag, control in PANEL_WORDS.items():
        message = message.replace(flag, control)
    return message


class SlicerLocalDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Local Diffusion"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerLocalDiffusion developers"]
        self.parent.helpText = (
            "Translate a T1 volume to FLAIR (or FLAIR to T1) with a diffusion model, see where the input is "
            "out of distribution, and compare the baseline with the hallucination-reduced Local Diffusion "
            "translation. Research use only, not for diagnosis.")
        self.parent.acknowledgementText = "Built on MONAI, timm and faiss; methods after Kim, Jin et al. (ECCV 2024)."
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The phantom glioma case (T1, FLAIR, tumour labels) as an entry of Slicer's Sample Data module; it is made
    on this computer by the installed package when first clicked (nothing is downloaded)."""
    import SampleData

    from SlicerLocalDiffusionLib.sample_data import CATEGORY, NODE_NAMES, SAMPLE_NAME

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, nodeNames=list(NODE_NAMES.values()),
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "SlicerLocalDiffusion.png"),
        customDownloader=loadPhantomSample)


def loadPhantomSample(source=None) -> list:
    """Sample Data's downloader for the phantom case: installs the package on first use (asking first), makes
    the case, loads it and selects its T1 as the input and its FLAIR as the reference."""
    from SlicerLocalDiffusionLib.sample_data import SampleDataError, load_phantom_case

    logic = SlicerLocalDiffusionLogic()
    if not logic.ensureDependencies():
        return []
    try:
        nodes = load_phantom_case(slicer.mrmlScene, logic.pythonExecutable(),
                                  os.path.join(slicer.app.cachePath, "LocalDiffusionPhantom"))
    except SampleDataError as exc:
        slicer.util.errorDisplay(f"Local Diffusion sample data: {exc}")
        return []
    p = logic.getParameterNode()
    p.inputVolume, p.referenceVolume = nodes[0], nodes[1]
    return nodes


@parameterNodeWrapper
class SlicerLocalDiffusionParameterNode:
    """Everything the panel edits; outputs are node references filled after a run."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    direction: Annotated[str, Choice(["t1_to_flair", "flair_to_t1"])] = "t1_to_flair"
    steps: Annotated[int, WithinRange(0, 100)] = 0  # 0: the model's validated step count
    seed: Annotated[int, WithinRange(0, 1_000_000)] = 0
    tIntermediate: Annotated[int, WithinRange(-1, 99)] = -1  # -1: the model's validated fusion timestep
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    # translate an input the input gate refuses (it does not look like the source contrast, or like a brain)
    force: bool = False
    oodOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    oodThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.99
    showLocalDiffusion: bool = True
    # the risk map beside the translation by default (the OOD map when the run wrote no risk map)
    overlay: Annotated[str, Choice(["risk", "ood"])] = "risk"
    serverUrl: str = ""
    baselineVolume: vtkMRMLScalarVolumeNode
    localVolume: vtkMRMLScalarVolumeNode
    oodVolume: vtkMRMLScalarVolumeNode
    oodMask: vtkMRMLLabelMapVolumeNode
    riskVolume: vtkMRMLScalarVolumeNode
    # the risk map's flagged regions: a segmentation outlined over the translations, and its table
    regions: vtkMRMLSegmentationNode
    regionTable: vtkMRMLTableNode
    regionLabels: vtkMRMLLabelMapVolumeNode
    # a new run replaces the previous run's result nodes unless this is set
    keepPreviousResults: bool = False


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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None):
        running = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.translateButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        # a direction whose model writes the plain translation (Local Diffusion off) has no baseline to toggle to
        self.ui.toggleButton.enabled = bool(self._parameterNode and self._parameterNode.localVolume
                                            and self._parameterNode.baselineVolume)

    def onTranslate(self):
        p = self._parameterNode
        request = self.logic.request(p.direction, p.steps, p.seed, p.tIntermediate, p.serverUrl.strip(), p.device,
                                     self.ui.serverTokenLineEdit.text.strip(), p.force)
        if not request.server and not self.logic.ensureDependencies():
            return
        try:
            self._job = self.logic.start(p.inputVolume, request)
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
            self.showResults()
            flagged = (f" {len(job.regions)} flagged region(s): do not trust the translation there (table: "
                       f"{self._parameterNode.regionTable.GetName()})." if job.regions else "")
            self.ui.statusLabel.text = "Done." + flagged + "".join(f" Warning: {panel_words(w)}" for w in job.warnings)
        else:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"Translation failed:\n{panel_words(job.error_message())}")
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
        self.showResults()

    def showResults(self):
        p = self._parameterNode
        self.logic.showResults(slicer.mrmlScene, *self.logic.viewVolumes(p), p.oodOpacity, p.oodThreshold)
        if p.regionTable is not None:  # the flagged-region table in the table view
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetActiveTableID(p.regionTable.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def onDisplayChanged(self, _value=None):
        p = self._parameterNode
        if p and p.localVolume:
            style_overlay(slicer.mrmlScene, self.logic.viewVolumes(p)[2], p.oodOpacity, p.oodThreshold)

    def onOverlayChanged(self, _index=None):
        if self._parameterNode and self._parameterNode.localVolume:
            self.showResults()


class SlicerLocalDiffusionLogic(ScriptedLoadableModuleLogic):
    """No GUI: builds the request, runs it in the background, shows results through MRML."""

    def getParameterNode(self):
        return SlicerLocalDiffusionParameterNode(super().getParameterNode())

    @staticmethod
    def request(direction: str, steps: int, seed: int, tIntermediate: int, serverUrl: str = "",
                device: str = "auto", token: str = "", force: bool = False) -> TranslationRequest:
        """The job for the panel's choices; an empty ``serverUrl`` runs the local package."""
        return TranslationRequest(direction=direction, steps=steps, seed=seed, t_intermediate=tIntermediate,
                                  device=device, force=force, python=SlicerLocalDiffusionLogic.pythonExecutable(),
                                  server=serverUrl, token=token)

    @staticmethod
    def pythonExecutable() -> str:
        """The Python that runs the local package: ``$SLICER_LOCALDIFFUSION_PYTHON``, else Slicer's own."""
        return os.environ.get("SLICER_LOCALDIFFUSION_PYTHON",
                              slicer.app.pythonExecutable if hasattr(slicer, "app") else "python")

    @staticmethod
    def ensureDependencies() -> bool:
        """Install or upgrade ``localdiffusion`` (pinned version) and PyTorch (minimum version,
        through the PyTorch extension so that it picks the CUDA build) on first use."""
        from SlicerLocalDiffusionLib.dependencies import DependencyError, ensure

        def installTorch(requirement: str) -> None:
            try:
                import PyTorchUtils
            except ImportError:
                raise DependencyError("the PyTorch extension is not installed (Extensions Manager: PyTorch)") from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=requirement) is None:
                raise DependencyError(f"PyTorch {requirement} could not be installed")

        try:
            return ensure(slicer.util.confirmOkCancelDisplay, installTorch, slicer.util.pip_install)
        except DependencyError as exc:
            slicer.util.errorDisplay(f"Local Diffusion cannot run locally: {exc}")
            return False

    @staticmethod
    def start(inputNode, request: TranslationRequest) -> TranslationJob:
        return start_translation(inputNode, request)

    #: parameter-node field -> result key of ``load_results``
    RESULT_FIELDS = {"localVolume": "local", "baselineVolume": "baseline", "oodVolume": "ood", "oodMask": "ood_mask",
                     "riskVolume": "risk", "regionLabels": "risk_regions", "regions": "regions",
                     "regionTable": "region_table"}

    @classmethod
    def storeResults(cls, p, nodes: dict) -> None:
        """Point the parameter node at a run's result nodes; the previous run's are removed from the scene unless
        ``keepPreviousResults``."""
        previous = [getattr(p, field) for field in cls.RESULT_FIELDS]
        for field, key in cls.RESULT_FIELDS.items():
            setattr(p, field, nodes.get(key))
        if not p.keepPreviousResults:
            remove_nodes(slicer.mrmlScene, [node for node in previous if node is not None and node not in nodes.values()])

    @staticmethod
    def viewVolumes(p) -> tuple:
        """(left, right, overlay): left the selected translation, right the other one (or the
        true target when given); the overlay the user picked, OOD probability or risk."""
        baseline = p.baselineVolume  # None where the model writes the plain translation as the translation
        primary = p.localVolume if p.showLocalDiffusion or baseline is None else baseline
        secondary = p.referenceVolume or (baseline if primary is p.localVolume else p.localVolume)
        overlay = p.riskVolume if p.overlay == "risk" and p.riskVolume else p.oodVolume
        return primary, secondary, overlay

    @staticmethod
    def showResults(scene, left, right, overlay, opacity: float, threshold: float) -> None:
        show_side_by_side(scene, left, right, overlay, opacity, threshold)


class SlicerLocalDiffusionTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer, through the widget: pick a phantom T1, press Translate, wait,
    check every output node (geometry preserved) and what the side-by-side views show."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_translate_phantom_through_the_panel()

    def test_translate_phantom_through_the_panel(self):
        import tempfile
        import time
        from pathlib import Path

        from localdiffusion.phantom.dataset import write_cohort
        from SlicerLocalDiffusionLib import nifti_to_node

        self.delayDisplay("Generating a phantom glioma case")
        folder = Path(tempfile.mkdtemp())
        entry = write_cohort(folder, 0, 1, 0, split="test")[0]
        t1 = nifti_to_node(folder / entry["case_id"] / f"{entry['case_id']}_t1.nii.gz", slicer.mrmlScene, "T1")
        slicer.util.selectModule("SlicerLocalDiffusion")
        widget = slicer.modules.slicerlocaldiffusion.widgetRepresentation().self()
        p = widget._parameterNode
        p.inputVolume, p.steps = t1, 10
        self.delayDisplay("Translating (a few minutes on a CPU)")
        widget.ui.translateButton.click()
        deadline = time.time() + 3600
        while widget._job is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertIsNone(widget._job, "translation did not finish within an hour")
        self.assertEqual(widget.ui.statusLabel.text, "Done.")
        nodes = [p.localVolume, p.baselineVolume, p.oodVolume, p.oodMask]  # risk needs the calibrated step count
        self.assertTrue(all(nodes))
        ref, got = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        t1.GetIJKToRASMatrix(ref)
        for node in nodes:
            node.GetIJKToRASMatrix(got)
            for r in range(4):
                for c in range(4):
                    self.assertAlmostEqual(ref.GetElement(r, c), got.GetElement(r, c), places=4)
        red = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(red.GetBackgroundVolumeID(), p.localVolume.GetID())
        self.assertEqual(red.GetForegroundVolumeID(), p.oodVolume.GetID())
        widget.ui.toggleButton.click()
        self.assertEqual(red.GetBackgroundVolumeID(), p.baselineVolume.GetID())
        self.delayDisplay("Test passed")
