from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from localdiffusion.cli import main
from localdiffusion.data.io import save_volume


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["t1_to_flair", "flair_to_t1"])
def test_run_writes_every_output_on_the_input_grid(tiny_models, cohort, tmp_path, direction):
    src = direction.split("_to_")[0]
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    source_file = case / f"{case.name}_{src}.nii.gz"
    out = tmp_path / "out"
    assert main(["run", "--input", str(source_file), "--out-dir", str(out), "--direction", direction,
                 "--models", str(tiny_models), "--steps", "3", "--t-intermediate", "5"]) == 0
    ref = nib.load(str(source_file))
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 5 and all(n.startswith(case.name) for n in names)
    assert f"{case.name}_{src}_localdiffusion.json" in names  # the provenance sidecar beside the 4 volumes
    for p in out.glob("*.nii.gz"):
        img = nib.load(str(p))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
        assert np.isfinite(img.get_fdata()).all()


def test_run_bad_input_leaves_no_outputs(tiny_models, cohort, tmp_path, capsys):
    bad = tmp_path / "nan.nii.gz"
    data = np.ones((20, 20, 20), np.float32)
    data[1, 1, 1] = np.nan
    save_volume(bad, data, np.eye(4))
    out = tmp_path / "out"
    assert main(["run", "--input", str(bad), "--out-dir", str(out), "--models", str(tiny_models)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    # the input is read before the models: a bad file is refused first; a good one with no models says so
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    good = case / f"{case.name}_t1.nii.gz"
    assert main(["run", "--input", str(good), "--out-dir", str(out), "--models", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_demo_figure_from_job_outputs(tiny_models, cohort, tmp_path):
    from localdiffusion.data.io import PLANE_SIDES, save_png
    from localdiffusion.jobs.demo import comparison_figure
    from localdiffusion.jobs.run import JobOptions, run_job

    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    outputs = run_job(case / f"{case.name}_t1.nii.gz", tmp_path, JobOptions(steps=2, t_intermediate=5), tiny_models,
                      progress=False)
    figure = comparison_figure(case, case.name, outputs, 2)
    for row, plane in zip(np.asarray(figure.axes).reshape(3, -1), ("axial", "coronal", "sagittal")):
        for ax in row:  # drawn as 3D Slicer draws the plane, the patient's sides lettered
            assert ax.xaxis_inverted() and [t.get_text() for t in ax.texts] == list(PLANE_SIDES[plane])
    png = save_png(tmp_path / "translation.png", figure)
    assert png.stat().st_size > 20_000


def test_every_pass_samples_with_the_models_validated_step_count(tiny_models, cohort, tmp_path, monkeypatch):
    """Steps 0 (the default) is the model's config.json count, for every pass and for the risk
    calibration it looks up; a count the user names wins."""
    from localdiffusion.detectors.risk import calibration_for, calibration_name
    from localdiffusion.jobs.run import JobOptions, compute_job
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.options import default
    from localdiffusion.volume import batching

    sampled = []  # the step count of every batch any pass samples
    real = batching.sample_slices
    monkeypatch.setattr(batching, "sample_slices", lambda *a, steps, **k: sampled.append(steps) or real(*a, steps=steps, **k))

    config = read_config(tiny_models / "t1_to_flair")
    assert default("steps") == 0 and config.steps == 3
    assert (config.sampling_steps(0), config.sampling_steps(7), config.sampling_steps(None)) == (3, 7, None)
    assert calibration_name(3, config.steps) == "risk_calibration.json"
    assert calibration_name(25, config.steps) == "risk_calibration_ddim25.json"
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = case / f"{case.name}_t1.nii.gz"
    job = compute_job(t1, JobOptions(t_intermediate=5), tiny_models, progress=False)
    assert job.steps == 3 and len(sampled) > 1 and set(sampled) == {3}
    sampled.clear()
    other = compute_job(t1, JobOptions(t_intermediate=5, steps=2), tiny_models, progress=False)
    assert other.steps == 2 and len(sampled) > 1 and set(sampled) == {2}
    assert calibration_for(tiny_models / "t1_to_flair", "ddim", 3)[0] is None  # none fitted in the tiny models


def test_the_shipped_models_have_a_risk_calibration_for_their_own_and_for_25_steps():
    from localdiffusion.detectors.risk import calibration_for
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.options import DIRECTIONS
    from localdiffusion.shipped import MODELS_ROOT

    for direction in DIRECTIONS:
        model = MODELS_ROOT / direction
        for steps in (read_config(model).steps, 25):
            calibration, why = calibration_for(model, "ddim", steps)
            assert calibration is not None and calibration.steps == steps, why
        assert calibration_for(model, "ddpm", 25)[0] is None


def test_run_json_lines_report_progress_outputs_and_errors(tiny_models, cohort, tmp_path, capsys):
    import json

    from localdiffusion.cli import main

    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    args = ["run", "--input", str(case / f"{case.name}_t1.nii.gz"), "--out-dir", str(tmp_path / "out"),
            "--models", str(tiny_models), "--steps", "2", "--json"]
    assert main(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["fraction"] for e in progress if e["phase"] == "local"][-1] == 1.0
    assert [e["fraction"] for e in progress if e["phase"] == "baseline"][-1] == 1.0
    outputs = {e["name"]: e["path"] for e in events if e["event"] == "output"}
    assert set(outputs) == {"local", "baseline", "ood", "ood_mask", "provenance"} and all(Path(p).is_file() for p in outputs.values())
    assert main(args[:-3] + ["--steps", "-1", "--json"]) == 2
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert error["event"] == "error" and "steps" in error["message"]


def test_only_user_faults_become_exit_code_2(tiny_models, cohort, tmp_path, monkeypatch):
    """A programming error keeps its traceback instead of being reported as bad input."""
    import localdiffusion.jobs.run as run_module
    from localdiffusion.cli import main

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's fault")

    monkeypatch.setattr(run_module, "run_job", broken)
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    with pytest.raises(ValueError, match="a bug"):
        main(["run", "--input", str(case / f"{case.name}_t1.nii.gz"), "--out-dir", str(tmp_path),
              "--models", str(tiny_models)])


def test_options_table_checks_client_parameters():
    from localdiffusion.errors import InputError
    from localdiffusion.options import parse_params

    assert parse_params({"steps": "10", "device": "cpu"}, ["steps", "device", "seed"]) == {"steps": 10, "device": "cpu",
                                                                                        "seed": 0}
    for bad in ({"steps": -1}, {"steps": "ten"}, {"steps": 2.5}, {"device": "tpu"}, {"seed": -1}):
        with pytest.raises(InputError, match=next(iter(bad))):
            parse_params(bad, ["steps", "device", "seed"])
    with pytest.raises(InputError, match="JSON object"):
        parse_params([1, 2], ["steps"])


def test_output_faults_fail_before_any_work(tiny_models, cohort, tmp_path, capsys):
    """Every output path is checked before a network runs: one line, exit 2, nothing written, in seconds."""
    import time

    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = str(case / f"{case.name}_t1.nii.gz")
    model = str(tiny_models / "t1_to_flair")
    folder = tmp_path / "existing"
    folder.mkdir()
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    out = str(tmp_path / "out.nii.gz")
    faults = {
        "must end in one of .nii.gz": ["translate", "--input", t1, "--model", model, "--out", str(tmp_path / "flair")],
        "existing folder": ["translate", "--input", t1, "--model", model, "--out", str(folder)],
        "name the same file": ["translate", "--input", t1, "--model", model, "--out", out, "--risk-map", out],
        "is a file, not a folder": ["translate", "--input", t1, "--model", model,
                                    "--out", str(a_file / "flair.nii.gz")],
        "overwrite the input": ["translate", "--input", t1, "--model", model, "--out", t1],
        "--out-dir is a file": ["run", "--input", t1, "--models", str(tiny_models), "--out-dir", str(a_file)],
        "--mask-out and --out": ["ood", "map", "--input", t1, "--bank", str(tiny_models / "ood_t1.pt"), "--out", out,
                                 "--mask-out", out],
    }
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for message, args in faults.items():
        start = time.monotonic()
        assert main(args) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], (message, err)
        assert time.monotonic() - start < 5, message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, inputs untouched


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["t1_to_flair", "flair_to_t1"])
def test_run_writes_the_contrasts_product_ood_map_and_branches_on_it(tiny_models, cohort, tmp_path, capsys, direction):
    """The OOD map is the robust one (ood/robust.py): the written map is the robust probability,
    not the bank's; a models folder without the robust calibration falls back to the bank's map and says so."""
    import json
    import shutil

    from localdiffusion.jobs.inputs import prepare_input
    from localdiffusion.network.denoiser import load_denoiser
    from localdiffusion.ood.patchcore import PatchCore
    from localdiffusion.ood.robust import RobustCalibration
    from localdiffusion.ood.volume import probability_volume

    src = direction.split("_to_")[0]
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    source = case / f"{case.name}_{src}.nii.gz"
    config = load_denoiser(models / direction).config
    prepared = prepare_input(source, src, config.spacing_mm, config.in_plane)
    bank = PatchCore.load(models / f"ood_{src}.pt", modality=src, model_root=models)
    robust = prepared.to_input_brain(RobustCalibration.load(models / f"ood_{src}_robust.json").ood_map(
        bank, prepared.images[src], prepared.brain, prepared.grid.affine).map.probability)
    own = prepared.to_input_brain(probability_volume(bank, prepared))
    assert np.abs(robust - own).max() > 0.1  # the two maps differ, so the test can tell them apart

    def written_ood(out: Path) -> np.ndarray:
        capsys.readouterr()
        assert main(["run", "--input", str(source), "--out-dir", str(out), "--models", str(models), "--steps", "2",
                     "--direction", direction, "--no-baseline", "--no-risk-map", "--json"]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        written_ood.warnings = [e["message"] for e in events if e["event"] == "warning"]
        return nib.load(str(out / f"{case.name}_{src}_ood_probability.nii.gz")).get_fdata()

    np.testing.assert_allclose(written_ood(tmp_path / "robust"), robust, atol=1e-5)
    assert not any(f"ood_{src}_robust.json" in w for w in written_ood.warnings)
    (models / f"ood_{src}_robust.json").unlink()
    np.testing.assert_allclose(written_ood(tmp_path / "bank"), own, atol=1e-5)
    assert any(f"ood_{src}_robust.json not found" in w and "bank's own calibration" in w for w in written_ood.warnings)


@pytest.mark.slow
def test_run_says_plainly_why_it_writes_no_risk_map(tiny_models, cohort, tmp_path, capsys):
    """No calibration, or one fitted for another step count: the outputs are written without a risk map,
    and a warning says which and how to get one; a calibration for the step count asked for is used."""
    import json
    import shutil

    from localdiffusion.detectors.risk import fit_on_volumes

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    source = case / f"{case.name}_t1.nii.gz"

    def run(out: str, steps: int) -> tuple[list[str], list[str]]:
        capsys.readouterr()
        assert main(["run", "--input", str(source), "--out-dir", str(tmp_path / out), "--models", str(models),
                     "--steps", str(steps), "--no-baseline", "--json"]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        return ([e["message"] for e in events if e["event"] == "warning"],
                [e["name"] for e in events if e["event"] == "output"])

    warnings, outputs = run("none", 2)
    assert "risk" not in outputs and any("no hallucination-risk map" in w and "risk_calibration.json not found" in w
                                         for w in warnings)
    rng = np.random.default_rng(0)
    brain = np.ones((8, 8, 4), bool)
    healthy = [(brain, {"ood": rng.uniform(0, 1, brain.shape).astype(np.float32)}) for _ in range(30)]
    fit_on_volumes(healthy, ("ood",), 1.0, "max", steps=3).save(models / "t1_to_flair" / "risk_calibration.json")
    warnings, outputs = run("other_steps", 2)
    assert "risk" not in outputs and any("for DDIM with --steps 3, not DDIM with --steps 2" in w for w in warnings)
    warnings, outputs = run("calibrated", 3)
    assert "risk" in outputs and not any("hallucination-risk" in w for w in warnings)
    # a second calibration for another step count beside the first: each step count gets its own
    fit_on_volumes(healthy, ("ood",), 1.0, "max", steps=2).save(models / "t1_to_flair" / "risk_calibration_ddim2.json")
    for steps in (2, 3):
        warnings, outputs = run(f"both_{steps}", steps)
        assert "risk" in outputs and not any("hallucination-risk" in w for w in warnings)
    warnings, outputs = run("neither", 4)
    assert "risk" not in outputs and any("--steps 2 or --steps 3, not DDIM with --steps 4" in w for w in warnings)


def test_each_model_says_whether_its_translation_is_local_diffusion_and_where_it_fuses(tiny_models, cohort, tmp_path):
    """config.json's validated choice is the default (research/hallucination); --local-diffusion on/off and an
    explicit --t-intermediate win. Without Local Diffusion the translation is named for the target contrast, no
    baseline is written (it would be the same image) and the provenance says which sampler made it."""
    import json
    import shutil

    from localdiffusion.cli import main
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.shipped import MODELS_ROOT

    shipped = {d: read_config(MODELS_ROOT / d) for d in ("t1_to_flair", "flair_to_t1")}
    # T1 -> FLAIR passed the rule on validation at 50; FLAIR -> T1 failed it on the lesion families' validation
    assert shipped["t1_to_flair"].local_diffusion and not shipped["flair_to_t1"].local_diffusion
    assert (shipped["t1_to_flair"].t_intermediate, shipped["flair_to_t1"].t_intermediate) == (50, 30)
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    config_path = models / "t1_to_flair" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(local_diffusion=False, t_intermediate=7)
    config_path.write_text(json.dumps(config))
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = case / f"{case.name}_t1.nii.gz"
    base = ["run", "--input", str(t1), "--models", str(models), "--steps", "2", "--no-risk-map"]
    assert main([*base, "--out-dir", str(tmp_path / "off")]) == 0
    written = sorted(p.name for p in (tmp_path / "off").iterdir())
    assert f"{case.name}_t1_flair.nii.gz" in written and not any("baseline" in n or "local_diffusion" in n for n in written)
    provenance = json.loads((tmp_path / "off" / f"{case.name}_t1_localdiffusion.json").read_text())
    assert provenance["translation"] == "plain sampler" and provenance["options"]["t_intermediate"] == 7
    assert main([*base, "--out-dir", str(tmp_path / "on"), "--local-diffusion", "on", "--t-intermediate", "1"]) == 0
    provenance = json.loads((tmp_path / "on" / f"{case.name}_t1_localdiffusion.json").read_text())
    assert provenance["translation"] == "local diffusion" and provenance["options"]["t_intermediate"] == 1
    assert {f"{case.name}_t1_flair_local_diffusion.nii.gz", f"{case.name}_t1_flair_baseline.nii.gz"} <= \
        {p.name for p in (tmp_path / "on").iterdir()}
