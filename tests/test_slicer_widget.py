"""The module file's glue (module, Widget, Logic, the Sample Data entry) run without a Slicer application.

``SlicerLocalDiffusion.py`` imports ``qt``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper`` and (for Sample Data) ``SampleData``, which only a Slicer application
provides. Here they are small stand-ins, while the scene, the volume nodes and the slice views are real
MRML from the ``slicer-core`` wheel. The panel's widgets are made from the module's own ``.ui`` file, so a
name the code uses that the panel lacks fails here. A fake background job stands in for the translation
(``tests/test_slicer_logic.py`` runs the real one).
"""

import importlib.util
import inspect
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel (test extra) provides MRML")
from slicer_scene import slicer_like_scene  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SlicerLocalDiffusion.ui"


class FakeWidget:
    """A Qt widget as the module uses it: properties, signal connections, a click."""

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.enabled, self.text, self.value, self.handlers = True, "", 0, {}

    def connect(self, signal: str, handler):
        self.handlers.setdefault(signal.split("(")[0], []).append(handler)

    def emit(self, signal: str, *args):
        for handler in self.handlers.get(signal, []):
            wanted = len(inspect.signature(handler).parameters)
            handler(*args[:wanted])

    def click(self):
        if self.enabled:
            self.emit("clicked", False)

    def setMRMLScene(self, scene):
        self.scene = scene


class FakeTimer:
    def __init__(self):
        self.active, self.interval, self.handlers = False, 0, []

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, handler):
        self.handlers.append(handler)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _ui_widgets(path: Path) -> dict[str, FakeWidget]:
    return {w.get("name"): FakeWidget(w.get("name"), w.get("class")) for w in ET.parse(path).iter("widget")
            if w.get("name")}


#: MRML node id -> the parameter values stored "in" it (the real wrapper keeps them in the node)
_STORED: dict[str, dict] = {}


def _parameter_node_wrapper(cls):
    """``@parameterNodeWrapper``: attribute access to the declared fields, their defaults, values kept per
    MRML node, Modified events on that node (what the Widget observes)."""
    declared = {name: getattr(cls, name, None) for name in cls.__annotations__}

    class Wrapped:
        def __init__(self, node):
            object.__setattr__(self, "_node", node)
            object.__setattr__(self, "_values", _STORED.setdefault(node.GetID(), dict(declared)))

        def __getattr__(self, name):
            values = object.__getattribute__(self, "_values")
            if name in values:
                return values[name]
            raise AttributeError(name)

        def __setattr__(self, name, value):
            if name not in declared:
                raise AttributeError(f"{cls.__name__} declares no field {name!r}")
            self._values[name] = value
            self._node.Modified()

        def AddObserver(self, *args):
            return self._node.AddObserver(*args)

        def RemoveObserver(self, tag):
            return self._node.RemoveObserver(tag)

        def connectGui(self, ui):
            return "gui"

        def disconnectGui(self, tag):
            pass

    Wrapped.__name__ = cls.__name__
    return Wrapped


class FakeJob:
    """A background job that reports progress once, then finishes with volumes, regions and a warning (or fails)."""

    def __init__(self, input_node, fail: bool = False, plain: bool = False):
        self.input_node, self.fail, self.polls, self.progress, self.cancelled, self.cleaned = input_node, fail, 0, 0.0, False, False
        self.plain = plain  # the model writes the plain translation: no baseline
        self.regions, self.warnings = [{"number": 1}], ["a test warning"]

    def poll(self):
        self.polls += 1
        self.progress = min(1.0, 0.5 * self.polls)
        if self.polls < 2:
            return "running"
        return "failed" if self.fail else "done"

    def load_results(self, scene):
        from SlicerLocalDiffusionLib.nodes import array_to_node

        data = slicer.util.arrayFromVolume(self.input_node).transpose(2, 1, 0).astype(np.float32)
        affine = np.eye(4)
        names = ("local", "ood", "risk") if self.plain else ("local", "baseline", "ood", "risk")
        nodes = {name: array_to_node(data / data.max(), affine, scene, f"{name} node", label=(name == "ood_mask"))
                 for name in names}
        nodes["ood_mask"] = array_to_node((data > data.mean()).astype(np.uint8), affine, scene, "mask", label=True)
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "flagged regions table")
        nodes["region_table"] = table
        return nodes

    def error_message(self):
        return "the fake job failed"

    def cleanup(self):
        self.cleaned = True

    def cancel(self):
        self.cancelled = True


@pytest.fixture
def harness(monkeypatch):
    """The module file imported against the stand-ins; yields (module, scene, recorded calls)."""
    scene = slicer_like_scene()
    selection = slicer.vtkMRMLSelectionNode()
    scene.AddNode(selection)
    calls = {"errors": [], "connected": {}, "sample_data": [], "propagated": 0}

    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    monkeypatch.setitem(sys.modules, "qt", qt)

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent, self.layout = parent, types.SimpleNamespace(addWidget=lambda widget: None)

        def setup(self):
            pass

        def resourcePath(self, relative):
            return str(MODULE_DIR / "Resources" / relative)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            node = scene.GetSingletonNode("SlicerLocalDiffusion", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag("SlicerLocalDiffusion")
                scene.AddNode(node)
            return node

    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = object
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice = lambda choices: ("choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("range", low, high)
    wrapper.parameterNodeWrapper = _parameter_node_wrapper
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)

    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kw: calls["sample_data"].append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)

    application_logic = types.SimpleNamespace(
        GetSelectionNode=lambda: selection,
        PropagateTableSelection=lambda: calls.__setitem__("propagated", calls["propagated"] + 1))
    app = types.SimpleNamespace(pythonExecutable=sys.executable, cachePath=str(Path.cwd()),
                                connect=lambda signal, fn: calls["connected"].setdefault(signal, []).append(fn),
                                applicationLogic=lambda: application_logic, processEvents=lambda: None)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: FakeWidget("root", "qMRMLWidget"), raising=False)
    panel = _ui_widgets(UI_FILE)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda root: types.SimpleNamespace(**panel),
                        raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda message, **kw: calls["errors"].append(message),
                        raising=False)
    for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode",
                 "vtkMRMLTableNode"):
        assert hasattr(slicer, name), name  # the parameter node's field types are real MRML classes
    monkeypatch.setattr(sys.modules[__name__], "_STORED", {})
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    spec = importlib.util.spec_from_file_location("SlicerLocalDiffusion_under_test", MODULE_DIR / "SlicerLocalDiffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    widgets = calls["widgets"] = []
    real_setup = module.SlicerLocalDiffusionWidget.setup
    monkeypatch.setattr(module.SlicerLocalDiffusionWidget, "setup",
                        lambda self: widgets.append(self) or real_setup(self))
    yield module, scene, calls
    for widget in widgets:  # its observers on the scene go before the scene does
        widget.cleanup()
    scene.Clear(1)


def _input_volume(scene):
    from SlicerLocalDiffusionLib.nodes import array_to_node

    data = np.random.default_rng(0).uniform(1, 100, (12, 10, 8)).astype(np.float32)
    return array_to_node(data, np.diag([2.0, 2.0, 2.0, 1.0]), scene, "T1")


def test_the_module_registers_its_category_and_its_sample_data_at_start_up(harness):
    module, scene, calls = harness
    parent = types.SimpleNamespace()
    module.SlicerLocalDiffusion(parent)
    assert parent.title == "Local Diffusion" and parent.categories == ["Filtering"]
    assert calls["connected"]["startupCompleted()"] == [module.registerSampleData]
    module.registerSampleData()
    (entry,) = calls["sample_data"]
    assert entry["category"] == "Local Diffusion" and entry["customDownloader"] is module.loadPhantomSample
    assert entry["nodeNames"] == ["PhantomGlioma_T1", "PhantomGlioma_FLAIR", "PhantomGlioma_tumour"]
    assert Path(entry["thumbnailFileName"]).is_file()


def test_translate_poll_show_toggle_and_replace_through_the_panel(harness, monkeypatch):
    module, scene, calls = harness
    t1 = _input_volume(scene)
    jobs = []
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "ensureDependencies", staticmethod(lambda: True))
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "start",
                        staticmethod(lambda node, request: jobs.append((FakeJob(node), request)) or jobs[-1][0]))
    widget = module.SlicerLocalDiffusionWidget()
    widget.setup()
    ui, p = widget.ui, widget._parameterNode
    assert p.inputVolume is t1  # the first scalar volume is picked
    assert p.tIntermediate == -1 and p.steps == 0  # the model's validated settings
    assert ui.translateButton.enabled and not ui.cancelButton.enabled and not ui.toggleButton.enabled
    ui.serverTokenLineEdit.text = "  "
    ui.translateButton.click()
    job, request = jobs[-1]
    assert request.direction == "t1_to_flair" and request.t_intermediate == -1 and request.server == ""
    assert not request.force and "--force" not in request.command(Path("in.nii.gz"), Path("out"))
    assert widget._timer.active and not ui.translateButton.enabled and ui.cancelButton.enabled
    widget.onPoll()
    assert ui.progressBar.value == 50 and widget._job is job
    widget.onPoll()
    assert widget._job is None and not widget._timer.active and job.cleaned
    assert ui.statusLabel.text.startswith("Done. 1 flagged region(s)") and "a test warning" in ui.statusLabel.text
    assert p.localVolume is not None and p.baselineVolume is not None and ui.toggleButton.enabled
    red = scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert red.GetBackgroundVolumeID() == p.localVolume.GetID()
    assert red.GetForegroundVolumeID() == p.riskVolume.GetID()  # the risk map over the translation by default
    assert scene.GetNodeByID(scene.GetFirstNodeByClass("vtkMRMLSelectionNode").GetID()).GetActiveTableID() == \
        p.regionTable.GetID() and calls["propagated"] == 1
    ui.toggleButton.click()
    assert red.GetBackgroundVolumeID() == p.baselineVolume.GetID() and not p.showLocalDiffusion
    p.overlay = "ood"
    ui.overlayComboBox.emit("currentIndexChanged", 1)
    assert red.GetForegroundVolumeID() == p.oodVolume.GetID()
    first = p.localVolume
    ui.translateButton.click()
    widget.onPoll(), widget.onPoll()
    assert scene.GetNodeByID(first.GetID()) is None and p.localVolume is not first  # replaced, not piled up
    p.keepPreviousResults = True
    kept = p.localVolume
    ui.translateButton.click()
    widget.onPoll(), widget.onPoll()
    assert scene.GetNodeByID(kept.GetID()) is not None


def test_a_failed_job_is_shown_and_cancel_stops_a_running_one(harness, monkeypatch):
    module, scene, calls = harness
    _input_volume(scene)
    jobs = []
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "ensureDependencies", staticmethod(lambda: True))
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "start", staticmethod(
        lambda node, request: jobs.append(FakeJob(node, fail=len(jobs) == 0)) or jobs[-1]))
    widget = module.SlicerLocalDiffusionWidget()
    widget.setup()
    widget.ui.translateButton.click()
    widget.onPoll(), widget.onPoll()
    assert widget.ui.statusLabel.text == "Failed." and calls["errors"] == ["Translation failed:\nthe fake job failed"]
    assert widget._parameterNode.localVolume is None
    widget.ui.translateButton.click()
    widget.ui.cancelButton.click()
    assert jobs[-1].cancelled and widget._job is None and widget.ui.statusLabel.text == "Cancelled."
    assert widget.ui.translateButton.enabled and not widget.ui.cancelButton.enabled
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "ensureDependencies", staticmethod(lambda: False))
    widget.ui.translateButton.click()  # the install was declined: nothing starts
    assert len(jobs) == 2 and widget._job is None


def test_the_sample_data_entry_loads_the_phantom_case_and_selects_it(harness, monkeypatch, tmp_path, cohort):
    """The downloader makes the case with the package's own `phantom` command (here: a case of the test
    cohort stands in for it, copied where the command would write) and picks T1 and FLAIR in the panel."""
    import shutil

    import SlicerLocalDiffusionLib.sample_data as sample_data

    module, scene, calls = harness
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    made = []

    def run(cmd, **kw):
        made.append(cmd)
        shutil.copytree(case, Path(cmd[cmd.index("--out") + 1]) / case.name)
        return types.SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(sample_data.subprocess, "run", run)
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "ensureDependencies", staticmethod(lambda: True))
    monkeypatch.setattr(slicer.app, "cachePath", str(tmp_path))
    nodes = module.loadPhantomSample()
    assert [n.GetName() for n in nodes] == ["PhantomGlioma_T1", "PhantomGlioma_FLAIR", "PhantomGlioma_tumour"]
    assert nodes[2].IsA("vtkMRMLLabelMapVolumeNode")
    assert made[0][1:4] == ["-m", "localdiffusion.cli", "phantom"] and "--tumour" in made[0]
    p = module.SlicerLocalDiffusionLogic().getParameterNode()
    assert p.inputVolume is nodes[0] and p.referenceVolume is nodes[1]
    assert module.loadPhantomSample() and len(made) == 1  # made once, then reused from the cache folder
    monkeypatch.setattr(sample_data.subprocess, "run",
                        lambda cmd, **kw: types.SimpleNamespace(returncode=2, stderr="error: the disk is full\n"))
    monkeypatch.setattr(slicer.app, "cachePath", str(tmp_path / "elsewhere"))
    assert module.loadPhantomSample() == [] and calls["errors"][-1].endswith("error: the disk is full")


def test_a_direction_without_a_baseline_shows_its_translation_and_offers_no_toggle(harness, monkeypatch):
    module, scene, calls = harness
    _input_volume(scene)
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "ensureDependencies", staticmethod(lambda: True))
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "start",
                        staticmethod(lambda node, request: FakeJob(node, plain=True)))
    widget = module.SlicerLocalDiffusionWidget()
    widget.setup()
    ui, p = widget.ui, widget._parameterNode
    ui.translateButton.click()
    widget.onPoll(), widget.onPoll()
    assert p.localVolume is not None and p.baselineVolume is None and not ui.toggleButton.enabled
    p.showLocalDiffusion = False  # a parameter left from an earlier run with a baseline
    left, right, _ = module.SlicerLocalDiffusionLogic.viewVolumes(p)
    assert left is p.localVolume and right is None


def test_a_refused_volume_can_be_translated_anyway_from_the_panel(harness, monkeypatch):
    """The input check's refusal names the panel's control (not the command line's flag), and ticking it sends a
    forced request."""
    module, scene, calls = harness
    _input_volume(scene)
    requests = []

    class Refused(FakeJob):
        def error_message(self):
            return "error: volume 'T1': this looks like a FLAIR, not a T1: the model needs a T1 (--force translates anyway)"

    class Forced(FakeJob):
        def __init__(self, node):
            super().__init__(node)
            self.warnings = ["translated although this looks like a FLAIR, not a T1 (--force)"]

    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "ensureDependencies", staticmethod(lambda: True))
    monkeypatch.setattr(module.SlicerLocalDiffusionLogic, "start", staticmethod(
        lambda node, request: requests.append(request) or (Forced(node) if request.force else Refused(node, fail=True))))
    widget = module.SlicerLocalDiffusionWidget()
    widget.setup()
    widget.ui.translateButton.click()
    widget.onPoll(), widget.onPoll()
    message = calls["errors"][-1]
    assert message.endswith("(tick Advanced > Translate anyway to translate it)") and "--force" not in message
    widget._parameterNode.force = True
    widget.ui.translateButton.click()
    widget.onPoll(), widget.onPoll()
    assert requests[-1].force and "--force" in requests[-1].command(Path("in.nii.gz"), Path("out"))
    assert widget.ui.statusLabel.text.startswith("Done.")
    assert widget.ui.statusLabel.text.endswith("not a T1 (Translate anyway)")
