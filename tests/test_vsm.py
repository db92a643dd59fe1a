"""VSM: learned variance, its regulariser, sampling with it, fine-tuning and resuming."""

import json

import numpy as np
import pytest
import torch
from test_diffusion import tiny_config

from localdiffusion.engine.assemble import sample_slices
from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.errors import InputError
from localdiffusion.methods.local_diffusion import LocalDiffusion, LocalDiffusionConfig
from localdiffusion.network.denoiser import Denoiser, adapt_state_dict, build_network, load_denoiser
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.training.diffusion import TrainConfig, train
from localdiffusion.training.objectives import Objective, losses
from sampling_helpers import branch_weight


def _vsm_denoiser(seed=0, bias=None) -> Denoiser:
    torch.manual_seed(seed)
    cfg = tiny_config(learned_variance=True)
    net = build_network(cfg)
    for p in net.out.parameters():  # MONAI zero-initialises the output layer: give it something to say
        torch.nn.init.normal_(p, std=0.5)
    if bias is not None:
        with torch.no_grad():
            net.out[2].conv.weight[1].zero_()
            net.out[2].conv.bias[1] = bias
    return Denoiser(cfg, net, autocast=False).eval()


def test_learned_variance_stays_between_beta_tilde_and_beta():
    schedule = NoiseSchedule(20)
    t = torch.arange(20)
    for s in (t - 1, torch.clamp(t - 5, min=-1)):  # the full chain and a respaced one
        low, high = schedule.log_variance_range(t, s)
        assert torch.all(low <= high + 1e-12) and torch.all(torch.isfinite(low))
        for fraction in (0.0, 0.3, 1.0):
            v = schedule.learned_variance(torch.full((20, 1, 2, 2), fraction, dtype=torch.float64), t, s).flatten(1)
            assert torch.all(v >= low.exp()[:, None] * (1 - 1e-9)) and torch.all(v <= high.exp()[:, None] * (1 + 1e-9))
    den = _vsm_denoiser()
    x = torch.randn(3, 1, 16, 16) * 3
    fraction = den.predict(x, torch.rand(3, 1, 16, 16), 7).fraction
    assert fraction.shape == x.shape and fraction.min() >= 0 and fraction.max() <= 1 and fraction.std() > 0


def _terms(net, schedule, objective, generator):
    cond = torch.rand(6, 1, 16, 16, generator=generator) * 2 - 1
    target, noise = -cond, torch.randn(6, 1, 16, 16, generator=generator)
    t = torch.tensor([0, 1, 4, 9, 15, 19])
    x_t = schedule.add_noise(target, noise, t)
    output = net(torch.cat([x_t, cond], 1), timesteps=t)
    output.retain_grad()
    terms = losses(objective, schedule, output, x_t, target, noise, t, "sample")
    return output, terms


@pytest.mark.parametrize("time_aware", [False, True])
def test_rho_zero_gives_the_plain_gradient_on_the_x0_output(time_aware):
    den = _vsm_denoiser()
    grads = {}
    for name, objective in (("plain", Objective("plain")), ("rho0", Objective("vsm", 0.0, time_aware)),
                            ("rho", Objective("vsm", 0.5, time_aware))):
        den.network.zero_grad()
        output, terms = _terms(den.network, den.schedule, objective, torch.Generator().manual_seed(3))
        terms["loss"].backward()
        grads[name] = (output.grad.clone(), {k: p.grad.clone() for k, p in den.network.named_parameters()})
    # the x0 output channel: exactly the plain objective's gradient, with or without the regulariser
    torch.testing.assert_close(grads["rho0"][0][:, :1], grads["plain"][0][:, :1], rtol=0, atol=0)
    torch.testing.assert_close(grads["rho"][0][:, :1], grads["plain"][0][:, :1], rtol=0, atol=0)
    # the regulariser only moves the variance head, and does move it
    assert not torch.equal(grads["rho"][0][:, 1:], grads["rho0"][0][:, 1:])
    # rho = 0 is the hybrid (mse + vb) objective: the variance channel's gradient is the vb term's alone
    den.network.zero_grad()
    output, terms = _terms(den.network, den.schedule, Objective("vsm", 0.0, time_aware), torch.Generator().manual_seed(3))
    (terms["mse"] + terms["vb"]).backward()
    torch.testing.assert_close(output.grad, grads["rho0"][0])


def test_regulariser_lowers_the_learned_variance():
    """Training only the variance head: the larger rho, the smaller the learned variance."""
    final = {}
    for rho in (0.0, 5.0):
        den = _vsm_denoiser(seed=1)
        opt = torch.optim.Adam(den.network.out.parameters(), lr=1e-2)
        for i in range(40):
            _, terms = _terms(den.network, den.schedule, Objective("vsm", rho), torch.Generator().manual_seed(i))
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
        with torch.no_grad():
            x = torch.randn(4, 1, 16, 16)
            final[rho] = den.predict(x, torch.rand(4, 1, 16, 16), 15).fraction.mean().item()
    assert final[5.0] < final[0.0] - 0.05


def test_ddpm_uses_the_learned_variance_and_a_zero_fraction_is_the_fixed_one():
    cond = torch.rand(2, 1, 16, 16)
    seeds = [11, 12]
    low = _vsm_denoiser(bias=-30.0)  # fraction ~0: the posterior variance beta-tilde
    plain = Denoiser(tiny_config(), autocast=False).eval()
    plain.network.load_state_dict({k: v[:1] if k.startswith("out.2") else v for k, v in low.network.state_dict().items()})
    fixed = sample_slices(plain, cond, seeds, sampler="ddpm", steps=8)
    learned = sample_slices(low, cond, seeds, sampler="ddpm", steps=8)
    torch.testing.assert_close(learned, fixed, atol=1e-5, rtol=0)
    high = _vsm_denoiser(bias=30.0)  # fraction ~1: beta, a larger variance gives a different sample
    assert (sample_slices(high, cond, seeds, sampler="ddpm", steps=8) - fixed).abs().max() > 1e-3
    # DDIM (eta 0) ignores the variance: the same as the plain model
    torch.testing.assert_close(sample_slices(high, cond, seeds, sampler="ddim", steps=8),
                               sample_slices(plain, cond, seeds, sampler="ddim", steps=8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("crop_margin", [None, 2])
def test_local_diffusion_with_a_learned_variance(crop_margin):
    den = _vsm_denoiser(bias=-30.0)
    plain = Denoiser(tiny_config(), autocast=False).eval()
    plain.network.load_state_dict({k: v[:1] if k.startswith("out.2") else v for k, v in den.network.state_dict().items()})
    cond = torch.rand(3, 1, 16, 16)
    ood = torch.zeros(3, 1, 16, 16)
    ood[0, :, 4:9, 5:10] = 1.0
    config = LocalDiffusionConfig(crop_margin=crop_margin, t_intermediate=0, min_component=0)
    runs = {}
    for name, model in (("learned", den), ("plain", plain)):
        method = LocalDiffusion(model, cond, branch_weight(ood, 0.5, "hard"), config)
        runs[name] = sample_slices(model, cond, [1, 2, 3], sampler="ddpm", steps=6, method=method)
        if name == "learned":
            fraction = method.variance_fraction()
            assert fraction.shape == (3, 2, 16, 16)
    torch.testing.assert_close(runs["learned"], runs["plain"], atol=1e-5, rtol=0)


def _cfg(cohort, out, steps, **kw):
    return TrainConfig(data=str(cohort), out=str(out), steps=steps, batch_size=2, crop=16, checkpoint_every=1,
                       val_every=0, seed=0, threads=1, **kw)


def test_vsm_fine_tune_widens_the_plain_model_and_resumes(cohort, tmp_path):
    base = tmp_path / "plain"
    train(_cfg(cohort, base, 1), tiny_config(), progress=False)
    vsm = tmp_path / "vsm"
    train(_cfg(cohort, vsm, 0, objective="vsm"), tiny_config(), init_from=base, progress=False)
    widened, plain = load_denoiser(vsm, autocast=False), load_denoiser(base, autocast=False)
    assert widened.config.learned_variance and widened.config.extra["objective"] == "vsm"
    x, cond = torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    prediction = widened.predict(x, cond, 5)
    torch.testing.assert_close(prediction.x0, plain(x, cond, 5))  # widened: the same x0 until trained
    assert torch.allclose(prediction.fraction, torch.full_like(prediction.fraction, 0.5))
    train(_cfg(cohort, vsm, 2, objective="vsm", vsm_rho=0.2), tiny_config(), init_from=base, progress=False)
    train(_cfg(cohort, vsm, 4, objective="vsm", vsm_rho=0.2), tiny_config(), resume=True, progress=False)
    log = (vsm / "train.log").read_text()
    assert "resumed from step 2" in log
    assert json.loads((vsm / "config.json").read_text())["extra"] == {"objective": "vsm", "vsm_rho": 0.2,
                                                                      "vsm_time_aware": False}
    with pytest.raises(InputError, match="does not match"):  # a VSM checkpoint does not resume as plain
        train(_cfg(cohort, vsm, 6), tiny_config(), resume=True, progress=False)


def test_adapt_refuses_narrowing():
    wide = build_network(tiny_config(learned_variance=True))
    with pytest.raises(ValueError, match="cannot adapt"):
        adapt_state_dict(wide.state_dict(), build_network(tiny_config()))


def test_plain_checkpoints_still_load():
    shipped = load_denoiser(MODELS_ROOT / "flair_to_t1")
    assert not shipped.config.learned_variance
    condition = torch.zeros(1, shipped.config.condition_slices, 96, 112)  # the shipped FLAIR -> T1 model is 2.5D
    assert shipped.predict(torch.zeros(1, 1, 96, 112), condition, 3).fraction is None


@pytest.mark.slow
def test_benchmark_adds_vsm_rows_paired_with_their_plain_rows(cohort, tiny_models, tmp_path):
    from localdiffusion.methods.local_diffusion import LocalDiffusionConfig
    from research.bench.matrix import Row
    from research.hallucination.__main__ import main

    # rows of the shipped model keep their cache keys (cells computed before VSM rows existed stay valid)
    assert "model" not in Row("baseline").key(LocalDiffusionConfig(), False)
    vsm = tmp_path / "vsm"
    plain = load_denoiser(tiny_models / "flair_to_t1", autocast=False)
    train(_cfg(cohort, vsm, 0, objective="vsm"), plain.config, init_from=tiny_models / "flair_to_t1", progress=False)
    md = tmp_path / "BENCHMARK.md"
    md.write_text("# Benchmarks\n")
    rows = ["DDIM-25", "DDPM-10", "VSM DDPM-10", "LD oracle mask, IND floor 0, DDPM-10",
            "VSM + LD oracle mask, IND floor 0, DDPM-10"]
    assert main(["--data", str(cohort), "--models", str(tiny_models), "--directions", "flair_to_t1",
                 "--out-dir", str(tmp_path / "b"), "--markdown", str(md), "--max-cases", "1", "--max-slices", "1",
                 "--vsm-model", str(vsm), "--rows", *rows]) == 0
    result = json.loads((tmp_path / "b" / "hallucination_flair_to_t1.json").read_text())
    assert set(result["rows"]) == set(rows)
    paired = result["paired_differences"]
    assert paired["VSM DDPM-10"]["against"] == "DDPM-10"
    assert paired["VSM + LD oracle mask, IND floor 0, DDPM-10"]["against"] == "LD oracle mask, IND floor 0, DDPM-10"
    assert result["computed_cells"] == 5 and len(result["cells"]["VSM DDPM-10"]) == 1
    assert "VSM DDPM-10 - DDPM-10" in md.read_text()


def test_learned_variance_with_rods_and_the_risk_recorder(cohort):
    """A VSM model through the volume path with RODS (autograd curvature) and the detector recorder."""
    from localdiffusion.data.readers import read_case
    from localdiffusion.detectors.maps import VolumeRecorder
    from localdiffusion.methods.rods import RODSConfig
    from localdiffusion.volume.batching import batch_sampler, translate_prepared
    from localdiffusion.volume.cohort import cases_in_split
    from localdiffusion.volume.grid import prepare_case

    den = _vsm_denoiser(seed=2)
    prepared = prepare_case(read_case(cases_in_split(cohort, "test", "tumour")[0], ("t1", "flair")), 4.0, (48, 56))
    ks = prepared.brain_slices()[:3]
    recorder = VolumeRecorder(prepared.grid.shape, 3)
    out = translate_prepared(den, prepared, slices=ks, progress=False, recorder=recorder,
                             sample_batch=batch_sampler("ddpm", 6, rods=RODSConfig(eps=0.0, stride=1)))
    assert np.isfinite(out).all() and out[:, :, ks][prepared.brain[:, :, ks]].std() > 0
    maps = recorder.volumes()
    assert maps["variance"][:, :, ks].max() > 0 and maps["curvature"][0, 0, ks].min() > 0
