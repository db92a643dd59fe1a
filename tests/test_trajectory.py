import pytest
import torch

from localdiffusion.detectors.risk import RISK_DEFAULTS
from localdiffusion.engine.loop import SliceNoise, reverse_process
from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.engine.updates import DDIM
from localdiffusion.methods.trajectory import TrajectoryVariance


def test_variance_zero_for_constant_trajectory():
    s = NoiseSchedule(20)
    rec = TrajectoryVariance(last_k=5)
    noise = SliceNoise([0, 1])
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    reverse_process(lambda x, t: x0, noise((1, 4, 4)), s, s.timesteps(12), DDIM(), noise, [rec])
    assert len(rec.history) == 5
    assert torch.equal(rec.variance(), torch.zeros(2, 1, 4, 4))


def test_variance_is_population_variance_on_unit_scale():
    s = NoiseSchedule(20)
    rec = TrajectoryVariance(last_k=4)
    noise = SliceNoise([0])
    values = {}

    def denoise(x, t):  # x0 alternates between -1 and 1 in model scale -> 0 and 1 in [0, 1]
        values[t] = 1.0 if len(values) % 2 else -1.0
        return torch.full_like(x, values[t])

    reverse_process(denoise, noise((1, 2, 2)), s, s.timesteps(8), DDIM(), noise, [rec])
    torch.testing.assert_close(rec.variance(), torch.full((1, 1, 2, 2), 0.25))
    with pytest.raises(ValueError):
        TrajectoryVariance(last_k=1)


def test_risk_calibration_gives_stated_rate_on_held_out_normal_data(tmp_path):
    import numpy as np

    from localdiffusion.detectors.risk import RiskCalibration

    rng = np.random.default_rng(0)

    def healthy(n):
        return rng.uniform(0, 1, n).astype(np.float32), rng.gamma(2.0, 1e-4, n), rng.gamma(3.0, 1.0, n)

    def maps(p_ood, var, curv):
        return {"ood": p_ood, "variance": var, "curvature": curv}

    cal = RiskCalibration.fit(maps(*healthy(200_000)), false_positive_rate=0.01)
    p_ood, var, curv = healthy(200_000)
    rate = float((cal.risk(maps(p_ood, var, curv)) >= 0.99).mean())
    assert abs(rate - 0.01) < 0.002
    # an obvious hallucination (variance far above healthy levels) is flagged
    assert cal.risk(maps(np.array([0.2]), np.array([1.0]), np.array([1.0])))[0] == 1.0
    cal.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    head = maps(p_ood[:100], var[:100], curv[:100])
    np.testing.assert_allclose(again.risk(head), cal.risk(head))


def test_volume_recorder_fills_only_the_sampled_slices():
    import numpy as np

    from localdiffusion.detectors.maps import VolumeRecorder
    from localdiffusion.volume.batching import SliceBatch

    rec = VolumeRecorder((4, 4, 5), last_k=3)
    whole = (slice(0, 4), slice(0, 4))
    batch = SliceBatch(np.array([1, 3]), [0, 1], [whole, whole], (4, 4))
    hooks = rec.begin(batch)
    s = NoiseSchedule(20)
    noise = batch.noise()
    x0 = iter(torch.linspace(-1, 1, 12))
    reverse_process(lambda x, t: torch.full_like(x, float(next(x0))), noise((1, 4, 4)), s, s.timesteps(6),
                    DDIM(), noise, hooks)
    rec.end()
    variance = rec.maps["variance"]
    assert variance[:, :, [0, 2, 4]].max() == 0 and variance[:, :, [1, 3]].min() > 0
    assert "rods_flagged" not in rec.slices and "curvature" not in rec.volumes()  # RODS off


@pytest.mark.slow
def test_translate_risk_map_and_rods_from_the_cli(tiny_models, cohort, tmp_path, capsys):
    import json
    import shutil

    import nibabel as nib
    import numpy as np

    from localdiffusion.cli import main

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    model = models / "t1_to_flair"
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = case / f"{case.name}_t1.nii.gz"
    out, risk = tmp_path / "out" / "flair.nii.gz", tmp_path / "out" / "risk.nii.gz"
    # no calibration yet: a clear error and nothing written
    assert main(["translate", "--input", str(t1), "--out", str(out), "--model", str(model), "--risk-map", str(risk),
                 "--steps", "6"]) == 2
    assert "risk_calibration.json not found" in capsys.readouterr().err and not out.exists() and not risk.exists()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(model), "--max-cases", "1", "--rods",
                 "--steps", "10", "--detectors", "cycle", "ood_robust", "ood_located", "--smoothing", "2"]) == 0
    # another step count than the default is kept beside the default's file
    saved = json.loads((model / "risk_calibration_ddim10.json").read_text())
    assert not (model / "risk_calibration.json").exists()
    # the risk asked for: robust OOD, the written (located) OOD map and the cycle residual, smoothed, each with its
    # CDF; RODS eps fitted beside it
    assert saved["rods"]["eps"] > 0 and set(saved["detectors"]) == {"cycle", "ood_robust", "ood_located"}
    assert saved["smoothing"] == 2.0 and saved["confident_ml"] == RISK_DEFAULTS["t1_to_flair"].confident_ml
    assert "ood_robust" in saved and "cycle" in saved and "variance" not in saved and "ood" not in saved
    assert saved["definition"]["validated_against"]["healthy_quantile"] == 0.999
    assert "1 healthy val cases" in saved["definition"]["fitted_on"]
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(model), "--detectors", "ood", "curvature", "--steps", "10",
                 "--out", str(tmp_path / "never.json")]) == 2
    assert "needs --rods" in capsys.readouterr().err and not (tmp_path / "never.json").exists()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(model), "--rods", "--rods-stride", "0",
                 "--out", str(tmp_path / "never.json")]) == 2
    assert "stride" in capsys.readouterr().err and not (tmp_path / "never.json").exists()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(model), "--smoothing", "1,2",
                 "--out", str(tmp_path / "never.json")]) == 2
    err = capsys.readouterr().err
    assert "--smoothing" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "never.json").exists()
    legacy = {k: v for k, v in saved.items() if k != "rods"} | {"rods_eps": 0.5}  # a file with the older flat rods_eps key
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    from localdiffusion.detectors.risk import RiskCalibration

    old = RiskCalibration.load(tmp_path / "legacy.json").rods
    assert (old.eps, old.mode, old.estimator, old.stride) == (0.5, "cas", "autograd", 1)
    assert main(["translate", "--input", str(t1), "--out", str(out), "--model", str(model), "--risk-map", str(risk),
                 "--rods", "--steps", "8"]) == 2  # not the calibrated step count
    assert "for DDIM with --steps 10, not DDIM with --steps 8" in capsys.readouterr().err and not out.exists()
    assert main(["translate", "--input", str(t1), "--out", str(out), "--model", str(model), "--risk-map", str(risk),
                 "--rods", "--steps", "10"]) == 0
    ref, img = nib.load(str(t1)), nib.load(str(risk))
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    values = img.get_fdata()
    assert 0 <= values.min() and values.max() <= 1 and values.max() > 0
    assert (values[np.asarray(ref.dataobj) == 0] == 0).all()  # no risk outside the input's foreground
    # the main job writes the risk of its Local Diffusion translation once the model is calibrated,
    # announcing the back-translation as one of its sampling phases
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", "--input", str(t1), "--out-dir", str(run_dir), "--models", str(models), "--steps", "10",
                 "--t-intermediate", "5", "--no-baseline", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {"event": "phases", "phases": ["local", "cycle"]} in events
    assert any(e.get("phase") == "cycle" and e.get("fraction") == 1.0 for e in events)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted(f"{case.name}_t1_{s}" for s in (
        "flair_local_diffusion.nii.gz", "ood_probability.nii.gz", "ood_mask.nii.gz", "hallucination_risk.nii.gz",
        "risk_regions.nii.gz", "risk_regions.json", "localdiffusion.json"))
    # without the bank's robust calibration the robust OOD map cannot be computed: run plans no risk
    # map, translate --risk-map refuses with one line naming the file and writes nothing
    from localdiffusion.jobs.run import JobOptions, planned_outputs

    robust = models / "ood_t1_robust.json"
    options = JobOptions(steps=10, t_intermediate=5)
    assert "risk" in planned_outputs(t1, tmp_path / "run3", options, models)
    robust.rename(tmp_path / "robust.json")
    assert "not found" in _no_risk_without(capsys, t1, models, tmp_path / "three", options, "ood_t1_robust.json")
    (tmp_path / "robust.json").rename(robust)
    # without the reverse model the cycle residual cannot be computed: run writes no risk map,
    # translate --risk-map refuses with one line and writes nothing
    shutil.rmtree(models / "flair_to_t1")
    assert main(["run", "--input", str(t1), "--out-dir", str(tmp_path / "run2"), "--models", str(models), "--steps",
                 "10", "--t-intermediate", "5", "--no-baseline"]) == 0
    assert not any("hallucination_risk" in p.name for p in (tmp_path / "run2").iterdir())
    out2 = tmp_path / "out2" / "flair.nii.gz"
    capsys.readouterr()
    assert main(["translate", "--input", str(t1), "--out", str(out2), "--model", str(model), "--risk-map",
                 str(tmp_path / "out2" / "risk.nii.gz"), "--steps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reverse model not found" in err[0] and not out2.exists()


@pytest.mark.slow
def test_the_default_risk_reads_the_source_lesion_unet(tiny_models, cohort, tmp_path, capsys):
    """The shipped kind of risk (the source contrast's lesion U-Nets, T1's two in a weighted maximum, unsmoothed):
    calibrate-risk fits it by default, run writes it without a back-translation, and without a U-Net's folder run
    plans no risk map and translate --risk-map refuses in one line naming it."""
    import json
    import shutil

    import nibabel as nib
    import numpy as np

    from localdiffusion.cli import main
    from localdiffusion.detectors.risk import growth_label
    from localdiffusion.jobs.run import JobOptions, planned_outputs

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    model = models / "t1_to_flair"
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = case / f"{case.name}_t1.nii.gz"
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(model), "--max-cases", "1",
                 "--steps", "4"]) == 0
    saved = json.loads((model / "risk_calibration_ddim4.json").read_text())
    chosen = RISK_DEFAULTS["t1_to_flair"]
    assert saved["detectors"] == list(chosen.detectors) == ["tumour", "wm_lesion"] and "tumour" in saved
    assert saved["weights"] == chosen.weights == {"tumour": 0.8, "wm_lesion": 0.2} and "wm_lesion" in saved
    assert saved["smoothing"] == chosen.smoothing == 0.0 and saved["confident_ml"] is None is chosen.confident_ml
    assert saved["grow"] == (growth_label(chosen.grow) if chosen.grow else None)
    assert "ood_located" not in saved["definition"]["risk"] and "lesion_<source>" in saved["definition"]["detectors"]["tumour"]
    capsys.readouterr()
    run_dir = tmp_path / "run"
    assert main(["run", "--input", str(t1), "--out-dir", str(run_dir), "--models", str(models), "--steps", "4",
                 "--t-intermediate", "2", "--no-baseline", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {"event": "phases", "phases": ["local"]} in events  # no back-translation: nothing reads it
    risk = nib.load(str(run_dir / f"{case.name}_t1_hallucination_risk.nii.gz")).get_fdata()
    assert 0 <= risk.min() and risk.max() <= 1 and np.isfinite(risk).all()
    options = JobOptions(steps=4, t_intermediate=2)
    assert "risk" in planned_outputs(t1, tmp_path / "run2", options, models)
    shutil.rmtree(models / "lesion_t1")
    _no_risk_without(capsys, t1, models, tmp_path / "two", options, "lesion_t1")


def test_calibrate_risk_fits_lesion_cases_outside_their_labels_without_sampling(tiny_models, cohort, tmp_path,
                                                                                monkeypatch, capsys):
    """--lesion-cases adds the split's lesion cases (each on its brain outside its labels) to the healthy ones; a
    risk of the lesion U-Net alone reads the source only, so nothing is translated."""
    import json
    import shutil

    import localdiffusion.jobs.calibrate as calibrate
    from localdiffusion.cli import main

    def no_sampling(*args, **kwargs):
        raise AssertionError("a source-only risk was fitted by translating")

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    monkeypatch.setattr(calibrate, "translate_prepared", no_sampling)
    out = tmp_path / "risk.json"
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "2",
                 "--lesion-cases", "--steps", "4", "--out", str(out)]) == 0
    fitted_on = json.loads(out.read_text())["definition"]["fitted_on"]
    assert fitted_on.startswith("2 val cases (healthy, and lesion cases outside their lesion labels)")
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "2",
                 "--steps", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["definition"]["fitted_on"].startswith("1 healthy val cases")
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "1",
                 "--steps", "4", "--grow", "tumour:0.5", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["grow"] == "tumour:0.5" and "raw tumour map >= 0.5 (hysteresis)" in saved["definition"]["risk"]
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "1",
                 "--steps", "4", "--grow", "none", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["grow"] is None
    out.unlink()
    capsys.readouterr()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "1",
                 "--steps", "4", "--grow", "tumour:2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].count("--grow") == 1 and not out.exists()
    with pytest.raises(AssertionError, match="by translating"):  # a recorded detector does sample
        main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "1",
              "--detectors", "tumour", "variance", "--steps", "4", "--out", str(out)])


def _no_risk_without(capsys, t1, models, folder, options, missing: str) -> str:
    """With a file the risk needs gone (``missing`` names it): run plans no risk map, and translate --risk-map
    refuses in one line naming it and writes nothing. Returns that line."""
    from localdiffusion.cli import main
    from localdiffusion.jobs.run import planned_outputs

    assert "risk" not in planned_outputs(t1, folder / "run", options, models)
    out = folder / "out" / "flair.nii.gz"
    capsys.readouterr()
    assert main(["translate", "--input", str(t1), "--out", str(out), "--model", str(models / options.direction),
                 "--risk-map", str(folder / "out" / "risk.nii.gz"), "--steps", str(options.steps)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and not out.exists()
    return err[0]


def test_a_lesion_unet_on_a_finer_grid_reads_the_source_on_its_own_grid(tiny_models, cohort, tmp_path, capsys):
    """A lesion U-Net at 2 mm beside a 4 mm translation model (same 192 x 224 mm field of view): the tumour map is
    the U-Net's probability on the source prepared at 2 mm, resampled to the 4 mm working grid; calibrate-risk and
    run use it. A U-Net over another field of view is refused in one line naming it, and nothing is written."""
    import dataclasses
    import json
    import shutil

    import numpy as np
    import torch

    from localdiffusion.cli import main
    from localdiffusion.data.readers import read_case
    from localdiffusion.detectors.given import lesion_probability
    from localdiffusion.network.segmenter import SegConfig, Segmenter, load_segmenter, tumour_probability_volume
    from localdiffusion.volume.grid import prepare_case, resample

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    fine = SegConfig(modality="t1", channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0).at_spacing(2.0)
    assert fine.in_plane == (96, 112)
    torch.manual_seed(1)
    (models / "lesion_t1" / "config.json").write_text(json.dumps(dataclasses.asdict(fine)))
    torch.save(Segmenter(fine).network.state_dict(), models / "lesion_t1" / "model.pt")
    segmenter = load_segmenter(models / "lesion_t1")
    path = next(p for p in sorted(cohort.iterdir()) if "val_t" in p.name)
    prepared = prepare_case(read_case(path, ("t1",)), 4.0, (48, 56))
    probability = lesion_probability(segmenter, prepared)
    finer = prepare_case(read_case(path, ("t1",)), 2.0, (96, 112))
    own = tumour_probability_volume(segmenter, finer.images["t1"], finer.brain)
    expected = resample(own, finer.grid.affine, prepared.grid.affine, prepared.grid.shape, order=1)
    assert probability.shape == prepared.brain.shape and (probability[~prepared.brain] == 0).all()
    np.testing.assert_allclose(probability[prepared.brain], np.clip(expected, 0, 1)[prepared.brain], atol=1e-6)
    assert own.shape[:2] == (96, 112) and own[finer.brain].std() > 0  # it did read the 2 mm grid
    out = tmp_path / "risk.json"
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "2",
                 "--lesion-cases", "--steps", "3", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())  # the direction's default: both T1 lesion U-Nets, sharing the budget
    assert saved["detectors"] == ["tumour", "wm_lesion"] and saved["weights"] == {"tumour": 0.8, "wm_lesion": 0.2}
    shutil.copy(out, models / "t1_to_flair" / "risk_calibration.json")
    t1 = path / f"{path.name}_t1.nii.gz"
    assert main(["run", "--input", str(t1), "--out-dir", str(tmp_path / "run"), "--models", str(models),
                 "--steps", "3", "--t-intermediate", "2", "--no-baseline"]) == 0
    assert (tmp_path / "run" / f"{path.name}_t1_hallucination_risk.nii.gz").exists()
    other = dataclasses.replace(fine, in_plane=(96, 96))  # 192 x 192 mm: another field of view
    (models / "lesion_t1" / "config.json").write_text(json.dumps(dataclasses.asdict(other)))
    capsys.readouterr()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "1",
                 "--steps", "3", "--out", str(tmp_path / "never.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lesion_t1" in err[0] and "field of view" in err[0] and not (tmp_path / "never.json").exists()


def test_a_white_matter_lesion_unet_joins_the_tumour_unet_in_the_maximum(tiny_models, cohort, tmp_path, capsys):
    """The ``wm_lesion`` detector reads its own U-Net (``wm_lesion_<source>``), not the tumour U-Net: its map is that
    U-Net's probability; calibrate-risk fits the (weighted) maximum of both without sampling, refuses weights that
    miss a detector in one line, run writes the risk with it, and
    without the U-Net's folder run plans no risk map and translate --risk-map refuses in one line naming it."""
    import dataclasses
    import json
    import shutil

    import numpy as np
    import torch

    from localdiffusion.cli import main
    from localdiffusion.data.readers import read_case
    from localdiffusion.detectors.given import GivenMaps, lesion_probability
    from localdiffusion.jobs.run import JobOptions
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.network.segmenter import SegConfig, Segmenter, load_segmenter
    from localdiffusion.ood.patchcore import PatchCore
    from localdiffusion.volume.grid import prepare_case

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    other = SegConfig(modality="t1", channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)
    (models / "wm_lesion_t1" / "config.json").write_text(json.dumps(dataclasses.asdict(other)))
    torch.manual_seed(7)  # other weights than the tumour U-Net's
    torch.save(Segmenter(other).network.state_dict(), models / "wm_lesion_t1" / "model.pt")
    path = next(p for p in sorted(cohort.iterdir()) if "val_t" in p.name)
    prepared = prepare_case(read_case(path, ("t1",)), 4.0, (48, 56))
    given = GivenMaps.load(("tumour", "wm_lesion"), PatchCore.load(models / "ood_t1.pt"), models / "ood_t1.pt",
                           models / "t1_to_flair", read_config(models / "t1_to_flair"), "cpu")
    maps = given.source_maps(prepared)
    expected = lesion_probability(load_segmenter(models / "wm_lesion_t1"), prepared)
    np.testing.assert_allclose(maps["wm_lesion"], expected, atol=1e-6)
    assert np.abs(maps["wm_lesion"] - maps["tumour"])[prepared.brain].max() > 1e-3  # two U-Nets, two maps
    out = tmp_path / "risk.json"
    capsys.readouterr()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "2",
                 "--detectors", "tumour", "wm_lesion", "--weights", "tumour=1", "--steps", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights" in err[0] and "wm_lesion" in err[0] and not out.exists()
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "2",
                 "--detectors", "tumour", "wm_lesion", "--smoothing", "0", "--combination", "max", "--grow", "none",
                 "--weights", "tumour=3", "wm_lesion=1", "--steps", "3", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["detectors"] == ["tumour", "wm_lesion"] and "wm_lesion" in saved and "tumour" in saved
    assert "wm_lesion_<source>" in saved["definition"]["detectors"]["wm_lesion"]
    assert saved["weights"] == {"tumour": 0.75, "wm_lesion": 0.25}  # normalised to sum 1
    assert "weighted maximum" in saved["definition"]["risk"] and "tumour=0.75 wm_lesion=0.25" in saved["definition"]["risk"]
    shutil.copy(out, models / "t1_to_flair" / "risk_calibration.json")
    t1 = path / f"{path.name}_t1.nii.gz"
    assert main(["run", "--input", str(t1), "--out-dir", str(tmp_path / "run"), "--models", str(models),
                 "--steps", "3", "--t-intermediate", "2", "--no-baseline"]) == 0
    assert (tmp_path / "run" / f"{path.name}_t1_hallucination_risk.nii.gz").exists()
    shutil.rmtree(models / "wm_lesion_t1")
    _no_risk_without(capsys, t1, models, tmp_path / "two", JobOptions(steps=3, t_intermediate=2), "wm_lesion_t1")
