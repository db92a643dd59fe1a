"""A corpus of user faults driven through every entry point: the command line (``run``, and
``translate``/``ood map`` for their own outputs), the MONAI bundle's inference workflow, the
MONAI Label server and the Slicer job. Each fault must end in one line naming the user's file
and the problem (exit code 2 / HTTP 4xx / the job's error message), leave every input as it
was and write nothing. The wrong-contrast and not-a-brain faults are refused by the shipped
input gate (tests/test_input_gate.py); everything here runs on the tiny test models."""

import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_series import write_dicom_series

from localdiffusion.cli import main
from localdiffusion.data.io import save_volume
from localdiffusion.errors import InputError

pytestmark = pytest.mark.slow  # real servers, installs, subprocesses or shipped models

EYE = np.eye(4)


def _nifti(path: Path, data, affine=EYE, dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return path


def _input_faults(tmp: Path, t1: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input path, a fragment the message must contain). Built fresh in ``tmp``."""
    good = nib.load(str(t1))
    data = np.asarray(good.dataobj, np.float32)
    faults = {}

    def add(name, path, words):
        faults[name] = (path, words)

    add("missing", tmp / "missing_t1.nii.gz", "not found")
    (tmp / "empty_t1.nii.gz").write_bytes(b"")
    add("empty file", tmp / "empty_t1.nii.gz", "not a readable NIfTI")
    (tmp / "text_t1.nii").write_text("this is a text file, not an image\n" * 20)
    add("text as .nii", tmp / "text_t1.nii", "not a readable NIfTI")
    (tmp / "png_t1.nii.gz").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    add("PNG bytes as .nii.gz", tmp / "png_t1.nii.gz", "not a readable NIfTI")
    (tmp / "garbage_t1.nii.gz").write_bytes(gzip.compress(os.urandom(2000)))
    add("gzip of garbage", tmp / "garbage_t1.nii.gz", "NIfTI")
    _nifti(tmp / "whole_t1.nii", data)
    raw = (tmp / "whole_t1.nii").read_bytes()
    (tmp / "truncated_t1.nii").write_bytes(raw[: len(raw) // 2])
    add("truncated", tmp / "truncated_t1.nii", "truncated")
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    (tmp / "huge_t1.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 4096)
    add("2000^3 header, no data", tmp / "huge_t1.nii", "the header declares 2000 x 2000 x 2000 voxels")
    header.set_data_shape((1000, 1000, 400))
    header.set_data_dtype(np.int16)
    (tmp / "bomb_t1.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 65536))
    add("small .nii.gz declaring 1000 x 1000 x 400", tmp / "bomb_t1.nii.gz", "declares 1000 x 1000 x 400 voxels")
    save_volume(tmp / "whole_t1.mha", data, good.affine)
    raw = (tmp / "whole_t1.mha").read_bytes()
    (tmp / "cut_t1.mha").write_bytes(raw[: len(raw) // 2])
    add("truncated MetaImage", tmp / "cut_t1.mha", "truncated")
    for uid, name, spoil, words in (
            ("3101", "gaps", lambda files: [f.unlink() for f in files[10:20]], "about 10 slices missing"),
            ("3102", "corrupt", lambda files: files[15].write_bytes(b"\0" * 200), "about 1 slice missing or unreadable")):
        folder = tmp / f"dicom_{name}_t1"
        write_dicom_series(data * (1000 / data.max()), good.affine, folder, f"1.2.826.0.1.3680043.2.1125.{uid}")
        spoil(sorted(folder.glob("*.dcm")))
        add(f"DICOM series, {name}", folder, words)
    rgb = np.zeros(data.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, EYE), str(tmp / "rgb_t1.nii.gz"))
    add("RGB", tmp / "rgb_t1.nii.gz", "a colour, vector or complex image")
    add("4D", _nifti(tmp / "4d_t1.nii.gz", np.stack([data, data], -1)), "expected a 3D volume")
    add("2D", _nifti(tmp / "2d_t1.nii.gz", data[:, :, 10]), "expected a 3D volume")
    nan = data.copy()
    nan[10, 10, 10] = np.nan
    add("NaN voxel", _nifti(tmp / "nan_t1.nii.gz", nan), "NaN or infinite")
    inf = data.copy()
    inf[10, 10, 10] = np.inf
    add("inf voxel", _nifti(tmp / "inf_t1.nii.gz", inf), "NaN or infinite")
    big = data.astype(np.float64)
    big[10, 10, 10] = 1e300
    add("beyond float32", _nifti(tmp / "big_t1.nii.gz", big, dtype=np.float64), "exceed the float32 range")
    add("all zeros", _nifti(tmp / "zeros_t1.nii.gz", np.zeros_like(data)), "empty")
    add("constant", _nifti(tmp / "constant_t1.nii.gz", np.full_like(data, 7.0)), "constant volume")
    add("tiny", _nifti(tmp / "tiny_t1.nii.gz", np.ones((3, 3, 3))), "too small")
    labels = np.where(data > 0, 1 + (np.indices(data.shape)[0] // 10) % 3, 0)
    add("label map", _nifti(tmp / "labels_t1.nii.gz", labels, dtype=np.uint8), "label map")
    singular = EYE.copy()
    singular[2, 2] = 0
    image = nib.Nifti1Image(data, None)
    image.header.set_sform(singular, code=1)
    nib.save(image, str(tmp / "singular_t1.nii.gz"))
    add("singular affine", tmp / "singular_t1.nii.gz", "singular")
    (tmp / "broken_t1.nii.gz").symlink_to(tmp / "nowhere.nii.gz")
    add("broken symlink", tmp / "broken_t1.nii.gz", "broken symbolic link")
    (tmp / "loop_a_t1.nii.gz").symlink_to(tmp / "loop_b_t1.nii.gz")
    (tmp / "loop_b_t1.nii.gz").symlink_to(tmp / "loop_a_t1.nii.gz")
    add("symlink loop", tmp / "loop_a_t1.nii.gz", "cannot be opened")
    (tmp / "scan_t1.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    add("unknown suffix", tmp / "scan_t1.jpg", "unknown image format")
    (tmp / "bad_t1.nrrd").write_bytes(b"NRRD0004\ntype: float\n")
    add("broken NRRD", tmp / "bad_t1.nrrd", "not a readable nrrd image")
    (tmp / "bad_t1.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n")
    add("broken MetaImage", tmp / "bad_t1.mha", "not a readable metaimage image")
    (tmp / "bad_t1.mgz").write_bytes(gzip.compress(struct.pack(">i", 1) + os.urandom(100)))
    add("broken MGZ", tmp / "bad_t1.mgz", "MGZ")
    (tmp / "no_dicom").mkdir()
    (tmp / "no_dicom" / "readme.txt").write_text("no images here")
    add("folder without images", tmp / "no_dicom", "DICOM series")
    head = np.pad(data, 12)
    inside = head > 0
    from scipy import ndimage

    shell = ndimage.binary_dilation(inside, iterations=5) & ~inside
    head = np.where(shell, np.median(data[data > 0]) * 1.2, head)
    affine = EYE.copy()
    affine[:3, :3] = good.affine[:3, :3]
    add("not skull-stripped", _nifti(tmp / "head_t1.nii.gz", head, affine), "skull")
    return faults


def _fingerprint(paths) -> dict:
    out = {}
    for path in paths:
        p = Path(path)
        if p.is_symlink() or not p.exists():
            out[str(p)] = "link" if p.is_symlink() else None
        elif p.is_dir():
            out[str(p)] = sorted(q.name for q in p.iterdir())
        else:
            out[str(p)] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def corpus(cohort, tmp_path_factory):
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    root = tmp_path_factory.mktemp("corpus")
    return _input_faults(root, case / f"{case.name}_t1.nii.gz")


def test_the_corpus_is_large_enough(corpus):
    assert len(corpus) >= 25


def test_command_line_input_faults(corpus, tiny_models, tmp_path, capsys):
    before = _fingerprint(path for path, _ in corpus.values())
    for name, (path, words) in corpus.items():
        out = tmp_path / name.replace(" ", "_")
        code = main(["run", "--input", str(path), "--out-dir", str(out), "--models", str(tiny_models), "--steps", "2"])
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error:")]
        assert code == 2, (name, err)
        assert len(errors) == 1 and str(path) in errors[0] and words in errors[0], (name, err)
        assert "Traceback" not in "\n".join(err)
        assert not out.exists() or not any(out.iterdir()), name
    assert _fingerprint(path for path, _ in corpus.values()) == before


def test_command_line_output_model_and_parameter_faults(cohort, tiny_models, tmp_path, capsys):
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = str(case / f"{case.name}_t1.nii.gz")
    model = str(tiny_models / "t1_to_flair")
    bank = str(tiny_models / "ood_t1.pt")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    garbage_model = tmp_path / "garbage_model"
    garbage_model.mkdir()
    (garbage_model / "config.json").write_text((tiny_models / "t1_to_flair" / "config.json").read_text())
    (garbage_model / "model.pt").write_bytes(os.urandom(1000))
    out = str(tmp_path / "out.nii.gz")
    run = ["run", "--input", t1, "--models", str(tiny_models)]
    translate = ["translate", "--input", t1, "--model", model, "--steps", "2"]
    run_as_root = os.geteuid() == 0  # root writes anywhere: read-only folders cannot be tested
    faults = {
        "output without an image suffix": (translate + ["--out", str(tmp_path / "x")], "must end in one of"),
        "output is a folder": (translate + ["--out", str(tmp_path)], "existing folder"),
        "output in a read-only folder": (translate + ["--out", str(readonly / "x.nii.gz")], "not writable"),
        "output over the input": (translate + ["--out", t1], "overwrite the input"),
        "two outputs on one path": (translate + ["--out", out, "--risk-map", out], "name the same file"),
        "mask and map on one path": (["ood", "map", "--input", t1, "--bank", bank, "--out", out, "--mask-out", out],
                                     "name the same file"),
        "detached-header output": (["ood", "map", "--input", t1, "--bank", bank, "--out", str(tmp_path / "x.mhd")],
                                   "must end in one of"),
        "out-dir is a file": (run + ["--out-dir", str(a_file)], "is a file, not a folder"),
        "out-dir read-only": (run + ["--out-dir", str(readonly / "sub")], "not writable"),
        "models folder missing": (["run", "--input", t1, "--models", str(tmp_path / "none"),
                                   "--out-dir", str(tmp_path / "o1")], "not found"),
        "model folder missing": (["translate", "--input", t1, "--model", str(tmp_path / "none"), "--out", out],
                                 "model configuration not found"),
        "garbage weights": (["translate", "--input", t1, "--model", str(garbage_model), "--out", out], "model.pt"),
        "bank missing": (["ood", "map", "--input", t1, "--bank", str(tmp_path / "none.pt"), "--out", out], "not found"),
        "steps beyond the model": (run + ["--out-dir", str(tmp_path / "o2"), "--steps", "500"], "steps"),
        "t_intermediate beyond the model": (run + ["--out-dir", str(tmp_path / "o3"), "--steps", "2",
                                                   "--t-intermediate", "500"], "t_intermediate"),
        "IND floor NaN": (run + ["--out-dir", str(tmp_path / "o4"), "--ind-floor", "nan"], "finite number"),
        "noise sigma NaN": (run + ["--out-dir", str(tmp_path / "o5"), "--noise-sigma-z", "nan"], "finite number"),
        "z harmonise infinite": (run + ["--out-dir", str(tmp_path / "o6"), "--z-harmonise", "inf"], "finite number"),
    }
    if run_as_root:
        faults = {name: fault for name, fault in faults.items() if "read-only" not in name}
    before = _fingerprint([t1, model, bank])
    try:
        for name, (args, words) in faults.items():
            assert main(args) == 2, name
            err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
            assert len(err) == 1 and words in err[0], (name, err)
            assert "weights_only" not in err[0], (name, err)  # PyTorch's advice is not for our users
    finally:
        readonly.chmod(0o700)
    assert _fingerprint([t1, model, bank]) == before
    assert not Path(out).exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def _cause(exc) -> str:
    messages = []
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__
    return " | ".join(messages)


def test_bundle_inference_input_faults(corpus, tiny_models, tmp_path):
    from monai.bundle import ConfigWorkflow

    configs = Path(__file__).resolve().parents[1] / "monai_bundle" / "configs"
    for name, (path, words) in corpus.items():
        out = tmp_path / name.replace(" ", "_")
        workflow = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer",
                                  meta_file=str(configs / "metadata.json"), input=str(path), output_dir=str(out),
                                  models_root=str(tiny_models), steps=2)
        workflow.initialize()
        with pytest.raises(Exception) as info:
            workflow.run()
        message = _cause(info.value)
        assert isinstance(info.value, InputError) or isinstance(info.value.__cause__, InputError), (name, message)
        assert str(path) in message and words in message, (name, message)
        assert not out.exists() or not any(out.iterdir()), name


def test_monai_label_input_faults(corpus, server):
    requests = pytest.importorskip("requests")
    for name, (path, words) in corpus.items():
        if not Path(path).is_file() or Path(path).is_symlink():
            continue  # a client uploads bytes: missing files, links and folders do not reach a server
        with open(path, "rb") as fh:
            answer = requests.post(f"{server}/infer/local_diffusion", params={"output": "image"}, timeout=120,
                                   files={"file": (Path(path).name, fh)}, data={"params": json.dumps({"steps": 2})})
        assert answer.status_code == 400, (name, answer.status_code, answer.text[:300])
        detail = answer.json()["detail"]
        assert "\n" not in detail and words in detail and "/tmp" not in detail, (name, detail)


def test_environment_faults_are_one_line_and_leave_nothing_behind(cohort, tiny_models, tmp_path, capsys,
                                                                   monkeypatch):
    """A full disk, a name too long for the file system, Ctrl-C: one error line, nothing partial written."""
    import errno

    import localdiffusion.data.io as io

    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = str(case / f"{case.name}_t1.nii.gz")
    run = ["run", "--input", t1, "--models", str(tiny_models), "--steps", "2", "--no-baseline"]
    long_name = tmp_path / ("x" * 300 + "_t1.nii.gz")
    assert main(["translate", "--input", t1, "--model", str(tiny_models / "t1_to_flair"), "--steps", "2",
                 "--out", str(long_name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too long for the file system" in err[0], err

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "full"))

    monkeypatch.setattr(io, "write_image", full_disk)
    assert main(run + ["--out-dir", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no space left on the device") and "Traceback" not in "\n".join(err), err
    assert not any((tmp_path / "full").iterdir()) if (tmp_path / "full").exists() else True
    monkeypatch.undo()


def test_ctrl_c_says_interrupted_exits_130_and_leaves_nothing(cohort, tiny_models, tmp_path):
    import signal
    import subprocess
    import sys

    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "localdiffusion.cli", "run", "--input",
                                str(case / f"{case.name}_t1.nii.gz"), "--models", str(tiny_models), "--out-dir",
                                str(out), "--steps", "10", "--batch-size", "1", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # a suite started in the background inherits an ignored SIGINT; a terminal's is not
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while True:  # wait until it is sampling (one slice a batch: many batches still to go on an idle machine)
        line = process.stdout.readline()
        assert line, f"the job ended before it sampled: {process.stderr.read()[-2000:]}"
        if '"phase": "local"' in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:") or "Traceback" in line]
    assert process.returncode == 130 and lines == ["error: interrupted (nothing was written for the unfinished "
                                                   "outputs)"], (process.returncode, err[-2000:])
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("file, edit, words", [
    ("t1_to_flair/config.json", {"num_train_timesteps": 0}, "num_train_timesteps"),
    ("t1_to_flair/config.json", {"steps": float("nan")}, "finite number"),
    ("ood_t1_robust.json", [], "not a robust OOD calibration"),
    ("input_gate.json", {"flagged": {"t1": float("nan"), "flair": 0.1}}, "not finite"),
    ("t1_to_flair/risk_calibration.json", "nan quantile", "corrupt risk calibration")])
def test_a_corrupt_shipped_file_is_one_line_naming_it(cohort, tiny_models, tmp_path, capsys, file, edit, words):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    target = models / file
    if edit == "nan quantile":  # a toy calibration whose combined CDF holds a NaN
        from localdiffusion.detectors.risk import fit_on_volumes

        rng = np.random.default_rng(0)
        brain = np.ones((8, 8, 4), bool)
        fit_on_volumes([(brain, {"ood": rng.uniform(0, 1, brain.shape).astype(np.float32)}) for _ in range(30)],
                       ("ood",), 1.0, "max", steps=2).save(target)
        payload = json.loads(target.read_text())
        payload["combined"]["c_quantiles"][5] = float("nan")
        edit = payload
    if isinstance(edit, dict) and file.endswith("risk_calibration.json"):
        payload = edit
    elif isinstance(edit, dict):
        payload = json.loads(target.read_text()) if target.exists() else {}
        if file == "input_gate.json" and not payload:
            from localdiffusion.shipped import MODELS_ROOT

            payload = json.loads((MODELS_ROOT / "input_gate.json").read_text())
        payload.update(edit)
    else:
        payload = edit
    target.write_text(json.dumps(payload))
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    assert main(["run", "--input", str(case / f"{case.name}_t1.nii.gz"), "--models", str(models), "--out-dir",
                 str(tmp_path / "out"), "--steps", "2"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(target) in err[0] and words in err[0], err
