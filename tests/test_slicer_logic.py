"""Slicer module logic on real MRML nodes (slicer-core wheel), with the tiny models.

The path the panel takes: an input node is picked, a request built, the job started
(local background process or MONAI Label server), polled until done, the outputs loaded as
nodes with the input's geometry and shown side by side in the Red/Yellow slice views with
the OOD map as a thresholded coloured overlay. The scene gets the layout and slice
composite nodes that Slicer's application creates at start-up.
"""

import contextlib
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel (test extra) provides MRML")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion"))

from SlicerLocalDiffusionLib import (LocalTranslation, ServerTranslation, TranslationRequest,  # noqa: E402
                                    nifti_to_node, node_to_nifti, run_translation, show_side_by_side,
                                    start_translation, style_overlay)
from SlicerLocalDiffusionLib.jobs import read_events, run_progress, written_outputs  # noqa: E402
from slicer_scene import slicer_like_scene  # noqa: E402

pytestmark = pytest.mark.slow  # real servers, installs, subprocesses or shipped models


def _tumour_case(cohort):
    return next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)


def _composite(scene, name):
    return scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{name}")


def _assert_same_geometry(nodes, reference):
    import vtk

    ref, got = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(ref)
    for node in nodes.values():
        node.GetIJKToRASMatrix(got)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(got), slicer.util.arrayFromVTKMatrix(ref))
        assert slicer.util.arrayFromVolume(node).shape == slicer.util.arrayFromVolume(reference).shape


def test_nifti_node_round_trip_preserves_geometry(cohort, tmp_path):
    case = _tumour_case(cohort)
    src = case / f"{case.name}_t1.nii.gz"
    scene = slicer.vtkMRMLScene()
    node = nifti_to_node(src, scene, "T1")
    assert node.IsA("vtkMRMLScalarVolumeNode") and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    out = node_to_nifti(node, tmp_path / "back.nii.gz")
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_allclose(a.affine, b.affine)
    np.testing.assert_array_equal(np.asarray(a.dataobj, np.float32), b.get_fdata(dtype=np.float32))


def test_local_translation_from_node_selection_to_the_views(tiny_models, cohort):
    case = _tumour_case(cohort)
    scene = slicer_like_scene()
    t1 = nifti_to_node(case / f"{case.name}_t1.nii.gz", scene, "T1")
    flair = nifti_to_node(case / f"{case.name}_flair.nii.gz", scene, "FLAIR")
    request = TranslationRequest(direction="t1_to_flair", steps=2, t_intermediate=5, models=str(tiny_models))
    job = start_translation(t1, request)
    assert isinstance(job, LocalTranslation) and job.input_path.is_file()
    while (status := job.poll()) == "running":
        time.sleep(0.2)
    assert status == "done" and job.progress == 1.0
    assert run_progress(read_events("".join(job.log))) == 1.0  # both translation phases of the real output finished
    nodes = job.load_results(scene)
    job.cleanup()
    assert not job.workdir.exists()
    assert set(nodes) == {"local", "baseline", "ood", "ood_mask"}
    assert nodes["ood_mask"].IsA("vtkMRMLLabelMapVolumeNode") and nodes["local"].GetName() == "T1 Local Diffusion"
    _assert_same_geometry(nodes, t1)

    show_side_by_side(scene, nodes["local"], flair, nodes["ood"], opacity=0.4, threshold=0.9)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    red, yellow = _composite(scene, "Red"), _composite(scene, "Yellow")
    assert red.GetBackgroundVolumeID() == nodes["local"].GetID() and yellow.GetBackgroundVolumeID() == flair.GetID()
    assert red.GetForegroundVolumeID() == yellow.GetForegroundVolumeID() == nodes["ood"].GetID()
    assert red.GetLinkedControl() and red.GetForegroundOpacity() == pytest.approx(0.4)
    assert _composite(scene, "Green").GetBackgroundVolumeID() is None  # only the two compared views change
    display = nodes["ood"].GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.9)
    legends = [nodes["ood"].GetNthDisplayNode(i) for i in range(nodes["ood"].GetNumberOfDisplayNodes())]
    legend = next(n for n in legends if n is not None and n.IsA("vtkMRMLColorLegendDisplayNode"))
    assert legend.GetPrimaryDisplayNode() is display and legend.GetTitleText() == "OOD probability"
    assert legend.GetVisibility() and legend.GetLabelFormat() == "%.3f"
    # the colours (and so the legend, which Slicer draws over the window) span the shown values, 0.9 to 1
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.9, 1.0))

    style_overlay(scene, nodes["ood"], opacity=0.8, threshold=0.5)  # the sliders
    assert yellow.GetForegroundOpacity() == pytest.approx(0.8) and display.GetLowerThreshold() == pytest.approx(0.5)
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.5, 1.0))
    show_side_by_side(scene, nodes["baseline"], nodes["local"], nodes["ood"], 0.8, 0.5)  # the toggle
    assert red.GetBackgroundVolumeID() == nodes["baseline"].GetID()


def test_views_need_the_slice_views():
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "x")
    with pytest.raises(RuntimeError, match="slice view"):
        show_side_by_side(scene, node, None, None, 0.5, 0.5)


def test_server_translation_returns_every_output_on_the_input_grid(server, cohort):
    case = _tumour_case(cohort)
    scene = slicer_like_scene()
    flair = nifti_to_node(case / f"{case.name}_flair.nii.gz", scene, "FLAIR")
    request = TranslationRequest(direction="flair_to_t1", steps=2, t_intermediate=5, server=server)
    job = start_translation(flair, request)
    assert isinstance(job, ServerTranslation)
    assert job.wait(600) == "done", job.error_message()
    nodes = job.load_results(scene)
    job.cleanup()
    assert set(nodes) == {"local", "baseline", "ood", "ood_mask"}
    assert nodes["ood_mask"].IsA("vtkMRMLLabelMapVolumeNode")
    _assert_same_geometry(nodes, flair)
    local = slicer.util.arrayFromVolume(nodes["local"])
    assert np.isfinite(local).all() and local.max() > 0
    assert set(np.unique(slicer.util.arrayFromVolume(nodes["ood_mask"]))) <= {0, 1}


def test_server_errors_name_the_problem(server, cohort):
    case = _tumour_case(cohort)
    scene = slicer.vtkMRMLScene()
    t1 = nifti_to_node(case / f"{case.name}_t1.nii.gz", scene, "T1")
    with pytest.raises(RuntimeError, match="answered 400.*steps"):
        run_translation(t1, TranslationRequest(steps=-1, server=server), scene, timeout=120)
    with pytest.raises(RuntimeError, match="not reachable"):
        run_translation(t1, TranslationRequest(server="http://127.0.0.1:9"), scene, timeout=60)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1  # no partial results


@pytest.mark.parametrize("content, words", [("zeros", "empty"), ("labels", "looks like a label map")])
def test_failed_translation_reports_the_error(tiny_models, content, words):
    """User faults reach the panel as the job's one error line, naming the volume the user picked (not the
    temporary file the job wrote it to)."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", content)
    data = {"zeros": np.zeros((30, 30, 30)), "labels": (np.indices((30, 30, 30))[0] // 10).astype(float) + 1.0}[content]
    slicer.util.updateVolumeFromArray(node, data.astype(np.float32))
    with pytest.raises(RuntimeError) as info:
        run_translation(node, TranslationRequest(models=str(tiny_models), steps=2), scene, timeout=300)
    message = str(info.value)
    assert words in message and f"volume '{content}'" in message, message
    assert "input.nii.gz" not in message and "Traceback" not in message, message
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1  # no partial results


def test_cancel_stops_the_process_and_removes_the_temporary_folder(tiny_models, cohort):
    case = _tumour_case(cohort)
    scene = slicer.vtkMRMLScene()
    t1 = nifti_to_node(case / f"{case.name}_t1.nii.gz", scene, "T1")
    job = start_translation(t1, TranslationRequest(steps=50, models=str(tiny_models)))
    time.sleep(1.0)
    assert job.poll() == "running"
    job.cancel()
    assert job.process.poll() is not None and not job.workdir.exists()
    with pytest.raises(RuntimeError, match="did not finish within 0.5 s"):
        run_translation(t1, TranslationRequest(steps=50, models=str(tiny_models)), scene, timeout=0.5)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1  # no partial results


def test_progress_counts_the_local_diffusion_and_the_baseline_phases(tmp_path):
    progress = lambda phase, f: json.dumps({"event": "progress", "phase": phase, "fraction": f})  # noqa: E731
    first = "\n".join(progress("local", i / 10) for i in range(11))
    assert run_progress(read_events(progress("ood", 0.0))) == 0.0
    assert run_progress(read_events("\n".join(progress("local", i / 10) for i in range(5)))) == pytest.approx(0.2)
    assert run_progress(read_events(first)) == pytest.approx(0.5)
    assert run_progress(read_events(first + "\nwarning: not JSON\n" + progress("baseline", 0.4))) == pytest.approx(0.7)
    # a run that writes the risk map announces its back-translation as a third phase
    phases = json.dumps({"event": "phases", "phases": ["local", "cycle", "baseline"]})
    assert run_progress(read_events(phases + "\n" + first)) == pytest.approx(1 / 3)
    assert run_progress(read_events(phases + "\n" + first + "\n" + progress("cycle", 1.0))) == pytest.approx(2 / 3)
    out = tmp_path / "x_flair_baseline.nii.gz"
    out.write_bytes(b"")
    events = read_events(json.dumps({"event": "output", "name": "baseline", "path": str(out)}) + "\n{\"event\": \"outp")
    assert written_outputs(events) == {"baseline": out}


@contextlib.contextmanager
def _stand_in_server(respond):
    """A stand-in MONAI Label server on 127.0.0.1: ``respond(headers)`` -> (status, content type, body) for every
    POST; yields its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            status, kind, body = respond(self.headers)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_the_server_client_sends_the_access_token(cohort, tmp_path):
    """A stand-in answers like FastAPI's OAuth2 dependency (401 without a valid bearer token) and records what the
    client sent (tests/test_label_security.py runs the real server with a realm)."""
    from SlicerLocalDiffusionLib.label_client import infer

    seen = []

    def respond(headers):
        seen.append(headers.get("Authorization"))
        good = headers.get("Authorization") == "Bearer s3cret"
        return 400 if good else 401, "application/json", json.dumps(
            {"detail": "bad params" if good else "Not authenticated"}).encode()

    case = _tumour_case(cohort)
    image = case / f"{case.name}_t1.nii.gz"
    with _stand_in_server(respond) as url:
        with pytest.raises(RuntimeError, match="requires authentication: enter its access token"):
            infer(url, "local_diffusion", image, {}, tmp_path)
        with pytest.raises(RuntimeError, match="rejected the token"):
            infer(url, "local_diffusion", image, {}, tmp_path, token="wrong")
        with pytest.raises(RuntimeError, match="answered 400: bad params"):
            infer(url, "local_diffusion", image, {}, tmp_path, token="s3cret")
    assert seen == [None, "Bearer wrong", "Bearer s3cret"]
    assert "s3cret" not in repr(TranslationRequest(token="s3cret"))  # not in logs or reprs


def test_flagged_regions_become_an_outlined_segmentation_and_a_table(risk_models, cohort):
    """With a risk map, the run's flagged regions are loaded as a segmentation (one segment per region, outline
    only) and a table with one row per region of the report."""
    models = risk_models
    case = _tumour_case(cohort)
    scene = slicer_like_scene()
    t1 = nifti_to_node(case / f"{case.name}_t1.nii.gz", scene, "T1")
    job = start_translation(t1, TranslationRequest(direction="t1_to_flair", steps=2, models=str(models)))
    assert job.wait(600) == "done", job.error_message()
    nodes = job.load_results(scene)
    job.cleanup()
    assert {"risk", "risk_regions", "regions", "region_table"} <= set(nodes) and job.regions
    segments = nodes["regions"].GetSegmentation()
    labels = slicer.util.arrayFromVolume(nodes["risk_regions"])
    assert segments.GetNumberOfSegments() == len(job.regions) == labels.max()
    first = segments.GetNthSegment(0)
    assert first.GetName().startswith(f"region {first.GetLabelValue()} (")
    assert not nodes["regions"].GetDisplayNode().GetVisibility2DFill()
    assert nodes["regions"].GetDisplayNode().GetVisibility2DOutline()
    table = nodes["region_table"]
    assert table.GetNumberOfRows() == len(job.regions) and table.GetCellText(0, 0) == str(job.regions[0]["label"])
    assert float(table.GetCellText(0, 1)) == pytest.approx(job.regions[0]["volume_ml"], abs=0.01)
    r, a, s = job.regions[0]["centre_mm"]  # the centre as the patient's sides, as Slicer's data probe writes it
    assert table.GetCellText(0, 2) == f"{'R' if r >= 0 else 'L'} {abs(r):.1f}, {'A' if a >= 0 else 'P'} {abs(a):.1f}, " \
                                      f"{'S' if s >= 0 else 'I'} {abs(s):.1f}"
    from SlicerLocalDiffusionLib import remove_nodes  # what a new run does with this run's nodes

    before = scene.GetNumberOfNodes()
    remove_nodes(scene, nodes.values())
    assert all(scene.GetNodeByID(node.GetID()) is None for node in nodes.values())
    assert scene.GetNumberOfNodes() < before - len(nodes)  # their display nodes went with them


@pytest.mark.parametrize("answer, words", [("garbage", "not a NIfTI image"), ("not multipart", "not an image"),
                                           ("slow", "did not answer within")])
def test_the_server_client_checks_the_answer_and_names_the_server(tmp_path, answer, words):
    """A 6-byte answer is not saved as a result; a server that does not answer in time is named."""
    from SlicerLocalDiffusionLib.label_client import infer

    def respond(headers):
        if answer == "slow":
            time.sleep(3)
        if answer == "garbage":
            boundary = "b0undary"
            return 200, f"multipart/form-data; boundary={boundary}", (
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"r.nii.gz\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\nabcdef\r\n--{boundary}--\r\n").encode()
        return 200, "application/json", b'{"ok": true}'

    image = tmp_path / "in.nii.gz"
    image.write_bytes(b"x" * 100)
    with _stand_in_server(respond) as url:
        with pytest.raises(RuntimeError, match=words) as info:
            infer(url, "local_diffusion", image, {}, tmp_path, timeout=1.0)
    assert url in str(info.value)
    assert not list(tmp_path.glob("result_*"))
