import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from localdiffusion.cli import main
from localdiffusion.data.io import save_volume
from localdiffusion.engine.assemble import sample_slices
from localdiffusion.engine.loop import SliceNoise, reverse_process
from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.engine.updates import DDIM, DDPM
from localdiffusion.errors import InputError
from localdiffusion.network.denoiser import DiffusionConfig, Prediction, build_network, load_denoiser, save_model
from localdiffusion.training.diffusion import TrainConfig, train

TINY = dict(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, num_train_timesteps=20, spacing_mm=4.0, in_plane=(48, 56))


def tiny_config(**kw) -> DiffusionConfig:
    return DiffusionConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config()
    folder = tmp_path_factory.mktemp("tiny_model")
    save_model(folder, cfg, build_network(cfg).state_dict())
    return folder


# ----------------------------------------------------------------- schedule and samplers


def test_posterior_matches_closed_form():
    s = NoiseSchedule(100)
    x_t, x0 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = 40
    beta_t, abar_t, abar_prev = float(s.betas[t]), float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t - 1])
    mean, var = s.posterior(x_t, x0, t, t - 1)
    expect_mean = (abar_prev**0.5 * beta_t / (1 - abar_t)) * x0 + ((1 - beta_t) ** 0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t
    torch.testing.assert_close(mean, expect_mean)
    assert var == pytest.approx((1 - abar_prev) / (1 - abar_t) * beta_t, rel=1e-10)
    _, var_last = s.posterior(x_t, x0, 0, -1)
    assert var_last == 0.0


def test_schedule_ends_in_noise_and_respacing():
    s = NoiseSchedule(100)
    assert float(s.alphas_cumprod[-1]) < 1e-3
    assert s.timesteps(100) == list(range(99, -1, -1))
    steps = s.timesteps(25)
    assert steps[0] == 99 and steps[-1] == 0 and len(steps) == 25 and steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError):
        s.timesteps(101)


@pytest.mark.parametrize("update", [DDPM(), DDIM(0.0), DDIM(1.0)])
@pytest.mark.parametrize("steps", [100, 25, 7])
def test_oracle_model_recovers_x0(update, steps):
    s = NoiseSchedule(100)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    noise = SliceNoise([1, 2, 3])
    out = reverse_process(lambda x, t: x0, noise((1, 8, 8)), s, s.timesteps(steps), update, noise)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_ddpm_respaced_to_all_steps_equals_full_chain():
    """The respaced posterior with every step is the textbook one-step DDPM chain."""
    s = NoiseSchedule(50)
    weights = torch.linspace(0.2, 0.9, 50)

    def denoise(x, t):  # a non-trivial x0 predictor
        return torch.tanh(weights[t] * x)

    noise_a, noise_b = SliceNoise([5, 6]), SliceNoise([5, 6])
    ours = reverse_process(denoise, noise_a((1, 4, 4)), s, s.timesteps(50), DDPM(), noise_a)
    x = noise_b((1, 4, 4))
    for t in range(49, -1, -1):  # Ho et al. (2020) eq. 7 with x0 prediction
        x0 = denoise(x, t)
        beta, abar = float(s.betas[t]), float(s.alphas_cumprod[t])
        abar_prev = float(s.alphas_cumprod[t - 1]) if t > 0 else 1.0
        mean = abar_prev**0.5 * beta / (1 - abar) * x0 + (1 - beta) ** 0.5 * (1 - abar_prev) / (1 - abar) * x
        x = mean + ((1 - abar_prev) / (1 - abar) * beta) ** 0.5 * noise_b((1, 4, 4)) if t > 0 else mean
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=0)


def test_ddim_eta0_is_deterministic_and_seeds_differ_per_slice(tiny_model_dir):
    denoiser = load_denoiser(tiny_model_dir)
    cond = torch.rand(2, 1, 48, 56)
    a = sample_slices(denoiser, cond, [1, 2], sampler="ddim", steps=5)
    b = sample_slices(denoiser, cond, [1, 2], sampler="ddim", steps=5)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    x_T = SliceNoise([1, 2])((1, 4, 4))
    assert not torch.equal(x_T[0], x_T[1])


def test_results_do_not_depend_on_batch_composition(tiny_model_dir):
    denoiser = load_denoiser(tiny_model_dir, autocast=False)
    cond = torch.rand(3, 1, 48, 56)
    together = sample_slices(denoiser, cond, [7, 8, 9], sampler="ddpm", steps=4)
    alone = sample_slices(denoiser, cond[1:2], [8], sampler="ddpm", steps=4)
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)


def test_hooks_see_every_step_and_can_replace_state():
    s = NoiseSchedule(20)
    seen = []

    def record(step):
        seen.append((step.t, step.t_prev))
        return step.x_t, torch.zeros_like(step.x0_hat)  # force x0_hat = 0

    noise = SliceNoise([0])
    out = reverse_process(lambda x, t: torch.ones_like(x), noise((1, 2, 2)), s, s.timesteps(5), DDIM(), noise, [record])
    assert seen == list(zip(s.timesteps(5), s.timesteps(5)[1:] + [-1]))
    torch.testing.assert_close(out, torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_prediction_type_conversions_round_trip(prediction_type):
    s = NoiseSchedule(100)
    x0, noise = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    t = torch.tensor([0, 10, 50, 99])
    x_t = s.add_noise(x0, noise, t)
    target = s.training_target(x0, noise, t, prediction_type)
    torch.testing.assert_close(s.x0_from_output(target, x_t, t, prediction_type), x0, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------- training


def _train_cfg(cohort, out, steps, **kw):
    return TrainConfig(data=str(cohort), out=str(out), steps=steps, batch_size=4, crop=32, checkpoint_every=2,
                       val_every=0, seed=0, threads=1, **kw)


def test_training_reduces_loss_on_a_tiny_problem():
    torch.manual_seed(0)
    cfg = tiny_config()
    net = build_network(cfg)
    schedule = NoiseSchedule(cfg.num_train_timesteps)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    cond = torch.rand(8, 1, 16, 16) * 2 - 1
    target = -cond  # a simple contrast inversion

    def loss_at(step_seed):
        g = torch.Generator().manual_seed(step_seed)
        t = torch.randint(0, 20, (8,), generator=g)
        noise = torch.randn(target.shape, generator=g)
        out = net(torch.cat([schedule.add_noise(target, noise, t), cond], 1), timesteps=t)
        return torch.nn.functional.mse_loss(out, target)

    with torch.no_grad():
        before = float(np.mean([loss_at(1000 + i).item() for i in range(4)]))
    for i in range(60):
        loss = loss_at(i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(np.mean([loss_at(1000 + i).item() for i in range(4)]))
    assert after < 0.5 * before


def test_train_resume_continues_from_saved_step(cohort, tmp_path):
    out = tmp_path / "run"
    train(_train_cfg(cohort, out, 2), tiny_config(), progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    train(_train_cfg(cohort, out, 4), tiny_config(), resume=True, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    assert "resumed from step 2" in (out / "train.log").read_text()
    load_denoiser(out)  # exported EMA weights load
    tuned = tmp_path / "tuned"
    train(_train_cfg(cohort, tuned, 0), tiny_config(), init_from=out, progress=False)
    a, b = load_denoiser(out).network.state_dict(), load_denoiser(tuned).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # zero fine-tuning steps: the initial weights
    with pytest.raises(InputError, match="does not match"):
        train(_train_cfg(cohort, out, 6), tiny_config(num_res_blocks=2), resume=True, progress=False)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(cohort, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "localdiffusion.cli", "train", "--data", str(cohort), "--out", str(out), "--steps", "2",
           "--batch-size", "2", "--crop", "32", "--val-every", "0", "--checkpoint-every", "2",
           "--channels", "8", "16", "--num-res-blocks", "1", "--timesteps", "20", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in (out / "train.log").read_text()
    assert (out / "model.pt").exists()


# ----------------------------------------------------------------- translation


@pytest.fixture(scope="module")
def t1_file(tmp_path_factory):
    from localdiffusion.phantom.generate import generate_case

    case = generate_case(200_000_050, tumour=True, spacing=4.0)
    path = tmp_path_factory.mktemp("vol") / "sub_t1.nii.gz"
    save_volume(path, case.images["t1"], case.affine)
    return path


def test_translate_preserves_shape_and_affine(tiny_model_dir, t1_file, tmp_path):
    out = tmp_path / "flair.nii.gz"
    assert main(["translate", "--input", str(t1_file), "--out", str(out), "--model", str(tiny_model_dir),
                 "--steps", "3", "--batch-size", "4"]) == 0
    src, res = nib.load(str(t1_file)), nib.load(str(out))
    assert res.shape == src.shape
    np.testing.assert_allclose(res.affine, src.affine)
    data = res.get_fdata()
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    assert not data[np.asarray(src.dataobj) == 0].any()  # background stays background


def test_translate_bad_inputs(tiny_model_dir, t1_file, tmp_path, capsys):
    base = ["translate", "--input", str(t1_file), "--steps", "2"]
    # missing weights
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert main(base + ["--out", str(tmp_path / "a.nii.gz"), "--model", str(empty)]) == 2
    assert "config" in capsys.readouterr().err
    # checkpoint whose configuration does not match
    bad = tmp_path / "mismatch"
    cfg = tiny_config()
    save_model(bad, tiny_config(channels=(8, 32)), build_network(cfg).state_dict())
    assert main(base + ["--out", str(tmp_path / "b.nii.gz"), "--model", str(bad)]) == 2
    assert "do not match" in capsys.readouterr().err
    # wrong modality count (a 4-channel volume)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10, 4), np.float32), np.eye(4)), str(four))
    assert main(["translate", "--input", str(four), "--out", str(tmp_path / "c.nii.gz"), "--model", str(tiny_model_dir)]) == 2
    assert "3D" in capsys.readouterr().err
    # a volume too small for the network
    small = tmp_path / "small.nii.gz"
    save_volume(small, np.ones((3, 3, 3), np.float32), np.eye(4))
    assert main(["translate", "--input", str(small), "--out", str(tmp_path / "d.nii.gz"), "--model", str(tiny_model_dir)]) == 2
    assert "too small" in capsys.readouterr().err
    # never overwrite the input
    before = t1_file.read_bytes()
    assert main(["translate", "--input", str(t1_file), "--out", str(t1_file), "--model", str(tiny_model_dir)]) == 2
    assert t1_file.read_bytes() == before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial outputs


def test_segmenter_trains_and_round_trips(cohort, tmp_path):
    from localdiffusion.network.segmenter import SegConfig, load_segmenter
    from localdiffusion.training.segmenter import train_segmenter

    cfg = SegConfig(modality="flair", channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)
    metrics = train_segmenter(cohort, tmp_path / "seg", cfg, steps=3, batch_size=4, progress=False)
    assert 0.0 <= metrics["val_tumour_dice"] <= 1.0
    seg = load_segmenter(tmp_path / "seg")
    out = seg(torch.zeros(2, 1, 48, 56))
    assert out.shape == (2, 48, 56) and out.dtype == torch.int64
    with pytest.raises(InputError):
        load_segmenter(tmp_path / "nothing")
    # several cohorts pool their train slices; the intensity augmentation is recorded
    pooled = train_segmenter([cohort, cohort], tmp_path / "seg2", cfg, steps=2, batch_size=4, gamma_sd=0.3,
                             progress=False)
    assert pooled["train_slices"] == 2 * metrics["train_slices"] and pooled["val_slices"] == metrics["val_slices"]
    assert pooled["gamma_sd"] == 0.3 and pooled["cohorts"] == 2


def test_segmenter_training_resumes_from_its_checkpoint(cohort, tmp_path):
    """A run leaves its checkpoint; --resume continues it to a longer schedule from the step it reached, and a
    checkpoint of another U-Net is refused. The slices are held as float16 without a concatenated copy."""
    from dataclasses import replace

    from localdiffusion.network.segmenter import SegConfig
    from localdiffusion.training.segmenter import CHECKPOINT_FILE, SliceStore, train_segmenter
    from localdiffusion.volume.cohort import load_slice_set

    cfg = SegConfig(modality="flair", channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)
    first = train_segmenter(cohort, tmp_path / "seg", cfg, steps=2, batch_size=4, progress=False)
    state = torch.load(tmp_path / "seg" / CHECKPOINT_FILE, weights_only=False)
    assert first["resumed_from"] == 0 and state["step"] == 2
    longer = train_segmenter(cohort, tmp_path / "seg", cfg, steps=3, batch_size=4, progress=False, resume=True)
    after = torch.load(tmp_path / "seg" / CHECKPOINT_FILE, weights_only=False)
    assert longer["resumed_from"] == 2 and after["step"] == 3
    assert any(not torch.equal(after["network"][k], state["network"][k]) for k in state["network"])
    with pytest.raises(InputError, match="checkpoint configuration"):
        train_segmenter(cohort, tmp_path / "seg", replace(cfg, channels=(4, 16)), steps=4, batch_size=4,
                        progress=False, resume=True)
    slices = load_slice_set(cohort, "train", ("flair",), kind="tumour", spacing=4.0, in_plane=(48, 56))
    store = SliceStore()
    store.add(slices, "flair")
    store.add(slices, "flair")
    assert len(store) == 2 * len(slices) and store.images[0].dtype == np.float16
    x, y = store.take(np.array([0, len(slices)]))
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (2, 1, 48, 56)
    assert np.array_equal(x[0], x[1]) and np.allclose(x[0, 0], slices.images["flair"][0], atol=1e-3)
    assert len(store.tumour_index()) == 2 * int(slices.seg.reshape(len(slices), -1).any(1).sum())


def test_train_seg_on_another_grid_validates_on_the_cohort_named(cohort, tmp_path, capsys):
    """--spacing trains the U-Net on that grid over the same field of view; --val-data names the validating cohort;
    a grid out of range is refused in one line, and nothing is written."""
    import json

    from localdiffusion.cli import main
    from localdiffusion.network.segmenter import SegConfig, load_segmenter

    out = tmp_path / "seg4"
    assert main(["train-seg", "--data", str(cohort), "--val-data", str(cohort), "--spacing", "4", "--steps", "1",
                 "--batch-size", "2", "--modality", "flair", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["spacing_mm"] == 4.0 and config["in_plane"] == [48, 56]  # 192 x 224 mm, as the 2 mm default
    assert SegConfig().at_spacing(2.0) == SegConfig() and load_segmenter(out).config.in_plane == (48, 56)
    assert json.loads((out / "metrics.json").read_text())["val_slices"] > 0
    capsys.readouterr()
    assert main(["train-seg", "--data", str(cohort), "--spacing", "9", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--spacing" in err[0] and not (tmp_path / "never").exists()


def test_contrast_augmentation_changes_contrast_not_background():
    from localdiffusion.training.segmenter import augment_contrast

    x = np.zeros((8, 1, 16, 16), np.float32)
    x[:, :, 4:12, 4:12] = np.linspace(0.1, 0.9, 64, dtype=np.float32).reshape(8, 8)
    a = augment_contrast(x, np.random.default_rng(0), 0.3)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.all(a[x == 0] == 0) and a.min() >= 0 and a.max() <= 1
    assert np.abs(a - x).max() > 0.05  # the contrast changed
    assert np.array_equal(a, augment_contrast(x, np.random.default_rng(0), 0.3))  # seeded
    # a gamma above 1 darkens mid-grey, below 1 brightens it: both occur over a batch
    mid = a[:, 0, 8, 8] - x[:, 0, 8, 8]
    assert (mid > 0.02).any() and (mid < -0.02).any()


def test_evaluate_cli_reports_whole_brain_scores(tiny_model_dir, cohort, tmp_path, capsys):
    import json

    report = tmp_path / "report.json"
    assert main(["evaluate", "--data", str(cohort), "--model", str(tiny_model_dir), "--split", "test",
                 "--steps", "2", "--report", str(report)]) == 0
    assert "whole-brain PSNR" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["cases"] == 1 and result["kind"] == "healthy"
    assert 0 < result["mean_std"]["ssim"][0] <= 1


def test_volume_scores_perfect_and_noisy():
    from localdiffusion.metrics import volume_scores

    rng = np.random.default_rng(0)
    truth = rng.random((16, 16, 4)).astype(np.float32)
    region = np.ones_like(truth, dtype=bool)
    noisy = truth + rng.normal(0, 0.1, truth.shape).astype(np.float32)
    perfect, scores = volume_scores(truth, truth, region), volume_scores(noisy, truth, region)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["psnr"] > 100
    assert scores["psnr"] == pytest.approx(20.0, abs=0.3)  # MSE 0.01


def test_range_matched_scores_do_not_depend_on_the_intensity_scale():
    from localdiffusion.metrics import volume_scores

    rng = np.random.default_rng(1)
    truth = rng.random((24, 24, 3)).astype(np.float32)
    region = np.ones_like(truth, dtype=bool)
    pred = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)
    full, half = volume_scores(pred, truth, region), volume_scores(pred * 0.5, truth * 0.5, region)
    assert half["psnr"] == pytest.approx(full["psnr"] + 20 * np.log10(2), abs=1e-3)  # plain PSNR rewards the squeeze
    assert half["psnr_range"] == pytest.approx(full["psnr_range"], abs=1e-3)
    assert half["ssim_range"] == pytest.approx(full["ssim_range"], abs=1e-3)


# ----------------------------------------------------------------- brain crops


def test_crop_box_grows_rounds_and_stays_inside():
    from localdiffusion.engine.crop import box_shape, crop_box

    support = np.zeros((48, 56), bool)
    support[10:20, 3:9] = True
    rows, cols = crop_box(support, margin=2, multiple=8)
    assert (rows.start, rows.stop) == (8, 24)  # 8..22 grown to 16 rows
    assert (cols.start, cols.stop) == (1, 17)  # 1..11 is 10 wide, grown to 16 from its start
    support[:] = False
    assert box_shape(crop_box(support, 2, 8)) == (48, 56)  # nothing to crop around: the whole slice
    support[40:48, 50:56] = True
    rows, cols = crop_box(support, margin=4, multiple=16)
    assert (rows.stop, cols.stop) == (48, 56) and box_shape((rows, cols)) == (16, 16)  # shifted back inside


def test_windowed_noise_is_the_whole_slice_noise_cropped():
    windows = [(slice(2, 6), slice(0, 4)), (slice(0, 4), slice(4, 8))]
    whole, cropped = SliceNoise([3, 4]), SliceNoise([3, 4], windows=windows, plane=(8, 8))
    for _ in range(2):  # the generators stay in step over draws
        full, crop = whole((2, 8, 8)), cropped((2, 4, 4))
        torch.testing.assert_close(crop[0], full[0][:, 2:6, 0:4], atol=0, rtol=0)
        torch.testing.assert_close(crop[1], full[1][:, 0:4, 4:8], atol=0, rtol=0)
    with pytest.raises(ValueError, match="does not match"):
        cropped((1, 8, 8))


def _prepared_cohort_case(cohort):
    from localdiffusion.data.readers import read_case
    from localdiffusion.volume.cohort import cases_in_split
    from localdiffusion.volume.grid import prepare_case

    return prepare_case(read_case(cases_in_split(cohort, "test", "healthy")[0], ("t1",)), 4.0, (48, 56))


def test_brain_crops_batch_by_size_and_do_not_depend_on_batch_size(tiny_model_dir, cohort):
    from localdiffusion.volume.batching import plan_batches, translate_prepared

    prepared = _prepared_cohort_case(cohort)
    ks = prepared.brain_slices()
    batches = plan_batches(prepared.brain, ks, seed=0, batch_size=4, multiple=16)
    assert sorted(k for b in batches for k in b.ks) == sorted(ks.tolist())
    assert len({b.take(prepared.brain).shape[-2:] for b in batches}) > 1  # crops of more than one size
    for b in batches:
        for k, (rows, cols) in zip(b.ks, b.windows):
            h, w = rows.stop - rows.start, cols.stop - cols.start
            assert (h % 16 == 0 or h == 48) and (w % 16 == 0 or w == 56)
            assert prepared.brain[rows, cols, k].sum() == prepared.brain[:, :, k].sum()  # the whole brain inside
    denoiser = load_denoiser(tiny_model_dir, autocast=False)
    one = translate_prepared(denoiser, prepared, steps=3, batch_size=1, progress=False)
    five = translate_prepared(denoiser, prepared, steps=3, batch_size=5, progress=False)
    np.testing.assert_allclose(one, five, atol=1e-5)
    assert one[prepared.brain].std() > 0 and not one[~prepared.brain].any()


class PointwiseDenoiser(torch.nn.Module):
    """x0_hat = the condition pixel by pixel: a network without context, so crops cannot change it."""

    def __init__(self, config):
        super().__init__()
        self.config, self.schedule = config, NoiseSchedule(config.num_train_timesteps)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x_t, cond, t):
        return cond * self.scale + 0.01 * x_t

    def predict(self, x_t, cond, t):
        return Prediction(self(x_t, cond, t))


def test_brain_crop_matches_whole_slices_for_a_network_without_context(cohort):
    from localdiffusion.volume.batching import translate_prepared

    prepared = _prepared_cohort_case(cohort)
    denoiser = PointwiseDenoiser(tiny_config())
    cropped = translate_prepared(denoiser, prepared, sampler="ddpm", steps=4, progress=False)
    whole = translate_prepared(denoiser, prepared, sampler="ddpm", steps=4, progress=False, crop_margin=None)
    np.testing.assert_allclose(cropped, whole, atol=1e-6)  # same noise in the window, same pointwise updates
