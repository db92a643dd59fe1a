"""The MONAI bundle: ConfigWorkflow inference and training, torchrun, verify_metadata."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

pytestmark = pytest.mark.slow  # real servers, installs, subprocesses or shipped models

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
CONFIGS = BUNDLE / "configs"


def _workflow(config, workflow_type, **override):
    return ConfigWorkflow(config_file=str(CONFIGS / config), meta_file=str(CONFIGS / "metadata.json"),
                          logging_file=str(CONFIGS / "logging.conf"), workflow_type=workflow_type, **override)


def _tumour_case(cohort):
    return next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)


def test_inference_workflow_writes_all_outputs_with_input_geometry(tiny_models, cohort, tmp_path):
    case = _tumour_case(cohort)
    t1 = case / f"{case.name}_t1.nii.gz"
    out = tmp_path / "eval"
    wf = _workflow("inference.json", "infer", input=str(t1), output_dir=str(out), models_root=str(tiny_models),
                   steps=3, t_intermediate=5)
    wf.initialize()
    wf.run()
    wf.finalize()
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{case.name}_t1_{s}.nii.gz" for s in
                            ("flair_local_diffusion", "flair_baseline", "ood_probability", "ood_mask")]
                           + [f"{case.name}_t1_localdiffusion.json"])
    ref = nib.load(str(t1))
    for p in out.glob("*.nii.gz"):
        np.testing.assert_allclose(nib.load(str(p)).affine, ref.affine)
        assert nib.load(str(p)).shape == ref.shape


def test_inference_cohort_from_folder_and_datalist(tiny_models, cohort, tmp_path):
    from localdiffusion.jobs.cohort import resolve_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    case = _tumour_case(cohort)
    for m in ("t1",):
        (folder / f"a_{m}.nii.gz").write_bytes((case / f"{case.name}_{m}.nii.gz").read_bytes())
        (folder / f"b_{m}.nii.gz").write_bytes((case / f"{case.name}_{m}.nii.gz").read_bytes())
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": "in/a_t1.nii.gz"}, {"image": "in/b_t1.nii.gz"}]}))
    assert resolve_inputs(str(folder)) == resolve_inputs(str(datalist))
    out = tmp_path / "eval"
    wf = _workflow("inference.json", "infer", input=str(datalist), output_dir=str(out),
                   models_root=str(tiny_models), steps=2, t_intermediate=5, gate=False)
    wf.initialize()
    wf.run()
    assert len(list(out.glob("*_ood_probability.nii.gz"))) == 2


def _cause_messages(exc):
    """MONAI wraps errors raised inside config expressions; the cause chain names the problem."""
    messages = []
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__
    return " | ".join(messages)


@pytest.mark.parametrize("problem", ["missing", "nan", "no_weights", "mismatched"])
def test_inference_bad_inputs_give_clear_errors_and_no_outputs(tiny_models, cohort, tmp_path, problem):
    from localdiffusion.data.io import save_volume
    from localdiffusion.errors import InputError

    out, models, source = tmp_path / "eval", tiny_models, tmp_path / "missing.nii.gz"
    expected = "file not found"
    if problem in ("nan", "no_weights"):
        source = tmp_path / "nan.nii.gz"
        data = np.ones((20, 20, 20), np.float32)
        data[0, 0, 0] = np.nan if problem == "nan" else 1.0
        save_volume(source, data, np.eye(4))
        expected = "NaN" if problem == "nan" else "not found"
        models = tiny_models if problem == "nan" else tmp_path / "no_models"
    if problem == "mismatched":  # a FLAIR bank where the T1 bank should be
        models = tmp_path / "models"
        models.mkdir()
        for p in tiny_models.iterdir():
            os.symlink(p, models / p.name)
        (models / "ood_t1.pt").unlink()
        os.symlink(tiny_models / "ood_flair.pt", models / "ood_t1.pt")
        case = _tumour_case(cohort)
        source, expected = case / f"{case.name}_t1.nii.gz", "built for modality 'flair', not 't1'"
    wf = _workflow("inference.json", "infer", input=str(source), output_dir=str(out), models_root=str(models))
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    assert expected in _cause_messages(info.value)
    assert isinstance(info.value, InputError) or isinstance(info.value.__cause__, InputError)
    assert not out.exists() or not any(out.iterdir())


TINY_OVERRIDES = {"model_config#channels": [8, 16], "model_config#attention_levels": [False, True],
                  "model_config#num_res_blocks": 1, "model_config#num_train_timesteps": 10,
                  "model_config#norm_num_groups": 8, "model_config#num_head_channels": 8,
                  "model_config#spacing_mm": 4.0, "model_config#in_plane": [48, 56],
                  "batch_size": 2, "crop": 32, "val_every": 0, "checkpoint_every": 2, "threads": 1}


def test_train_workflow_runs_a_few_iterations(cohort, tmp_path):
    out = tmp_path / "run"
    wf = _workflow("train.json", "train", dataset_dir=str(cohort), output_dir=str(out), steps=2, **TINY_OVERRIDES)
    wf.initialize()
    wf.run()
    assert (out / "model.pt").exists() and "step" in (out / "train.log").read_text() or (out / "checkpoint.pt").exists()
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


def test_train_seg_config_trains_on_a_finer_grid_and_resumes(cohort, tmp_path):
    """train_seg.json through `monai.bundle run`: --spacing_mm sets the U-Net's grid over the same field of view,
    --resume continues from the checkpoint the first run left."""
    import torch

    out = tmp_path / "seg"
    base = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train_seg.json"),
            "--dataset_dir", str(cohort), "--output_dir", str(out), "--spacing_mm", "4.0", "--batch_size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps, resume in ((1, "False"), (2, "True")):
        proc = subprocess.run(base + ["--steps", str(steps), "--resume", resume], capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["in_plane"] == [48, 56]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == 1 and metrics["steps"] == 2
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


def test_multi_gpu_config_with_two_cpu_processes(cohort, tmp_path):
    out = tmp_path / "ddp"
    configs = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    overrides = []
    for key, value in {**TINY_OVERRIDES, "dataset_dir": str(cohort), "output_dir": str(out), "steps": 2}.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "monai.bundle", "run", "--config_file", configs, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in (out / "train.log").read_text()


def test_verify_metadata_offline_with_the_zoos_published_schema(tmp_path):
    schema = CONFIGS.parents[1] / "tools" / "zoo" / "meta_schema_20240725.json"
    assert json.loads((CONFIGS / "metadata.json").read_text())["schema"].endswith(schema.name)
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
           "--filepath", str(schema)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified with no error" in proc.stdout + proc.stderr
    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    cmd[4] = str(tmp_path / "metadata.json")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "num_channels" in proc.stderr


def test_bundle_run_from_the_terminal(tiny_models, cohort, tmp_path):
    case = _tumour_case(cohort)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json"),
           "--input", str(case / f"{case.name}_flair.nii.gz"), "--output_dir", str(out), "--direction", "flair_to_t1",
           "--models_root", str(tiny_models), "--steps", "2", "--t_intermediate", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / f"{case.name}_flair_t1_local_diffusion.nii.gz").exists()


def test_evaluate_config_runs_the_benchmark(tiny_models, cohort, tmp_path):
    out = tmp_path / "benchmark"
    wf = _workflow("evaluate.json", "eval", dataset_dir=str(cohort), models_root=str(tiny_models),
                   output_dir=str(out), directions=["flair_to_t1"], max_cases=1)
    wf.initialize()
    wf.run()
    result = json.loads((out / "hallucination_flair_to_t1.json").read_text())
    assert result["split"] == "test" and result["evaluated_slices"] > 0
    assert "### FLAIR -> T1" in (out / "BENCHMARK.md").read_text()
    assert (out / "hallucination_flair_to_t1.png").exists()


def test_bundle_user_fault_from_the_terminal_is_one_line_and_exit_code_2(tiny_models, tmp_path):
    missing = tmp_path / "missing_t1.nii.gz"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json"),
           "--input", str(missing), "--output_dir", str(tmp_path / "eval"), "--models_root", str(tiny_models)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {missing}: file not found"] and "Traceback" not in proc.stderr
    assert not (tmp_path / "eval").exists()


def test_one_version_for_package_bundle_and_label_app():
    import tomllib

    import localdiffusion

    pyproject = tomllib.loads((BUNDLE.parent / "pyproject.toml").read_text())
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert pyproject["project"]["version"] == localdiffusion.__version__ == metadata["version"]
    sys.path.insert(0, str(BUNDLE.parent / "SlicerLocalDiffusion"))
    from SlicerLocalDiffusionLib.dependencies import LOCALDIFFUSION_VERSION

    assert LOCALDIFFUSION_VERSION == localdiffusion.__version__  # the Slicer module's pinned package
    assert "version=__version__" in (BUNDLE.parent / "core" / "localdiffusion" / "serving" / "app.py").read_text()
