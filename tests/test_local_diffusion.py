import pytest
import torch

from localdiffusion.engine.assemble import sample_slices
from localdiffusion.engine.loop import SliceNoise, Step
from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.methods.local_diffusion import LocalDiffusion, LocalDiffusionConfig, local_diffusion_slices


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


def test_gate_sees_brain_crops_pasted_back_on_whole_slices():
    cond, prob = _inputs()  # two 8 x 8 crops of 16 x 16 slices
    windows = [(slice(8, 16), slice(0, 8)), (slice(0, 8), slice(4, 12))]
    seen = []

    def gate(fused_x0, mask):
        seen.append((fused_x0.clone(), mask.clone()))
        return torch.zeros(len(fused_x0), dtype=torch.bool)

    noise = SliceNoise([0, 1], windows=windows, plane=(16, 16))
    local_diffusion_slices(ClosedForm(), cond, prob, noise, LocalDiffusionConfig(ind_floor=0.0), gate, steps=10)
    image, mask = seen[0]
    assert image.shape == mask.shape == (1, 1, 16, 16)  # only slice 0 branches
    torch.testing.assert_close(mask[0, 0, 8:16, 0:8], (prob[0, 0] >= 0.99).float())
    assert mask.sum() == (prob[0] >= 0.99).sum() and image[0, 0, :8].abs().max() == 0  # background outside
    torch.testing.assert_close(image[0, 0, 8:16, 0:8], cond[0, 0], atol=1e-5, rtol=0)


def test_closed_form_output_keeps_the_ood_region_from_the_ood_branch():
    cond, prob = _inputs()
    out, ld = local_diffusion_slices(ClosedForm(), cond, prob, [0, 1], LocalDiffusionConfig(ind_floor=0.0), steps=10)
    # DDIM with an x0 oracle returns the fused x0: cond inside the mask, cond * (1 - w) = cond outside
    torch.testing.assert_close((out + 1) / 2, cond, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_empty_ood_map_equals_baseline_exactly(sampler):
    from localdiffusion.network.denoiser import Denoiser, DiffusionConfig

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=20)).eval()
    cond = torch.rand(3, 1, 16, 16)
    base = sample_slices(den, cond, [4, 5, 6], sampler=sampler, steps=6)
    ld, state = local_diffusion_slices(den, cond, torch.zeros_like(cond), [4, 5, 6], sampler=sampler, steps=6)
    assert torch.equal(base, ld)
    assert not state.branching.any()


def test_shared_and_independent_noise():
    cond, prob = _inputs()
    shared = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(shared_noise=True))
    indep = LocalDiffusion(ClosedForm(), cond, prob, LocalDiffusionConfig(shared_noise=False))
    a = shared.step_noise(SliceNoise([1, 2]))((2, 8, 8))
    b = indep.step_noise(SliceNoise([1, 2]))((2, 8, 8))
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
    from localdiffusion.benchmark.figures import montage_figure
    from localdiffusion.benchmark.matrix import run_benchmark
    from localdiffusion.benchmark.report import markdown_table
    from localdiffusion.network.denoiser import Denoiser, DiffusionConfig
    from localdiffusion.network.segmenter import SegConfig, Segmenter

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=10,
                                   spacing_mm=4.0, in_plane=(48, 56))).eval()
    seg = Segmenter(SegConfig(channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)).eval()
    result = run_benchmark(den, cohort, seg, split="test", source_segmenter=seg, seeds=(0, 1), progress=False)
    assert set(result["rows"]) == {"DDPM-100", "DDIM-25", "DDIM-50", "LD oracle mask (DDIM-25)",
                                   "LD U-Net mask (DDIM-25)"}
    assert result["evaluated_slices"] > 0
    assert len(result["per_case"]["DDIM-25"]) == 2 * result["cases"]  # every (case, seed)
    for metrics in result["rows"].values():
        assert 0 <= metrics["tumour_dice"][0] <= 1 and metrics["seconds_per_slice"][0] > 0
    assert "upper bound" in markdown_table(result)
    assert montage_figure(result) is not None


def test_benchmark_command_writes_json_png_and_the_markdown_section(cohort, tiny_models, tmp_path):
    import json
    import shutil

    from localdiffusion.cli import main

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    assert main(["calibrate-risk", "--data", str(cohort), "--model", str(models / "t1_to_flair"), "--max-cases", "1",
                 "--rods", "--steps", "10"]) == 0
    md = tmp_path / "docs" / "BENCHMARK.md"
    md.parent.mkdir()
    md.write_text("# Benchmarks\n\nkept above\n")
    code = main(["benchmark", "--data", str(cohort), "--models", str(models), "--out-dir", str(tmp_path / "docs" / "b"),
                 "--markdown", str(md), "--max-cases", "1"])
    assert code == 0
    for direction in ("t1_to_flair", "flair_to_t1"):
        result = json.loads((tmp_path / "docs" / "b" / f"hallucination_{direction}.json").read_text())
        assert "LD PatchCore mask (DDIM-25)" in result["rows"] and result["gate"]
        assert ("DDIM-25 + RODS" in result["rows"]) == (direction == "t1_to_flair")  # only it has a calibration
        assert (tmp_path / "docs" / "b" / f"hallucination_{direction}.png").stat().st_size > 1000
    det = json.loads((tmp_path / "docs" / "b" / "hallucination_t1_to_flair.json").read_text())["detection"]
    assert det["slices"] > 0 and 0 <= det["rods_detected_pct"] <= 100
    text = md.read_text()
    assert "kept above" in text and "### T1 -> FLAIR" in text and "### FLAIR -> T1" in text
    assert "paper (BraTS)" in text and "](b/hallucination_t1_to_flair.png)" in text
    assert "Hallucination detection" in text and "RODS (" in text and "autograd H" in text
    main(["benchmark", "--data", str(cohort), "--models", str(models), "--out-dir", str(tmp_path / "docs" / "b"),
          "--markdown", str(md), "--max-cases", "1", "--directions", "flair_to_t1"])
    assert md.read_text().count("hallucination-benchmark:start") == 1  # the section is replaced, not appended


def test_ood_branch_runs_on_a_crop_with_the_same_result_for_a_local_model():
    cond = torch.rand(3, 1, 32, 40) * 0.5 + 0.25
    prob = torch.zeros(3, 1, 32, 40)
    prob[0, :, 10:14, 20:23] = 1.0
    prob[1, :, 12:15, 24:26] = 1.0
    full_model, crop_model = ClosedForm(), ClosedForm()
    full = LocalDiffusion(full_model, cond, prob, LocalDiffusionConfig(crop_margin=None))
    crop = LocalDiffusion(crop_model, cond, prob, LocalDiffusionConfig(crop_margin=2))
    assert full.crop is None
    rows, cols = crop.crop
    assert (rows.start, rows.stop, cols.start, cols.stop) == (8, 17, 18, 28)  # union box + 2 px margin
    x = torch.randn(3, 2, 32, 40)
    torch.testing.assert_close(crop.denoise(x, 15), full.denoise(x, 15))  # x0 does not depend on context here
    assert full_model.calls == [5] and crop_model.calls == [2, 3]  # 2 OOD crops, then 2 IND + 1 plain slice


def test_crop_is_rounded_to_the_network_downsampling_factor(tiny_models):
    from localdiffusion.network.denoiser import load_denoiser

    den = load_denoiser(tiny_models / "t1_to_flair")
    factor = 2 ** (len(den.config.channels) - 1)
    prob = torch.zeros(2, 1, 48, 56)
    prob[0, :, 20:23, 30:31] = 1.0
    rows, cols = LocalDiffusion(den, torch.rand(2, 1, 48, 56), prob, LocalDiffusionConfig(crop_margin=3)).crop
    for sl in (rows, cols):
        assert (sl.stop - sl.start) % factor == 0 and sl.start >= 0
    assert rows.start <= 17 and rows.stop >= 26 and cols.start <= 27 and cols.stop >= 34


def test_branch_weight_volume_drops_scattered_false_positives():
    import numpy as np

    from localdiffusion.methods.local_diffusion import branch_weight_volume

    prob = np.zeros((32, 32, 3), np.float32)
    prob[10:16, 10:16, 0] = 1.0  # a lesion: kept
    prob[[3, 20, 27], [5, 25, 8], 1] = 1.0  # scattered single pixels: a healthy slice must not branch
    prob[12:14, 12:14, 2] = 0.999  # a component of 4 pixels: below min_component 8
    brain = np.ones_like(prob, bool)
    hard = branch_weight_volume(prob, LocalDiffusionConfig(threshold=0.99), brain)
    assert hard[:, :, 0].sum() >= 30 and hard[:, :, 1].sum() == 0 and hard[:, :, 2].sum() == 0
    raw = branch_weight_volume(prob, LocalDiffusionConfig(threshold=0.99, min_component=0), brain)
    assert raw[:, :, 1].sum() == 3
    soft = branch_weight_volume(prob * 0.9 + 0.05, LocalDiffusionConfig(mask_mode="soft", threshold=0.9), brain)
    assert soft[:, :, 1].max() == 0 and soft[12, 12, 0] == pytest.approx(0.95)


def test_local_diffusion_and_rods_combine():
    """RODS wraps Local Diffusion's denoise like the plain one: with eps above every curvature the result
    is Local Diffusion's exactly; with eps 0 every slice is flagged and corrected."""
    from localdiffusion.methods.rods import RODSConfig
    from localdiffusion.network.denoiser import Denoiser, DiffusionConfig

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=20), autocast=False).eval()
    for param in den.network.parameters():  # MONAI zero-initialises output layers: make the prediction depend on x
        if not param.abs().sum():
            param.data.normal_(0.0, 0.05)
    cond = torch.rand(2, 1, 16, 16)
    prob = torch.zeros_like(cond)
    prob[0, :, 4:10, 4:10] = 1.0
    plain, _ = local_diffusion_slices(den, cond, prob, [3, 4], steps=10)

    class Watch:
        rods = None

        def watch_denoiser(self, d):
            self.rods = d

        def __call__(self, step):
            return None

    watch = Watch()
    high, state = local_diffusion_slices(den, cond, prob, [3, 4], steps=10, wrappers=[RODSConfig(eps=1e12, stride=1)],
                                         hooks=[watch])
    assert torch.equal(plain, high) and state.fused_at[0] >= 0
    assert watch.rods is not None and len(watch.rods.curvature) > 0 and not watch.rods.flagged_slices().any()
    low, _ = local_diffusion_slices(den, cond, prob, [3, 4], steps=10, wrappers=[RODSConfig(eps=0.0, stride=1)])
    assert low.shape == plain.shape and not torch.equal(plain, low)


def test_samplers_come_from_one_registry():
    from localdiffusion.engine.updates import UPDATE_RULES, make_update
    from localdiffusion.options import OPTIONS

    assert OPTIONS["sampler"].choices == tuple(UPDATE_RULES)
    s = NoiseSchedule(20)
    for name in UPDATE_RULES:  # every rule's stated coefficients reproduce its deterministic step
        rule = make_update(name, 0.0)
        x, x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.randn(1, 1, 4, 4, dtype=torch.float64)
        c_x0, c_xt, sigma = rule.coefficients(s, 12, 7)
        assert sigma == 0.0
        torch.testing.assert_close(rule(s, x, x0, 12, 7, None), c_x0 * x0 + c_xt * x)
