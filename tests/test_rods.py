import pytest
import torch

from sampling_helpers import conditional_denoise
from localdiffusion.engine.loop import SliceNoise, reverse_process
from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.engine.updates import DDIM
from localdiffusion.methods.rods import RODS, RODSConfig, curvature_index, finite_difference_curvature


def analytic_score(x):
    return -x + 0.3 * torch.sin(2.0 * x) + 0.1 * x.roll(1, dims=-1) ** 2


def fd_grad_norm(x, h=1e-5):
    """Central finite-difference gradient of ||v(x)|| per slice."""
    g = torch.zeros_like(x)
    flat = x.reshape(len(x), -1)
    for j in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, j] = h
        plus = analytic_score((flat + e).reshape(x.shape)).flatten(1).norm(dim=1)
        minus = analytic_score((flat - e).reshape(x.shape)).flatten(1).norm(dim=1)
        g.reshape(len(x), -1)[:, j] = (plus - minus) / (2 * h)
    return g


@pytest.mark.parametrize("mode", ["cas", "sas"])
def test_curvature_index_matches_finite_differences(mode):
    x = torch.randn(3, 1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h, d = curvature_index(analytic_score, x, rho=0.1, mode=mode)[:2]
    h_fd = (fd_grad_norm(x + d) - fd_grad_norm(x)).flatten(1).norm(dim=1)
    torch.testing.assert_close(h, h_fd, rtol=1e-5, atol=1e-7)
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.full((3,), 0.1 * 6**0.5, dtype=torch.float64))


def _tiny_denoiser():
    from localdiffusion.network.denoiser import Denoiser, DiffusionConfig

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=20),
                   autocast=False).float().eval()
    with torch.no_grad():  # MONAI zero-initialises output convolutions: give the net a real Jacobian
        for p in den.network.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    return den.requires_grad_(False)


@pytest.mark.parametrize("estimator,stride,evaluated", [("autograd", 1, [1, 2, 3, 4]),
                                                         ("finite_difference", 1, [1, 2, 3, 4]),
                                                         ("finite_difference", 2, [1, 3])])
def test_rods_with_eps_above_every_h_equals_plain_sampler(estimator, stride, evaluated):
    den = _tiny_denoiser()
    with torch.no_grad():
        probe = den(torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16), 5)
    assert probe.abs().max() > 0
    cond = torch.rand(2, 1, 16, 16) * 2 - 1
    s = den.schedule
    steps = s.timesteps(10)
    denoise = conditional_denoise(den, cond)
    cfg = dict(rho=0.05, estimator=estimator, stride=stride)
    noise_a, noise_b = SliceNoise([3, 4]), SliceNoise([3, 4])
    plain = reverse_process(denoise, noise_a((1, 16, 16)), s, steps, DDIM(), noise_a)
    rods = RODS(denoise, s, steps, RODSConfig(eps=1e12, **cfg))
    robust = reverse_process(rods, noise_b((1, 16, 16)), s, steps, DDIM(), noise_b)
    assert torch.equal(plain, robust)
    assert sorted(rods.curvature) == evaluated  # 10%..50% of 10 steps, every stride-th
    assert not rods.flagged_slices().any()
    rods_all = RODS(denoise, s, steps, RODSConfig(eps=0.0, **cfg))
    noise_c = SliceNoise([3, 4])
    corrected = reverse_process(rods_all, noise_c((1, 16, 16)), s, steps, DDIM(), noise_c)
    assert rods_all.flagged_slices().all() and not torch.equal(plain, corrected)


def potential_score(x):
    """Score of exp(-U), U = sum log cosh(3x) / 3 + 0.5 x.A x (A symmetric): a symmetric Jacobian."""
    flat = x.flatten(1)
    n = flat.shape[1]
    a = torch.arange(n * n, dtype=x.dtype).reshape(n, n).sin() * 0.3
    a = a + a.T
    return (-torch.tanh(3.0 * flat) - flat @ a).reshape(x.shape)


@pytest.mark.parametrize("mode", ["cas", "sas"])
def test_finite_difference_curvature_agrees_with_autograd_on_a_score_field(mode):
    x = torch.randn(4, 1, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for rho in (1e-2, 1e-3, 1e-4):
        exact = curvature_index(potential_score, x, rho, mode)
        approx = finite_difference_curvature(potential_score, x, rho, mode)
        torch.testing.assert_close(approx.d, exact.d, rtol=5 * rho, atol=1e-9)
        errors.append(((approx.h - exact.h).abs() / exact.h).max().item())
        assert approx.at_x is None and approx.at_d is None  # a plain field has no extras
    assert errors[0] < 0.25 and errors[2] < 3e-3
    assert errors[2] < errors[1] / 5 < errors[0] / 25  # first-order convergence in rho


@pytest.mark.parametrize("estimator,calls_per_step", [("autograd", 2), ("finite_difference", 3)])
def test_rods_reuses_its_evaluations_for_the_plain_and_the_shifted_prediction(estimator, calls_per_step):
    den = _tiny_denoiser()
    cond = torch.rand(2, 1, 16, 16) * 2 - 1
    calls = []
    base = conditional_denoise(den, cond)

    def denoise(z, t):
        calls.append(t)
        return base(z, t)

    s = den.schedule
    steps = s.timesteps(10)
    rods = RODS(denoise, s, steps, RODSConfig(eps=0.0, rho=0.05, mode="sas", estimator=estimator, stride=1))
    x, t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)), steps[4]
    got = rods(x, t)
    assert len(calls) == calls_per_step  # autograd: x, x + d; FD: x, x + d, x + d + r v(x + d)/||v||
    abar = s.abar(t)
    with torch.no_grad():
        v = -(x - abar**0.5 * base(x, t)) / (1 - abar)
        d = 0.05 * 16 * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        c_x0, c_xt, _ = DDIM().coefficients(s, t, steps[5])
        expected = base(x + d, t) + (c_xt - 1) / c_x0 * d
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    calls.clear()
    assert torch.equal(rods(x, steps[0]), base(x, steps[0])) and len(calls) == 1  # outside the window: plain


def test_direction_from_x_plus_d_is_applied_at_x():
    s = NoiseSchedule(20)
    x, d = torch.randn(1, 1, 3, 3, dtype=torch.float64), 0.1 * torch.randn(1, 1, 3, 3, dtype=torch.float64)
    model = lambda z: torch.tanh(z) * 0.5  # noqa: E731
    t, t_prev = 12, 7
    c_x0, c_xt, _ = DDIM().coefficients(s, t, t_prev)
    x0_eff = model(x + d) + (c_xt - 1) / c_x0 * d
    got = DDIM()(s, x, x0_eff, t, t_prev, None)
    expected = DDIM()(s, x + d, model(x + d), t, t_prev, None) - d
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kwargs", [{"rho": -0.1}, {"window": (0.5, 0.2)}, {"window": (-0.1, 0.5)},
                                    {"window": (0.1, 1.5)}, {"eps": -1.0}, {"mode": "xyz"},
                                    {"estimator": "hessian"}, {"stride": 0}, {"stride": 1.5}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        RODSConfig(**kwargs)
