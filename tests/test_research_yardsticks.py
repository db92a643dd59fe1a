"""The research yardsticks behind the sampling-steps choice and the OOD-mask study, checked on references."""

import numpy as np

from localdiffusion.methods.local_diffusion import LocalDiffusionConfig
from research.bench.matrix import benchmark_rows, cell_key, level_rows, step_rows
from localdiffusion.ood.postprocess import level_set
from research.ood_masks.masks import mask_figures
from research.steps.risk import case_figures


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_step_rows_pair_each_row_with_its_ddim25_namesake_and_share_its_cache_cells():
    rows = step_rows(100, 5, 25, with_robust=True)
    assert rows["DDIM-5"].steps == 5 and rows["DDIM-5"].compare_to == "DDIM-25" and rows["DDIM-25"].compare_to is None
    name = "LD robust patchcore mask, IND floor 0.95"
    assert rows[f"{name}, DDIM-5"].compare_to == f"{name}, DDIM-25" and rows[f"{name}, DDIM-5"].ind_floor == 0.95
    # the pairing changes no cell: the DDIM-25 row of the study and of the benchmark are one cached cell
    config = LocalDiffusionConfig()
    plain = benchmark_rows(100, with_unet=False, with_robust=True)
    assert cell_key(rows["DDIM-25"].key(config, False)) == cell_key(plain["DDIM-25"].key(config, False))
    assert cell_key(rows[f"{name}, DDIM-25"].key(config, False)) == cell_key(plain[name].key(config, False))


def test_the_risk_figures_score_an_oracle_and_a_constant_risk_as_they_should():
    shape = (20, 20, 10)
    brain = _ball(shape, (10, 10, 5), 9)
    error = np.where(_ball(shape, (6, 10, 5), 3), 1.0, 0.1).astype(np.float32)
    event = (error > 0.5) & brain
    oracle = case_figures({"brain": brain, "error": error, "risk": event.astype(np.float32)}, 0.5)
    assert oracle["auroc"] == 1.0 and oracle["event_flagged"] == 1.0 and oracle["nonevent_flagged"] == 0.0
    constant = case_figures({"brain": brain, "error": error, "risk": np.full(shape, 0.5, np.float32)}, 0.5)
    assert constant["auroc"] == 0.5 and constant["event_flagged"] == 0.0 and constant["brain_flagged"] == 0.0


def test_the_mask_figures_tell_a_halo_from_the_lesion_and_a_level_set_tightens_it():
    shape = (40, 40, 20)
    brain = _ball(shape, (20, 20, 10), 19)
    seg = np.where(_ball(shape, (20, 20, 10), 4), 2, 0).astype(np.uint8)
    exact = mask_figures(seg > 0, seg, brain)
    assert exact["dice"] == 1.0 and exact["healthy_in_mask"] == 0.0 and exact["covers_oedema"] == 1.0
    halo = _ball(shape, (20, 20, 10), 8)
    loose = mask_figures(halo, seg, brain)
    assert loose["volume_ratio"] > 5 and loose["dice"] < 0.5 and loose["healthy_in_mask"] > 0
    # a score peaked on the lesion: the level set inside the halo comes back to about the lesion
    distance = np.sqrt(sum((g - 20.0 if i < 2 else g - 10.0) ** 2 for i, g in enumerate(np.indices(shape))))
    score = np.exp(-((distance / 6.0) ** 2))
    tight = mask_figures(level_set(halo, score, 0.5), seg, brain)
    assert tight["dice"] > 0.8 and tight["volume_ratio"] < loose["volume_ratio"]


def test_level_rows_branch_on_the_tightened_robust_mask_paired_against_the_robust_mask():
    rows = level_rows(100, [0.25, 0.5])
    row = rows["LD robust patchcore level 0.5 mask, IND floor 0.95"]
    assert row.mask == "robust patchcore level 0.5" and row.steps == 25 and row.ind_floor == 0.95
    assert row.compare_to == "LD robust patchcore mask, IND floor 0.95" and len(rows) == 2


def test_the_lesion_yardstick_on_its_references():
    """A translation equal to the truth misrepresents no lesion; one that erases every lesion misrepresents
    every lesion; a risk that is 1 on the lesions flags them all and no healthy voxel, a zero risk none; a lesion
    below 0.1 ml is not counted."""
    from research.lesion_risk.yardstick import error_map, error_threshold, score_case

    rng = np.random.default_rng(0)
    shape = (48, 48, 32)
    brain = _ball(shape, (24, 24, 16), 20)
    truth = np.where(brain, 100 + rng.normal(0, 2, shape), 0).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[_ball(shape, (16, 24, 16), 4)] = 2
    seg[_ball(shape, (32, 24, 16), 3)] = 1
    seg[30, 10, 16] = 1  # one voxel of 1 mm3: below 0.1 ml
    truth[seg > 0] = 190
    healthy_case = np.where(brain, 100 + rng.normal(0, 2, shape), 0).astype(np.float32)
    level = error_threshold([error_map(healthy_case + rng.normal(0, 2, shape), healthy_case, brain,
                                       np.zeros(shape, np.uint8), 1.0)[brain]])
    erased = np.where(seg > 0, 100, truth).astype(np.float32)
    on_lesions = (seg > 0).astype(np.float32)
    same = score_case(truth, truth, on_lesions, brain, seg, 1.0, level)
    assert same.lesions == 2 and same.misrepresented == 0 and same.tumour_errors == 0
    caught = score_case(erased, truth, on_lesions, brain, seg, 1.0, level)
    assert caught.misrepresented == caught.flagged == 2 and caught.tumour_errors_flagged == caught.tumour_errors > 0
    assert caught.healthy_flagged == 0 and caught.healthy == (brain & (seg == 0)).sum()
    missed = score_case(erased, truth, np.zeros(shape, np.float32), brain, seg, 1.0, level)
    assert missed.misrepresented == 2 and missed.flagged == 0 and missed.tumour_errors_flagged == 0
    # the paired comparison of two maps on the same subjects: +1 for the oracle against the silent map, 0 (and a
    # zero interval) for a map against itself
    from research.lesion_risk.score import paired_difference

    better = paired_difference([caught, caught, caught], [missed, missed, missed])
    assert better["lesions_flagged"]["difference"] == 1 and better["lesions_flagged"]["ci"] == [1, 1]
    assert better["tumour_errors_flagged"]["difference"] == 1 and better["healthy_flagged"]["difference"] == 0
    same_map = paired_difference([caught, missed], [caught, missed])
    assert all(v["difference"] == 0 and v["ci"] == [0, 0] for v in same_map.values())


def test_the_harm_columns_read_zero_on_the_truth_and_worse_for_a_flat_patch_pasted_in_the_mask():
    from scipy import ndimage

    from research.bench.matrix import shipped_rows
    from research.bench.scoring import mask_harm

    rng = np.random.default_rng(0)
    shape, ks = (40, 40, 6), np.array([1, 3, 4])
    brain = _ball(shape, (20, 20, 3), 18)
    lesion = _ball(shape, (20, 20, 3), 4)
    labels = np.where(lesion, 2, 0)
    mask = _ball(shape, (20, 20, 3), 10)  # a halo three times the lesion's radius
    truth = np.where(brain, 0.5 + 0.1 * np.sin(np.indices(shape)[0] / 3.0), 0.0) + rng.normal(0, 0.02, shape)
    smooth = ndimage.gaussian_filter(truth, (1, 1, 0))  # a translation: the truth without its noise
    flat = np.where(mask & ~lesion, 0.2, smooth)  # the halo painted as one flat dark patch
    zero = mask_harm(truth, truth, brain, labels, ks, mask)
    assert zero == {"halo_error": 0.0, "mask_edge_excess": 0.0}
    good, bad = mask_harm(smooth, truth, brain, labels, ks, mask), mask_harm(flat, truth, brain, labels, ks, mask)
    assert bad["halo_error"] > 5 * good["halo_error"] and bad["mask_edge_excess"] > good["mask_edge_excess"] + 0.05
    assert np.isnan(mask_harm(smooth, truth, brain, labels, ks, None)["halo_error"])
    rows = shipped_rows(100, 5)
    assert rows["shipped LD, DDIM-5"].compare_to == "shipped DDIM-5" and rows["shipped LD, DDIM-5"].ind_floor == 0.95
    assert rows["shipped DDIM-5"].steps == 5 and rows["shipped LD, DDIM-5"].mask == "robust patchcore"


def test_a_refit_reads_the_healthy_brain_only_so_its_level_holds_next_to_a_lesion():
    """The candidates' CDFs are fitted on brain voxels outside the lesion labels: on a tumour scan whose lesion is
    5% of the brain, a level fitted on that scan flags about 1% of its healthy brain (a level fitted on every brain
    voxel would sit inside the lesion's values and flag almost none), and the whole lesion."""
    from localdiffusion.detectors.risk import RiskCalibration
    from research.lesion_risk.score import refit, risk_of

    rng = np.random.default_rng(1)
    shape = (40, 40, 24)
    brain = _ball(shape, (20, 20, 12), 15)
    seg = np.zeros(shape, np.uint8)
    seg[_ball(shape, (14, 20, 12), 5.5)] = 2
    assert 0.03 < (seg > 0).sum() / brain.sum() < 0.08
    tumour = np.where(seg > 0, 0.9 + 0.1 * rng.random(shape), 0.5 * rng.random(shape)).astype(np.float32)
    case = {"brain": brain, "seg": seg, "tumour": tumour, "name": "x_ld0_glioma_val_t0000"}
    shipped = RiskCalibration.fit({"tumour": rng.random(1000)}, 0.01, smoothing=2.0)
    fitted = refit([case], shipped, "max", False, "raw")
    risk = risk_of(case, "tumour-raw-refit-tc", {"tumour-raw-refit-tc": fitted}, shipped)
    healthy = brain & (seg == 0)
    assert 0.005 < (risk[healthy] >= 0.99).mean() < 0.02
    assert (risk[seg > 0] >= 0.99).all()


def test_a_calibration_file_reads_the_lesion_unets_named_for_it(tmp_path):
    """``score --calibration-segmenter NAME:wm_lesion=DIR``: a file's white-matter detector reads that U-Net's map,
    another file's the shipped one; a detector the product does not know is refused."""
    from pathlib import Path

    import pytest

    from localdiffusion.detectors.risk import RiskCalibration
    from research.lesion_risk import score

    rng = np.random.default_rng(2)
    shape = (12, 12, 8)
    brain = np.ones(shape, bool)
    healthy = {"tumour": rng.random(5000).astype(np.float32), "wm_lesion": rng.random(5000).astype(np.float32)}
    calibration = RiskCalibration.fit(healthy, weights={"tumour": 0.5, "wm_lesion": 0.5})
    candidate = Path("runs/wm_candidate")
    quiet, loud = np.zeros(shape, np.float32), np.ones(shape, np.float32)
    # the maps source_tumour would compute, already in the case (it computes each once per case and U-Net)
    case = {"brain": brain, "tumour": quiet, "wm_lesion": quiet, f"wm_lesion@{candidate}": loud}
    mapping = score.parse_calibration_segmenters(["new:wm_lesion=runs/wm_candidate", "old=runs/pooled"])
    assert mapping == {("new", "wm_lesion"): candidate, ("old", "tumour"): Path("runs/pooled")}
    score.CALIBRATION_SEGMENTER.update({("new", "wm_lesion"): candidate})
    try:
        files = {"new": calibration, "same": calibration}
        assert (score.risk_of(case, "new", files, calibration) >= 0.99).all()
        assert not (score.risk_of(case, "same", files, calibration) >= 0.99).any()
    finally:
        score.CALIBRATION_SEGMENTER.clear()
    with pytest.raises(SystemExit, match="DETECTOR one of"):
        score.parse_calibration_segmenters(["new:cycle=runs/x"])
