import numpy as np
import pytest
import torch

from localdiffusion.engine.assemble import sample_slices
from localdiffusion.engine.loop import SliceNoise, Step
from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.methods.local_diffusion import LocalDiffusion, LocalDiffusionConfig
from localdiffusion.ood.volume import OodMap
from sampling_helpers import branch_weight, local_diffusion_slices
from localdiffusion.network.denoiser import Prediction


class ClosedForm:
    """x0_hat = the condition (in [-1, 1]): a model whose prediction per region is known."""

    def __init__(self, T=20):
        self.schedule = NoiseSchedule(T)
        self.calls = []

    def __call__(self, x_t, cond, t):
        self.calls.append(len(x_t))
        return cond.clone()

    def predict(self, x_t, cond, t):
        return Prediction(self(x_t, cond, t))


def _inputs(B=2, H=8, W=8):
    cond = torch.rand(B, 1, H, W) * 0.5 + 0.25
    prob = torch.zeros(B, 1, H, W)
    prob[0, :, 2:5, 2:5] = 1.0
    prob[0, :, 5, 5] = 0.6  # below the hard threshold
    return cond, prob


def test_branch_conditions_hard_and_soft():
    cond, prob = _inputs()
    hard = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(mask_mode="hard", ind_floor=0.0))
    soft = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "soft"), LocalDiffusionConfig(mask_mode="soft", ind_floor=0.0))
    assert hard.weight[0, 0, 5, 5] == 0 and soft.weight[0, 0, 5, 5] == pytest.approx(0.6)
    torch.testing.assert_close((hard.cond_ood + 1) / 2, cond * hard.weight)
    torch.testing.assert_close((soft.cond_ind + 1) / 2, cond * (1 - soft.weight))
    floor = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(ind_floor=0.95))
    torch.testing.assert_close((floor.cond_ind + 1) / 2, cond * torch.clamp(1 - floor.weight, min=0.95))
    assert hard.branching.tolist() == [True, False]


def test_denoise_masks_ood_branch_and_uses_one_batched_call():
    cond, prob = _inputs()
    model = ClosedForm()
    ld = LocalDiffusion(model, cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(ind_floor=0.0))
    x0 = ld.denoise(torch.zeros(2, 2, 8, 8), 15)
    assert model.calls == [3]  # two branches of slice 0 + one input for slice 1
    w = ld.weight[0]
    torch.testing.assert_close(x0[0, 0:1], w * ld.cond_ood[0] + (1 - w) * -1.0)  # background outside
    torch.testing.assert_close(x0[0, 1:2], ld.cond_ind[0])
    torch.testing.assert_close(x0[1, 0:1], ld.cond[1])
    torch.testing.assert_close(x0[1, 1:2], ld.cond[1])


def test_fusion_is_the_s_composite():
    cond, prob = _inputs()
    ld = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(t_intermediate=5))
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
    shared = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(independent_noise=False))
    indep = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(independent_noise=True))
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
        LocalDiffusion(ClosedForm(20), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(t_intermediate=20))


@pytest.mark.slow
def test_benchmark_runs_every_row_on_a_tiny_cohort_and_caches_every_cell(cohort, tmp_path):
    from research.bench.figures import montage_figure
    from research.bench.matrix import MemoryCache, run_benchmark
    from research.bench.reference import HealthyLookup
    from research.bench.report import differences_table, markdown_table
    from localdiffusion.network.denoiser import Denoiser, DiffusionConfig
    from localdiffusion.network.segmenter import SegConfig, Segmenter
    from localdiffusion.volume.cohort import load_slice_set

    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8, num_train_timesteps=10,
                                   spacing_mm=4.0, in_plane=(48, 56))).eval()
    seg = Segmenter(SegConfig(channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)).eval()
    healthy = load_slice_set(cohort, "train", ("t1", "flair"), kind="healthy", spacing=4.0, in_plane=(48, 56))
    lookup = HealthyLookup.fit(healthy.images["t1"], healthy.images["flair"], healthy.brain)
    cache = MemoryCache()
    result = run_benchmark(den, cohort, seg, lookup, split="test", source_segmenter=seg, seeds=(0, 1), progress=False,
                           max_slices=2, cache=cache)
    assert set(result["rows"]) == {"true target (upper bound)", "local healthy mapping (lookup)", "DDIM-25",
                                   "DDPM-100", "LD oracle mask, IND floor 0.95", "LD oracle mask, IND floor 0",
                                   "LD unet mask, IND floor 0.95", "LD unet mask, IND floor 0"}
    assert 0 < result["evaluated_slices"] <= 2 * result["cases"]
    assert len(result["cells"]["DDIM-25"]) == 2 * result["cases"]  # every (case, seed)
    assert len(result["cells"]["DDPM-100"]) == result["cases"]  # the first seed only
    for metrics in result["rows"].values():
        assert 0 <= metrics["tumour_dice"][0] <= 1 and 0 <= metrics["healing_rate"][0] <= 1
    truth = result["rows"]["true target (upper bound)"]
    assert truth["psnr_ood"][0] > 60 and truth["mean_oedema"][0] == truth["truth_mean_oedema"][0]
    lookup_row = result["cells"]["local healthy mapping (lookup)"]
    assert all(c["local_error"] == 0 for c in lookup_row)  # the lookup is its own local mapping
    diff = result["differences"]["LD oracle mask, IND floor 0"]["healing_rate"]
    assert diff["cases"] == result["cases"] == 1 and not diff["claim"]  # one case: no interval, no claim
    assert result["ld_records"]["LD oracle mask, IND floor 0.95"]["branched"] > 0
    assert "upper bound" in markdown_table(result) and "DDIM-25" in differences_table(result)
    assert montage_figure(result) is not None
    again = run_benchmark(den, cohort, seg, lookup, split="test", source_segmenter=seg, seeds=(0, 1), progress=False,
                          max_slices=2, cache=cache)
    assert again["computed_cells"] == 0 and again["rows"] == result["rows"]  # a re-run computes nothing
    # a cohort with the same case ids but other images (the lesion families scanned with the other T1 kind) is
    # not served the first cohort's cells
    import shutil

    import nibabel as nib

    other = tmp_path / "other_kind"
    shutil.copytree(cohort, other)
    for t1 in other.rglob("*_t1.nii.gz"):
        image = nib.load(t1)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32) * 0.7, image.affine), t1)
    elsewhere = run_benchmark(den, other, seg, lookup, split="test", source_segmenter=seg, seeds=(0, 1), progress=False,
                              max_slices=2, cache=cache)
    assert elsewhere["computed_cells"] == again["computed_cells"] + sum(len(c) for c in result["cells"].values())


def test_paired_bootstrap_claims_only_when_the_interval_excludes_zero():
    from research.bench.scoring import paired_bootstrap

    cases = [f"c{i}" for i in range(20)]
    base = {c: 0.5 for c in cases}
    shifted = {c: 0.6 + 0.01 * (i % 3) for i, c in enumerate(cases)}
    noisy = {c: 0.5 + (0.1 if i % 2 else -0.1) for i, c in enumerate(cases)}
    up = paired_bootstrap(shifted, base)
    assert up["claim"] and up["low"] > 0 and up["mean"] == pytest.approx(0.61 - 0.5, abs=0.01)
    assert not paired_bootstrap(noisy, base)["claim"]
    assert not paired_bootstrap(base, base)["claim"]


@pytest.mark.slow
def test_benchmark_command_writes_json_png_and_the_markdown_section(cohort, tiny_models, tmp_path):
    import json

    from research.hallucination.__main__ import main

    md = tmp_path / "docs" / "BENCHMARK.md"
    md.parent.mkdir()
    md.write_text("# Benchmarks\n\nkept above\n")
    args = ["--data", str(cohort), "--models", str(tiny_models), "--out-dir", str(tmp_path / "docs" / "b"),
            "--markdown", str(md), "--max-cases", "1", "--max-slices", "1", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    for direction in ("t1_to_flair", "flair_to_t1"):
        result = json.loads((tmp_path / "docs" / "b" / f"hallucination_{direction}.json").read_text())
        assert "LD patchcore mask, IND floor 0.95" in result["rows"] and result["gate"] is False  # gate off by default
        assert (tmp_path / "docs" / "b" / f"hallucination_{direction}.png").stat().st_size > 1000
    text = md.read_text()
    assert "kept above" in text and "### T1 -> FLAIR" in text and "### FLAIR -> T1" in text
    assert "paper (BraTS)" in text and "](b/hallucination_t1_to_flair.png)" in text and "bootstrap" in text
    assert len(list((tmp_path / "cache").glob("*.json"))) > 0
    main(args + ["--directions", "flair_to_t1"])
    assert md.read_text().count("hallucination-benchmark:start") == 1  # the section is replaced, not appended


def test_ood_branch_runs_on_a_crop_with_the_same_result_for_a_local_model():
    cond = torch.rand(3, 1, 32, 40) * 0.5 + 0.25
    prob = torch.zeros(3, 1, 32, 40)
    prob[0, :, 10:14, 20:23] = 1.0
    prob[1, :, 12:15, 24:26] = 1.0
    full_model, crop_model = ClosedForm(), ClosedForm()
    full = LocalDiffusion(full_model, cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(crop_margin=None))
    crop = LocalDiffusion(crop_model, cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(crop_margin=2))
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
    rows, cols = LocalDiffusion(den, torch.rand(2, 1, 48, 56), branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(crop_margin=3)).crop
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
    hard = branch_weight_volume(OodMap(prob, 0.99), LocalDiffusionConfig(), brain)
    assert hard[:, :, 0].sum() >= 30 and hard[:, :, 1].sum() == 0 and hard[:, :, 2].sum() == 0
    raw = branch_weight_volume(OodMap(prob, 0.99), LocalDiffusionConfig(min_component=0), brain)
    assert raw[:, :, 1].sum() == 3
    soft = branch_weight_volume(OodMap(prob * 0.9 + 0.05, 0.9), LocalDiffusionConfig(mask_mode="soft"), brain)
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


def test_soft_mask_equal_to_a_hard_mask_gives_the_hard_result():
    cond, prob = _inputs()
    binary = (prob >= 0.99).float()  # a soft mask whose values are already 0 or 1
    hard, _ = local_diffusion_slices(ClosedForm(), cond, binary, [0, 1], LocalDiffusionConfig(mask_mode="hard"), steps=10)
    soft, _ = local_diffusion_slices(ClosedForm(), cond, binary, [0, 1], LocalDiffusionConfig(mask_mode="soft"), steps=10)
    assert torch.equal(hard, soft)


def test_soft_fusion_selects_once_so_the_mask_edge_stays_between_the_branches():
    """Eq. 8: the fused x0 is w x0_ood + (1 - w) x0_ind. Blending the OOD branch with the background first
    (the old double composite) put the soft edge below both branches: a dark ring."""
    cond = torch.full((1, 1, 16, 16), 0.6)
    prob = torch.zeros(1, 1, 16, 16)
    prob[0, 0, 4:12, 4:12] = 1.0
    prob = torch.nn.functional.avg_pool2d(prob, 5, stride=1, padding=2)  # a soft edge
    ld = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "soft"), LocalDiffusionConfig(mask_mode="soft", ind_floor=0.0, t_intermediate=5))
    x0 = ld.denoise(torch.zeros(1, 2, 16, 16), 5)
    _, fused = ld.hook(Step(0, 5, 3, torch.zeros(1, 2, 16, 16), x0, 3))
    low, high = x0.amin(1, keepdim=True), x0.amax(1, keepdim=True)
    edge = (prob > 0) & (prob < 1)
    assert edge.any()
    assert (fused[:, 0:1][edge] >= low[edge] - 1e-6).all() and (fused[:, 0:1][edge] <= high[edge] + 1e-6).all()


def test_dilated_ood_branch_sees_a_ring_that_fusion_discards():
    cond, prob = _inputs()
    ld = LocalDiffusion(ClosedForm(), cond, branch_weight(prob, 0.99, "hard"), LocalDiffusionConfig(ind_floor=0.0, ood_dilation=1, t_intermediate=5))
    ring = (ld.branch_weight > 0) & (ld.weight == 0)
    assert ring[0].sum() == 5 * 5 - 3 * 3  # the 3 x 3 region grown by one pixel
    torch.testing.assert_close((ld.cond_ood + 1)[ring] / 2, cond[ring])  # the OOD branch sees the ring
    x0 = ld.denoise(torch.zeros(2, 2, 8, 8), 5)
    _, fused = ld.hook(Step(0, 5, 3, torch.zeros(2, 2, 8, 8), x0, 3))
    torch.testing.assert_close(fused[:, 0:1][ring], x0[:, 1:2][ring])  # ... and fusion takes the ring from IND


def test_gate_judges_at_least_once_and_the_plan_records_it():
    """With a gate, fusion starts no later than the second-to-last step, whatever t_intermediate says."""
    cond, prob = _inputs()
    verdicts = []

    def gate(image, mask):
        verdicts.append(len(image))
        return torch.ones(len(image), dtype=torch.bool)  # always "healed": re-branch while allowed

    out, ld = local_diffusion_slices(ClosedForm(), cond, prob, [0, 1], LocalDiffusionConfig(t_intermediate=0), gate,
                                     steps=10)
    assert verdicts == [1] and ld.judged.tolist() == [1, 0] and ld.rebranches.tolist() == [1, 0]
    assert ld.fused_at.tolist() == [0, -1]  # slice 0 fused at the last step, slice 1 never branched


def test_healing_rate_reads_1_for_a_healed_lesion_and_0_for_the_local_mapping():
    """The metric on its references: a lesion painted with the surrounding tissue is healed, the local
    healthy mapping itself never is."""
    import numpy as np

    from research.bench.scoring import row_metrics

    class NoTumour:
        def tumour(self, slices):
            return torch.zeros(slices.shape[0], *slices.shape[2:], dtype=torch.bool)

    rng = np.random.default_rng(0)
    brain = np.zeros((40, 40, 3), bool)
    brain[5:35, 5:35] = True
    labels = np.zeros((40, 40, 3), np.uint8)
    labels[15:25, 15:25, 1] = 2
    labels[18:22, 18:22, 1] = 1
    truth = np.where(brain, 0.5 + 0.02 * rng.standard_normal(brain.shape), 0).astype(np.float32)
    truth[labels > 0] = 0.9
    local = np.where(brain, 0.3, 0.0).astype(np.float32)  # what the lesion's source intensity maps to when healthy
    healed = truth.copy()
    healed[labels > 0] = truth[5:35, 5:35, 1][labels[5:35, 5:35, 1] == 0].mean()
    ks = np.array([1])
    assert row_metrics(healed, truth, brain, labels, ks, NoTumour(), local)["healing_rate"] > 0.99
    as_local = row_metrics(local, truth, brain, labels, ks, NoTumour(), local)
    assert as_local["healing_rate"] == 0 and as_local["local_error"] == 0
    kept = row_metrics(truth, truth, brain, labels, ks, NoTumour(), local)
    assert kept["mean_oedema"] == pytest.approx(0.9) and kept["truth_edge_mean"] == pytest.approx(0.9)


def test_robust_mask_rows_are_paired_against_the_banks_mask_rows():
    from research.bench.matrix import ROBUST_MASK, benchmark_rows

    plain = benchmark_rows(10)
    rows = benchmark_rows(10, with_robust=True)
    assert not any(row.mask == ROBUST_MASK for row in plain.values())
    for floor in ("0.95", "0"):
        row = rows[f"LD robust patchcore mask, IND floor {floor}"]
        assert row.mask == ROBUST_MASK and row.compare_to == f"LD patchcore mask, IND floor {floor}"
        assert row.compare_to in rows


def test_the_baseline_copies_the_batches_local_diffusion_sampled_plainly_bit_for_bit(tiny_models, cohort):
    """Where Local Diffusion never branched (whole batches with an empty mask), the baseline is the plain
    process with the same seeds and batches: it copies those samples, and the result is the baseline
    computed from scratch, bit for bit, with fewer network calls."""
    from localdiffusion.data.readers import read_case
    from localdiffusion.methods.local_diffusion import LocalDiffusionPlan
    from localdiffusion.network.denoiser import load_denoiser
    from localdiffusion.volume.batching import SampledSlices, batch_sampler, translate_prepared
    from localdiffusion.volume.cohort import cases_in_split
    from localdiffusion.volume.grid import prepare_case

    den = load_denoiser(tiny_models / "t1_to_flair", autocast=False)
    prepared = prepare_case(read_case(cases_in_split(cohort, "test", "tumour")[0], ("t1", "flair")),
                            den.config.spacing_mm, den.config.in_plane)
    ks = prepared.brain_slices()
    ood = np.zeros(prepared.grid.shape, np.float32)
    ood[:, :, ks[len(ks) // 2]][prepared.brain[:, :, ks[len(ks) // 2]]] = 1.0  # one slice out of distribution
    plan = LocalDiffusionPlan(OodMap(ood, 0.5), LocalDiffusionConfig(min_component=0))
    common = dict(steps=3, seed=4, batch_size=2, progress=False)
    raw = []
    translate_prepared(den, prepared, sample_batch=batch_sampler("ddim", 3, method=plan), on_raw=raw.append, **common)
    plain = plan.plain_slices()
    assert 0 < len(plain) < len(ks) and ks[len(ks) // 2] not in plain

    calls = []
    counted = batch_sampler("ddim", 3)

    def counting(*args, **kwargs):
        calls.append(1)
        return counted(*args, **kwargs)

    fresh = translate_prepared(den, prepared, **common)
    reused = translate_prepared(den, prepared, sample_batch=counting, reuse=SampledSlices(raw[0], plain), **common)
    np.testing.assert_array_equal(reused, fresh)
    n_batches = -(-len(ks) // 2)
    assert len(calls) < n_batches  # the never-branched batches were copied, not sampled


def test_a_mask_level_shrinks_the_halo_to_the_lesion():
    from scipy import ndimage

    from localdiffusion.methods.local_diffusion import branch_weight_volume
    from localdiffusion.ood.volume import OodMap

    brain = np.ones((48, 48, 12), bool)
    lesion = np.zeros_like(brain)
    lesion[18:28, 18:28, 3:9] = True
    # a score peaking on the lesion and spilling into its neighbourhood, as a blurred patch distance does
    score = ndimage.gaussian_filter(lesion.astype(np.float32) * 10.0, 2.5)
    probability = np.clip(score / score.max() * 4.0, 0.0, 1.0)  # the threshold 0.99 takes the whole halo
    halo = branch_weight_volume(OodMap(probability, 0.99), LocalDiffusionConfig(), brain) > 0.5
    tight = branch_weight_volume(OodMap(probability, 0.99, score, 0.25), LocalDiffusionConfig(), brain) > 0.5
    dice = lambda m: 2 * (m & lesion).sum() / (m.sum() + lesion.sum())  # noqa: E731
    assert halo.sum() > 1.3 * lesion.sum() and tight.sum() < halo.sum()
    assert dice(tight) > dice(halo) + 0.1 and (tight & lesion).sum() > 0.8 * lesion.sum()
    no_score = branch_weight_volume(OodMap(probability, 0.99, None, 0.25), LocalDiffusionConfig(), brain) > 0.5
    np.testing.assert_array_equal(no_score, halo)  # a map without its score keeps the thresholded mask
