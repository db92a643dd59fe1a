"""A real MONAI Label server on 127.0.0.1 serving the app with the tiny models (fixture in conftest)."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is the optional 'label' extra (make test installs it)")
import requests  # noqa: E402  (installed with MONAI Label)

pytestmark = pytest.mark.slow  # real servers, installs, subprocesses or shipped models


def _case(cohort):
    return next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)


def _infer(url, model, path, params=None):
    with open(path, "rb") as fh:
        return requests.post(f"{url}/infer/{model}", params={"output": "image"}, timeout=600,
                             files={"file": (Path(path).name, fh)}, data={"params": json.dumps(params or {})})


def _same_geometry(content: bytes, reference: Path, tmp_path: Path, name: str):
    out = tmp_path / f"{name}.nii.gz"
    out.write_bytes(content)
    img, ref = nib.load(str(out)), nib.load(str(reference))
    assert img.shape[:3] == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    return np.asarray(img.dataobj)


def test_info_lists_the_four_models(server):
    from monailabel.client import MONAILabelClient

    import localdiffusion

    info = MONAILabelClient(server).info()
    assert {"local_diffusion", "ood_map", "ood_segmentation", "tumour_segmentation"} <= set(info["models"])
    assert info["models"]["tumour_segmentation"]["type"] == "segmentation"
    assert info["models"]["tumour_segmentation"]["labels"] == {"necrosis": 1, "oedema": 2, "enhancing": 4}
    # the stock Slicer MONAILabel plugin lists segmentation models only: the OOD region is one
    assert info["models"]["ood_segmentation"]["type"] == "segmentation"
    assert info["models"]["ood_segmentation"]["labels"] == {"out_of_distribution": 1}
    assert info["version"] == localdiffusion.__version__


def test_results_come_in_the_requested_format_and_uploads_in_any_format(server, cohort, tmp_path):
    """What the stock Slicer plugin does: ask a segmentation model for result_extension .nrrd, uint8."""
    import SimpleITK as sitk
    from monailabel.client import MONAILabelClient

    from localdiffusion.data.formats import sitk_affine
    from localdiffusion.data.io import load_volume, save_volume

    case = _case(cohort)
    t1 = case / f"{case.name}_t1.nii.gz"
    data, affine = load_volume(t1)
    out_file, params = MONAILabelClient(server, tmpdir=str(tmp_path)).infer(
        "ood_segmentation", "", {"result_extension": ".nrrd", "result_dtype": "uint8"}, file=str(t1))
    assert Path(out_file).read_bytes()[:4] == b"NRRD" and params["labels"] == {"out_of_distribution": 1}
    nrrd_copy = tmp_path / "label.nrrd"
    nrrd_copy.write_bytes(Path(out_file).read_bytes())
    image = sitk.ReadImage(str(nrrd_copy))
    assert image.GetPixelID() == sitk.sitkUInt8 and image.GetSize() == data.shape
    assert np.allclose(sitk_affine(image), affine, atol=1e-4)
    assert set(np.unique(sitk.GetArrayViewFromImage(image))) <= {0, 1}
    # an NRRD upload, a MetaImage result with float channels
    upload = save_volume(tmp_path / "case_t1.nrrd", data, affine)
    answer = _infer(server, "ood_map", upload, {"modality": "t1", "result_extension": ".mha"})
    assert answer.status_code == 200, answer.text
    result = tmp_path / "prob.mha"
    result.write_bytes(answer.content)
    prob, prob_affine = load_volume(result)
    assert prob.shape == data.shape and np.allclose(prob_affine, affine, atol=1e-4) and prob.max() <= 1
    bad = _infer(server, "ood_map", t1, {"result_extension": ".jpg"})
    assert bad.status_code == 400 and "result_extension" in bad.json()["detail"]
    bad = _infer(server, "ood_map", t1, {"result_dtype": "complex64"})
    assert bad.status_code == 400 and "result_dtype" in bad.json()["detail"]


def test_every_model_returns_a_volume_on_the_input_grid(server, cohort, tiny_models, tmp_path):
    from monailabel.client import MONAILabelClient

    from localdiffusion.shipped import robust_calibration_path

    case = _case(cohort)
    t1, flair = case / f"{case.name}_t1.nii.gz", case / f"{case.name}_flair.nii.gz"
    # monailabel's own Python client
    out_file, params = MONAILabelClient(server, tmpdir=str(tmp_path)).infer(
        "local_diffusion", "", {"steps": 3, "t_intermediate": 5, "extra_outputs": ["baseline", "ood"]}, file=str(t1))
    data = _same_geometry(Path(out_file).read_bytes(), t1, tmp_path, "ld")
    assert params["channels"] == ["local", "baseline", "ood"] and data.shape[-1] == 3
    assert any("not checked" in w for w in params["warnings"])  # the tiny models carry no input gate
    # plain HTTP
    answer = _infer(server, "ood_map", t1, {"modality": "t1"})
    assert answer.status_code == 200, answer.text
    prob = _same_geometry(answer.content, t1, tmp_path, "ood")
    assert 0 <= prob.min() and prob.max() <= 1
    # the acquisition-robust map: another probability map on the same grid
    answer = _infer(server, "ood_map", t1, {"modality": "t1", "robust_ood": True})
    assert answer.status_code == 200, answer.text
    robust = _same_geometry(answer.content, t1, tmp_path, "ood_robust")
    assert 0 <= robust.min() and robust.max() <= 1 and not np.allclose(robust, prob)
    # it needs its calibration beside the bank: without it a 400 naming the problem
    calibration = robust_calibration_path(tiny_models / "ood_t1.pt")
    calibration.rename(tmp_path / "robust.json")
    try:
        answer = _infer(server, "ood_map", t1, {"modality": "t1", "robust_ood": True})
    finally:
        (tmp_path / "robust.json").rename(calibration)
    assert answer.status_code == 400 and "robust OOD calibration not found" in answer.text
    assert _infer(server, "ood_map", t1, {"robust_ood": "maybe"}).status_code == 400
    answer = _infer(server, "tumour_segmentation", flair, {"modality": "flair"})
    assert answer.status_code == 200, answer.text
    labels = _same_geometry(answer.content, flair, tmp_path, "seg")
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    answer = _infer(server, "local_diffusion", flair, {"direction": "flair_to_t1", "steps": 2, "t_intermediate": 5})
    assert answer.status_code == 200, answer.text
    _same_geometry(answer.content, flair, tmp_path, "ld_flair")


def test_eight_concurrent_requests_all_succeed(server, cohort):
    t1 = _case(cohort) / f"{_case(cohort).name}_t1.nii.gz"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _infer(server, "local_diffusion", t1, {"steps": 2, "seed": i,
                                                                                  "t_intermediate": 5}), range(8)))
    assert [a.status_code for a in answers] == [200] * 8


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, cohort, tmp_path):
    t1 = _case(cohort) / f"{_case(cohort).name}_t1.nii.gz"
    no_file = requests.post(f"{server}/infer/ood_map", params={"output": "image"}, timeout=60)
    assert no_file.status_code == 400 and "Neither Image nor File" in no_file.json()["detail"]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    not_nifti = _infer(server, "ood_map", text)
    assert not_nifti.status_code == 400 and "NIfTI" in not_nifti.json()["detail"]
    unknown = _infer(server, "no_such_model", t1)
    assert unknown.status_code == 404 and "no_such_model" in unknown.json()["detail"]
    for params, words in (({"steps": -1}, "steps"), ({"direction": "t1_to_t2"}, "direction"),
                          ({"extra_outputs": ["everything"]}, "extra_outputs"),
                          ({"extra_outputs": "every"}, "extra_outputs"), ({"seed": "x"}, "seed")):
        bad = _infer(server, "local_diffusion", t1, params)
        assert bad.status_code == 400 and words in bad.json()["detail"], bad.text
    for raw in ("[1, 2]", "{bad", '"text"'):  # params that are not a JSON object
        bad = requests.post(f"{server}/infer/ood_map", params={"output": "image"}, timeout=60,
                            files={"file": (t1.name, t1.read_bytes())}, data={"params": raw})
        assert bad.status_code == 400 and "params" in bad.json()["detail"], (raw, bad.text)
    assert requests.get(f"{server}/info/", timeout=10).status_code == 200
    assert _infer(server, "ood_map", t1).status_code == 200


def _by_id(url, model, image_id, params=None):
    return requests.post(f"{url}/infer/{model}", params={"output": "image", "image": image_id}, timeout=600,
                         data={"params": json.dumps(params or {})})


def test_images_come_only_from_the_datastore(server, cohort):
    from conftest import DATASTORE_IMAGE

    assert _by_id(server, "ood_map", DATASTORE_IMAGE).status_code == 200
    outside = _case(cohort) / f"{_case(cohort).name}_t1.nii.gz"  # a real image on the server, not in --studies
    for image_id in (str(outside), "/etc/passwd", "../" + DATASTORE_IMAGE, "no_such_image"):
        answer = _by_id(server, "ood_map", image_id)
        assert answer.status_code == 404, (image_id, answer.text)
        assert answer.json()["detail"] == f"image id {image_id!r} is not in this server's datastore"


def test_info_answers_within_a_second_while_the_server_translates(server, cohort):
    import threading
    import time

    t1 = _case(cohort) / f"{_case(cohort).name}_t1.nii.gz"
    done = threading.Event()
    answers = []

    def translate():
        answers.append(_infer(server, "local_diffusion", t1, {"steps": 10, "extra_outputs": "all"}))
        done.set()

    threading.Thread(target=translate).start()
    latencies = []
    while not done.is_set():
        start = time.monotonic()
        assert requests.get(f"{server}/info/", timeout=10).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    assert answers[0].status_code == 200, answers[0].text
    assert len(latencies) >= 3 and max(latencies) < 1.0, latencies



def test_the_stock_client_gets_the_risk_regions_as_a_segmentation(risk_models, cohort, tmp_path_factory):
    """What the stock Slicer MONAILabel plugin does with a segmentation model: ask for a .nrrd label map. The
    answer holds the flagged regions as label 1 and the region report."""
    import SimpleITK as sitk
    from monailabel.client import MONAILabelClient

    from conftest import _datastore_image
    from research.bench.label_server import local_server

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion"))
    from SlicerLocalDiffusionLib.label_client import decode_multipart  # the multipart answer, as a client reads it

    studies = tmp_path_factory.mktemp("risk_studies")
    _datastore_image(studies)
    t1 = _case(cohort) / f"{_case(cohort).name}_t1.nii.gz"
    with local_server(studies, tmp_path_factory.mktemp("risk_log") / "server.log", models_root=risk_models,
                      threads=1) as url:
        client = MONAILabelClient(url)
        model = client.info()["models"]["risk_segmentation"]
        assert model["type"] == "segmentation" and model["labels"] == {"do_not_trust_translation": 1}
        out = tmp_path_factory.mktemp("risk_out")
        with open(t1, "rb") as fh:
            answer = requests.post(f"{url}/infer/risk_segmentation", params={"output": "all"}, timeout=600,
                                   files={"file": (t1.name, fh)},
                                   data={"params": json.dumps({"steps": 2, "result_extension": ".nrrd",
                                                               "result_dtype": "uint8"})})
        assert answer.status_code == 200, answer.text[:300]
        parts = decode_multipart(answer.content, answer.headers["Content-Type"])
        params = json.loads(parts["params"][1])
        image = next(data for name, (_, data) in parts.items() if name != "params")
        (out / "regions.nrrd").write_bytes(image)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "regions.nrrd")))
        assert set(np.unique(labels)) <= {0, 1} and labels.any()
        assert params["regions"] and params["labels"] == {"do_not_trust_translation": 1}
        assert sum(r["voxels"] for r in params["regions"]) == int(labels.sum())


def test_a_brats_layout_cohort_becomes_a_studies_folder_the_stock_plugin_can_browse(tiny_models, cohort, tmp_path):
    """MONAI Label lists only the files directly in its studies folder: the cohort (one folder per case) is
    named in a warning, and `localdiffusion studies` makes the flat folder whose images and labels the
    stock plugin's "Next Sample" and datastore views find."""
    from localdiffusion.cli import main
    from localdiffusion.data.readers import list_cases
    from localdiffusion.jobs.studies import nested_cases_warning
    from research.bench.label_server import local_server

    assert "no image directly inside it" in nested_cases_warning(cohort)
    before = sorted(p.relative_to(cohort) for p in cohort.rglob("*"))
    studies = tmp_path / "studies"
    assert main(["studies", "--data", str(cohort), "--out", str(studies)]) == 0
    assert sorted(p.relative_to(cohort) for p in cohort.rglob("*")) == before  # the cohort is left as it was
    assert nested_cases_warning(studies) is None
    images = sorted(p.name for p in studies.glob("*.nii.gz"))
    cases = [p.name for p in list_cases(cohort)]
    assert len(cases) >= 3 and images == sorted(f"{c}_{m}.nii.gz" for c in cases for m in ("t1", "flair"))
    assert not (studies / "labels").exists()
    assert main(["studies", "--data", str(cohort), "--out", str(studies)]) == 0  # again: nothing changes
    with local_server(studies, tmp_path / "server.log", models_root=tiny_models, threads=1) as url:
        listed = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()
        ids = {image for image in listed["objects"]}
        assert ids == {name[: -len(".nii.gz")] for name in images}
        sample = requests.post(f"{url}/activelearning/random", json={}, timeout=60).json()
        assert sample["id"] in ids  # the stock plugin's "Next Sample"
    labelled = tmp_path / "labelled"
    assert main(["studies", "--data", str(cohort), "--out", str(labelled), "--labels"]) == 0
    assert sorted(p.name for p in (labelled / "labels" / "final").iterdir()) == images
