import pytest
import torch

from localdiffusion.diffusion.sampling import SliceNoise, ddim_update, reverse_process
from localdiffusion.diffusion.schedule import NoiseSchedule
from localdiffusion.trajectory import TrajectoryVariance


def test_variance_zero_for_constant_trajectory():
    s = NoiseSchedule(20)
    rec = TrajectoryVariance(last_k=5)
    noise = SliceNoise([0, 1])
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    reverse_process(lambda x, t: x0, noise((1, 4, 4)), s, s.timesteps(12), ddim_update(), noise, [rec])
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

    reverse_process(denoise, noise((1, 2, 2)), s, s.timesteps(8), ddim_update(), noise, [rec])
    torch.testing.assert_close(rec.variance(), torch.full((1, 1, 2, 2), 0.25))
    assert rec.slice_score(torch.ones(1, 1, 2, 2)).item() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        TrajectoryVariance(last_k=1)


def test_risk_calibration_gives_stated_rate_on_held_out_normal_data(tmp_path):
    import numpy as np

    from localdiffusion.risk import RiskCalibration

    rng = np.random.default_rng(0)

    def healthy(n):
        return rng.uniform(0, 1, n).astype(np.float32), rng.gamma(2.0, 1e-4, n), rng.gamma(3.0, 1.0, n)

    cal = RiskCalibration.fit(*healthy(200_000), false_positive_rate=0.01)
    p_ood, var, curv = healthy(200_000)
    rate = float((cal.risk(p_ood, var, curv) >= 0.99).mean())
    assert abs(rate - 0.01) < 0.002
    # an obvious hallucination (variance far above healthy levels) is flagged
    assert cal.risk(np.array([0.2]), np.array([1.0]), np.array([1.0]))[0] == 1.0
    cal.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    np.testing.assert_allclose(again.risk(p_ood[:100], var[:100], curv[:100]), cal.risk(p_ood[:100], var[:100], curv[:100]))
