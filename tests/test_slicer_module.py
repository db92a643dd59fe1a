"""Static checks of the Slicer module: .ui, parameter node, CMake lists, Python 3.12."""

import ast
import importlib.util
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SlicerLocalDiffusion"
MODULE = MODULE_DIR / "SlicerLocalDiffusion.py"
UI = MODULE_DIR / "Resources" / "UI" / "SlicerLocalDiffusion.ui"


def _ui_widgets():
    tree = ET.parse(UI)
    assert tree.getroot().tag == "ui" and tree.getroot().get("version") == "4.0"
    return {w.get("name"): w for w in tree.iter("widget") if w.get("name")}


def test_ui_is_valid_designer_xml_with_the_used_widgets():
    widgets = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used, "the module uses no widgets?"
    assert used <= set(widgets), f"widgets missing from the .ui: {sorted(used - set(widgets))}"
    custom = {c.findtext("class") for c in ET.parse(UI).iter("customwidget")}
    for w in widgets.values():
        cls = w.get("class")
        assert cls.startswith("Q") or cls in custom, f"{cls} is neither Qt nor declared as a custom widget"


def _parameter_fields():
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SlicerLocalDiffusionParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_slicer_parameter_name_maps_to_a_parameter_node_field():
    fields = _parameter_fields()
    names = []
    for w in _ui_widgets().values():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names.append(prop.findtext("string"))
    assert len(names) >= 8
    assert set(names) <= fields, f"unknown parameter names: {sorted(set(names) - fields)}"


def _cmake_listed(cmake: Path) -> list[str]:
    text = cmake.read_text()
    listed = []
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)(.*?)\)", text, re.S):
        listed += [item.replace("${MODULE_NAME}", "SlicerLocalDiffusion") for item in block.split()]
    return listed


def test_every_file_the_cmake_lists_name_exists():
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert f"set({key}" in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    for sub in re.findall(r"add_subdirectory\((\w+)\)", top):
        assert (ROOT / sub / "CMakeLists.txt").exists()
    listed = _cmake_listed(MODULE_DIR / "CMakeLists.txt")
    assert "SlicerLocalDiffusion.py" in listed and "Resources/UI/SlicerLocalDiffusion.ui" in listed
    for item in listed:
        assert (MODULE_DIR / item).is_file(), item
    python_files = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py")}
    assert python_files <= set(listed), f"not installed by CMake: {python_files - set(listed)}"


def _python312():
    """A working Python 3.12 (pyenv installs, then PATH; pyenv shims may not resolve)."""
    candidates = sorted(Path("/root/.pyenv/versions").glob("3.12*/bin/python3.12")) + [shutil.which("python3.12")]
    for candidate in candidates:
        if candidate and subprocess.run([str(candidate), "--version"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


def test_module_compiles_under_python_312(tmp_path):
    python = _python312()
    if python is None:
        pytest.skip("no Python 3.12 interpreter on this machine")
    files = [str(p) for p in MODULE_DIR.rglob("*.py")]
    proc = subprocess.run([python, "-c", "import sys, py_compile\n[py_compile.compile(f, cfile=sys.argv[1] + '/x.pyc', "
                           "doraise=True) for f in sys.argv[2:]]\nprint(sys.version)", str(tmp_path), *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3.12")


#: Slicer parameter-node field -> option of localdiffusion.options (Slicer may run without the package)
SLICER_OPTIONS = {"direction": "direction", "steps": "steps", "seed": "seed", "tIntermediate": "t_intermediate",
                  "device": "device", "force": "force"}


def _parameter_declarations() -> dict[str, dict]:
    """Field -> {"default", "choices" or "range"} from the parameter node's annotations."""
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SlicerLocalDiffusionParameterNode")
    out = {}
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or node.value is None:
            continue
        entry = {"default": ast.literal_eval(node.value)}
        for call in ast.walk(node.annotation):
            if isinstance(call, ast.Call) and call.func.id == "Choice":
                entry["choices"] = ast.literal_eval(call.args[0])
            if isinstance(call, ast.Call) and call.func.id == "WithinRange":
                entry["range"] = tuple(ast.literal_eval(a) for a in call.args)
        out[node.target.id] = entry
    return out


def test_slicer_parameters_agree_with_the_options_table():
    from localdiffusion.options import OPTIONS

    declared = _parameter_declarations()
    for field, name in SLICER_OPTIONS.items():
        option, slicer = OPTIONS[name], declared[field]
        assert slicer["default"] == option.default, field
        if option.choices is not None:
            assert list(slicer["choices"]) == list(option.choices), field
        if "range" in slicer:  # the panel may be stricter than the table, never wider
            low, high = slicer["range"]
            assert option.low <= low and high <= option.high, field


def test_ui_widgets_agree_with_the_parameter_node():
    declared = _parameter_declarations()
    tree = ET.parse(UI)
    for widget in tree.iter("widget"):
        param = widget.find("./property[@name='SlicerParameterName']/string")
        if param is None or param.text not in declared:
            continue
        entry = declared[param.text]
        props = {p.get("name"): p[0].text for p in widget.findall("property") if len(p)}
        if widget.get("class") == "QSpinBox":
            assert int(props["value"]) == entry["default"], param.text
            assert (int(props["minimum"]), int(props["maximum"])) == entry["range"], param.text
        if widget.get("class") == "QComboBox":
            items = [i.find("./property/string").text for i in widget.findall("item")]
            assert items == list(entry["choices"]), param.text
        if widget.get("class") == "QCheckBox":
            assert (props["checked"] == "true") == entry["default"], param.text


def test_the_panel_shows_the_risk_map_by_default():
    """Its default overlay is the risk map, and its default step count is the model's validated one,
    for which each shipped model's risk calibration was fitted (so that a default run writes one)."""
    from localdiffusion.detectors.risk import RiskCalibration
    from localdiffusion.jobs.run import model_paths
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.options import DIRECTIONS, default
    from localdiffusion.shipped import MODELS_ROOT

    declared = _parameter_declarations()
    assert declared["overlay"]["default"] == "risk" == declared["overlay"]["choices"][0]
    assert declared["steps"]["default"] == 0 == default("steps")
    for direction in DIRECTIONS:
        paths = model_paths(MODELS_ROOT, direction)
        assert RiskCalibration.load(paths["risk"]).steps == read_config(paths["diffusion"]).steps


def test_the_slicer_job_request_defaults_agree_with_the_options_table(monkeypatch):
    """The background job's request (what a run without the panel sends) carries the table's defaults."""
    from dataclasses import fields

    from localdiffusion.options import OPTIONS

    monkeypatch.syspath_prepend(str(MODULE_DIR))
    from SlicerLocalDiffusionLib.jobs import TranslationRequest

    defaults = {f.name: f.default for f in fields(TranslationRequest)}
    shared = [name for name in defaults if name in OPTIONS]
    assert {"direction", "steps", "seed", "t_intermediate", "sampler", "device", "force"} <= set(shared)
    for name in shared:
        assert defaults[name] == OPTIONS[name].default, name


def test_the_overlay_threshold_is_the_calibrated_flag_level():
    """The panel's overlay threshold (parameter node and .ui slider) is the level every shipped map is
    calibrated at (1% of healthy validation voxels)."""
    from localdiffusion.options import FLAG_THRESHOLD

    declared = _parameter_declarations()
    assert declared["oodThreshold"]["default"] == pytest.approx(FLAG_THRESHOLD)
    # the defaults the view code (and research.slicer_view) uses are the panel's
    spec = importlib.util.spec_from_file_location("views", MODULE_DIR / "SlicerLocalDiffusionLib" / "views.py")
    views = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(views)
    assert (views.OVERLAY_THRESHOLD, views.OVERLAY_OPACITY) == pytest.approx(
        (declared["oodThreshold"]["default"], declared["oodOpacity"]["default"]))
    slider = _ui_widgets()["oodThresholdSlider"]
    value = slider.find("./property[@name='value']/double")
    assert float(value.text) == pytest.approx(FLAG_THRESHOLD)


def test_the_extensions_index_entry_matches_the_extension_and_the_catalog_schema():
    """docs/extensions_index/SlicerLocalDiffusion.json is the file to submit to Slicer/ExtensionsIndex. The keys
    its schema allows (slicer-extension-catalog-entry-schema-v1.0.1.json, ``additionalProperties`` false,
    required ``$schema``, ``category``, ``scm_url``) as read in Slicer/ExtensionsIndex at commit
    07f1d1b2781c7dd9f6e2a9f5521b3ed43631724c, where the MONAIAuto3DSeg and TotalSegmentator entries use the same
    form."""
    import json
    import re

    root = MODULE.parents[1]
    entry = json.loads((root / "docs" / "extensions_index" / "SlicerLocalDiffusion.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert 1 <= entry["tier"] <= 5 and isinstance(entry["build_dependencies"], list)
    cmake = (root / "CMakeLists.txt").read_text()
    setting = lambda name: re.search(rf'set\({name} "([^"]*)"\)', cmake).group(1)  # noqa: E731
    assert re.search(r"project\((\w+)\)", cmake).group(1) == "SlicerLocalDiffusion"  # the entry's file name
    assert entry["category"] == setting("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == setting("EXTENSION_DEPENDS").split()
    assert setting("EXTENSION_HOMEPAGE").startswith(entry["scm_url"])
