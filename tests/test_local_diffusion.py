import pytest
import torch

from localdiffusion.diffusion.sampling import SliceNoise, Step, translate_slices
from localdiffusion.diffusion.schedule import NoiseSchedule
from localdiffusion.local_diffusion import LocalDiffusion, LocalDiffusionConfig, local_diffusion_slices


class ClosedForm:
    """x0_hat = the condition (in [-1, 1]): a model whose prediction per region is known."""

    def __init__(self, T=20):
        self.schedule = NoiseSchedule(T)
        self.calls = []

    def __call__(self, x_t, cond, t):
        self.calls.append(len(x_t))
        return cond.clone()


def _inputs(B=2, H=8, W=8):
    cond = torch.rand(B, 1, H, W) * 0.5 + 0.25
    prob = torch.zeros(B, 1, H, W)
    prob[0, :, 2:5, 2:5] = 1.0
    prob[0, :, 5, 5] = 0.6  # below the hard threshold
    return cond, prob


def test_branch_conditions_hard_and_soft():
    cond, prob = _inputs()
    hard = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(mask_mode="hard", threshold=0.99, ind_floor=0.0))
    soft = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(mask_mode="soft", ind_floor=0.0))
    assert hard.weight[0, 0, 5, 5] == 0 and soft.weight[0, 0, 5, 5] == pytest.approx(0.6)
    torch.testing.assert_close((hard.cond_ood + 1) / 2, cond * hard.weight)
    torch.testing.assert_close((soft.cond_ind + 1) / 2, cond * (1 - soft.weight))
    floor = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(ind_floor=0.95))
    torch.testing.assert_close((floor.cond_ind + 1) / 2, cond * torch.clamp(1 - floor.weight, min=0.95))
    assert hard.branching.tolist() == [True, False]


def test_denoise_masks_ood_branch_and_uses_one_batched_call():
    cond, prob = _inputs()
    model = ClosedForm()
    ld = LocalDiffusion(model, cond, prob, LocalDiffusionConfig(ind_floor=0.0))
    x0 = ld.denoise(torch.zeros(2, 2, 8, 8), 15)
    assert model.calls == [3]  # two branches of slice 0 + one input for slice 1
    w = ld.weight[0]
    torch.testing.assert_close(x0[0, 0:1], w * ld.cond_ood[0] + (1 - w) * -1.0)  # background outside
    torch.testing.assert_close(x0[0, 1:2], ld.cond_ind[0])
    torch.testing.assert_close(x0[1, 0:1], ld.cond[1])
    torch.testing.assert_close(x0[1, 1:2], ld.cond[1])


def test_fusion_is_the_s_composite():
    cond, prob = _inputs()
    ld = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(t_intermediate=5))
    x_t, x0 = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    assert ld.hook(Step(0, 10, 8, x_t, x0, 5)) is None  # t above t_intermediate: keep branching
    new_x, new_x0 = ld.hook(Step(1, 5, 3, x_t, x0, 5))
    w = ld.weight[0]
    for new, old in ((new_x, x_t), (new_x0, x0)):
        expect = w * old[0, 0:1] + (1 - w) * old[0, 1:2]
        torch.testing.assert_close(new[0, 0:1], expect)
        torch.testing.assert_close(new[0, 1:2], expect)
        torch.testing.assert_close(new[1], old[1])  # the non-branching slice is untouched
    assert not ld.branching.any() and ld.fused_at.tolist() == [5, -1]


def test_gate_rebranches_when_healed_and_stops_at_bound():
    cond, prob = _inputs()
    verdicts = []

    def always_healed(fused_x0, mask):
        verdicts.append(len(fused_x0))
        return torch.ones(len(fused_x0), dtype=torch.bool)

    model = ClosedForm(T=20)
    cfg = LocalDiffusionConfig(t_intermediate=10, max_rebranch=2)
    out, ld = local_diffusion_slices(model, cond, prob, [0, 1], cfg, always_healed, sampler="ddim", steps=20)
    steps = model.schedule.timesteps(20)
    first = next(i for i, t in enumerate(steps) if t <= 10)
    assert ld.rebranches.tolist() == [2, 0]
    assert ld.fused_at[0] == steps[first + 2]  # two re-branchings, then fused at the bound
    assert verdicts == [1, 1, 1]
    never_healed = lambda x, m: torch.zeros(len(x), dtype=torch.bool)  # noqa: E731
    _, ld2 = local_diffusion_slices(ClosedForm(20), cond, prob, [0, 1], cfg, never_healed, steps=20)
    assert ld2.rebranches.tolist() == [0, 0] and ld2.fused_at[0] == steps[first]


def test_closed_form_output_keeps_the_ood_region_from_the_ood_branch():
    cond, prob = _inputs()
    out, ld = local_diffusion_slices(ClosedForm(), cond, prob, [0, 1], LocalDiffusionConfig(ind_floor=0.0), steps=10)
    # DDIM with an x0 oracle returns the fused x0: cond inside the mask, cond * (1 - w) = cond outside
    torch.testing.assert_close((out + 1) / 2, cond, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_empty_ood_map_equals_baseline_exactly(sampler):
    from localdiffusion.diffusion.model import Denoiser, DiffusionConfig

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=20)).eval()
    cond = torch.rand(3, 1, 16, 16)
    base = translate_slices(den, cond * 2 - 1, [4, 5, 6], sampler=sampler, steps=6)
    ld, state = local_diffusion_slices(den, cond, torch.zeros_like(cond), [4, 5, 6], sampler=sampler, steps=6)
    assert torch.equal(base, ld)
    assert not state.branching.any()


def test_shared_and_independent_noise():
    cond, prob = _inputs()
    shared = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(shared_noise=True))
    indep = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(shared_noise=False))
    a = shared.noise(SliceNoise([1, 2]))((2, 8, 8))
    b = indep.noise(SliceNoise([1, 2]))((2, 8, 8))
    assert torch.equal(a[0, 0], a[0, 1]) and not torch.equal(b[0, 0], b[0, 1])
    assert torch.equal(b[1, 0], b[1, 1])  # a slice that does not branch always shares


def test_bad_parameters():
    with pytest.raises(ValueError):
        LocalDiffusionConfig(mask_mode="fuzzy")
    with pytest.raises(ValueError):
        LocalDiffusionConfig(ind_floor=1.5)
    cond, prob = _inputs()
    with pytest.raises(ValueError):
        LocalDiffusion(ClosedForm(20), cond, prob, LocalDiffusionConfig(t_intermediate=20))


def test_benchmark_runs_every_row_on_a_tiny_cohort(cohort):
    from localdiffusion.benchmark import markdown_table, run_benchmark
    from localdiffusion.diffusion.model import Denoiser, DiffusionConfig
    from localdiffusion.segmentation import SegConfig, Segmenter

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=10,
                                   spacing_mm=4.0, in_plane=(48, 56))).eval()
    seg = Segmenter(SegConfig(channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)).eval()
    result = run_benchmark(den, cohort, seg, split="test", source_segmenter=seg, seeds=(0, 1), progress=False)
    assert set(result["rows"]) == {"DDPM-100", "DDIM-25", "DDIM-50", "LD oracle mask (DDIM-25)",
                                   "LD U-Net mask (DDIM-25)"}
    assert result["evaluated_slices"] > 0
    for metrics in result["rows"].values():
        assert 0 <= metrics["tumour_dice"][0] <= 1 and metrics["seconds_per_volume"][0] > 0
    assert "upper bound" in markdown_table(result)
