import json

import nibabel as nib
import numpy as np
import pytest

from localdiffusion.errors import InputError
from localdiffusion.phantom import physics
from localdiffusion.phantom.dataset import MANIFEST_JSON, SPLIT_BASE, case_seed, split_counts, write_cohort
from localdiffusion.phantom.generate import ENHANCING, NECROSIS, OEDEMA, generate_case
from localdiffusion.phantom.physics import TISSUE_ORDER

WM, GM, CSF = (TISSUE_ORDER.index(t) + 1 for t in ("wm", "gm", "csf"))


def tissue_mean(case, modality, tissue):
    return float(case.images[modality][case.pure_tissue == tissue].mean())


def test_flair_inversion_time_nulls_csf():
    tr = 9000.0
    ti = physics.csf_null_inversion_time(tr)
    assert 2400 < ti < 2700
    flair = physics.Sequence("inversion_recovery", tr=tr, te=120.0, ti=ti)
    assert flair.signal(physics.HEALTHY_TISSUES["csf"]) < 1e-9
    assert flair.signal(physics.HEALTHY_TISSUES["wm"]) > 0.05


def test_spin_echo_values_match_design_table():
    se_t1 = physics.Sequence("spin_echo", tr=500.0, te=10.0)
    got = {k: round(se_t1.signal(v), 3) for k, v in physics.HEALTHY_TISSUES.items()}
    assert got == {"wm": 0.228, "gm": 0.197, "csf": 0.102}


def test_csf_nulled_on_flair(healthy_case):
    assert tissue_mean(healthy_case, "flair", CSF) < 0.35 * tissue_mean(healthy_case, "flair", WM)


def test_t1_contrast_wm_gm_csf(healthy_case):
    wm, gm, csf = (tissue_mean(healthy_case, "t1", t) for t in (WM, GM, CSF))
    assert wm > gm > csf


def test_oedema_bright_on_flair_but_not_on_t1(tumour_case):
    oedema = tumour_case.seg == OEDEMA
    assert oedema.sum() > 20

    def ratio(modality):
        return tumour_case.images[modality][oedema].mean() / tissue_mean(tumour_case, modality, WM)

    flair_ratio, t1_ratio = ratio("flair"), ratio("t1")
    assert flair_ratio > 1.3
    assert t1_ratio < flair_ratio


def test_labels_inside_brain_and_brats_convention(tumour_case, healthy_case):
    seg = tumour_case.seg
    assert set(np.unique(seg)) <= {0, NECROSIS, OEDEMA, ENHANCING}
    assert (seg > 0).any()
    assert not np.any((seg > 0) & (tumour_case.brain_mask == 0))
    assert not healthy_case.seg.any()
    for image in tumour_case.images.values():
        assert not np.any(image[tumour_case.brain_mask == 0])


def test_lesion_sizes_in_range(tumour_case):
    for lesion in tumour_case.params["lesions"]:
        diameter_cm = 2 * (lesion["core_radius_mm"] + lesion["oedema_mm"]) / 10
        assert 1.0 <= diameter_cm <= 6.0


def test_deterministic_by_seed():
    a = generate_case(11, tumour=True, spacing=4.0)
    b = generate_case(11, tumour=True, spacing=4.0)
    c = generate_case(12, tumour=True, spacing=4.0)
    for m in a.images:
        np.testing.assert_array_equal(a.images[m], b.images[m])
        assert not np.array_equal(a.images[m], c.images[m])
    np.testing.assert_array_equal(a.seg, b.seg)


def test_subjects_differ_in_pose_and_noise():
    a = generate_case(21, tumour=False, spacing=4.0)
    b = generate_case(22, tumour=False, spacing=4.0)
    assert a.params["pose"] != b.params["pose"]
    assert a.params["snr"] != b.params["snr"]
    assert all(15 <= s <= 40 for s in a.params["snr"].values())


def test_split_seed_ranges_are_disjoint():
    seeds = {s: {case_seed(seed, s, k, i) for seed in (0, 4999) for k in ("healthy", "tumour") for i in (0, 9999)}
             for s in SPLIT_BASE}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"]) and not (seeds["train"] & seeds["test"])
    with pytest.raises(ValueError):
        case_seed(5000, "train", "healthy", 0)
    assert split_counts(100) == {"train": 70, "val": 15, "test": 15}
    assert split_counts(3) == {"train": 1, "val": 1, "test": 1}


def test_cohort_layout_manifest_and_preview(cohort):
    cases = json.loads((cohort / MANIFEST_JSON).read_text(encoding="utf-8"))["cases"]
    assert len(cases) == 6
    assert {c["split"] for c in cases} == {"train", "val", "test"}
    for c in cases:
        folder = cohort / c["case_id"]
        for suffix in ("t1", "t2", "flair", "seg", "mask"):
            assert (folder / f"{c['case_id']}_{suffix}.nii.gz").exists()
        assert (folder / f"{c['case_id']}_preview.png").stat().st_size > 10_000
        assert (c["kind"] == "tumour") == (c["tumour_ml"] > 0)
    csv_lines = (cohort / "manifest.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 7
    assert json.loads((cohort / "manifest.json").read_text())["generator"] == "localdiffusion.phantom"


def test_noise_free_images_differ_from_the_scan_by_the_rician_noise_only(healthy_case):
    import numpy as np

    mask = healthy_case.brain_mask > 0
    for m in ("t1", "flair"):
        clean, noisy = healthy_case.noise_free[m][mask], healthy_case.images[m][mask].astype(np.float32)
        snr = healthy_case.params["snr"][m]
        residual = noisy - clean
        # Rician noise of sigma = mean / SNR (before gain) around the clean signal; rounding to int16 adds < 0.3
        sigma = clean.mean() / snr
        assert 0.8 * sigma < residual.std() < 1.25 * sigma
        assert abs(residual.mean()) < 0.2 * sigma + 0.5
        assert np.corrcoef(clean, noisy)[0, 1] > 0.9


def test_acquisition_shifts_scan_the_same_subject_differently(tmp_path):
    from localdiffusion.phantom.physics import ACQUISITION_SHIFTS

    base = generate_case(31, tumour=True, spacing=4.0)
    assert generate_case(31, tumour=True, spacing=4.0, acquisition=ACQUISITION_SHIFTS["training"]).params == base.params
    for name in ("spin_echo", "long_ti", "strong_bias", "low_snr"):
        shifted = generate_case(31, tumour=True, spacing=4.0, acquisition=ACQUISITION_SHIFTS[name])
        np.testing.assert_array_equal(shifted.seg, base.seg)  # same anatomy and lesions
        assert not np.array_equal(shifted.images["t1"], base.images["t1"])
    low = generate_case(31, tumour=True, spacing=4.0, acquisition=ACQUISITION_SHIFTS["low_snr"])
    assert max(low.params["snr"].values()) <= 10 and tuple(low.params["acquisition"]["snr"]) == (6.0, 10.0)
    with pytest.raises(InputError, match="unknown acquisition"):
        write_cohort(tmp_path, 1, 0, acquisition="nonsense")


@pytest.mark.parametrize("family", ["glioma", "metastasis", "ms", "cavity"])
def test_test_families_draw_their_own_lesions_and_tissues(family):
    from localdiffusion.phantom.families import HEALTHY_RANGES

    case = generate_case(7, tumour=True, spacing=2.0, family=family)
    seg, brain = case.seg, case.brain_mask > 0
    labels = set(np.unique(seg[seg > 0]).tolist())
    assert labels and labels <= {NECROSIS, OEDEMA, ENHANCING} and not (seg[~brain] > 0).any()
    expected = {"glioma": {NECROSIS, OEDEMA, ENHANCING}, "ms": {OEDEMA}, "cavity": {NECROSIS, OEDEMA}}
    if family in expected:
        assert expected[family] <= labels
    if family == "ms":
        assert labels == {OEDEMA} and len(case.params["lesions"]) >= 3
    field = case.params["field_strength_t"]
    assert field in (1.5, 3.0) and case.params["family"] == family
    for tissue, (t1, t2, pd) in HEALTHY_RANGES[field].items():  # healthy tissues drawn, not the training's fixed values
        assert t1[0] <= case.params["tissues"][tissue]["t1"] <= t1[1]
    t1 = case.images["t1"].astype(float)
    wm = np.median(t1[case.pure_tissue == WM])
    if family in ("glioma", "cavity"):  # necrosis / cavity fluid is CSF-like on T1: far below white matter
        assert np.median(t1[seg == NECROSIS]) < 0.5 * wm
    flair = case.images["flair"].astype(float)
    assert np.median(flair[seg == OEDEMA]) > 1.2 * np.median(flair[case.pure_tissue == WM])


def test_test_family_subjects_are_not_training_subjects(tmp_path):
    from localdiffusion.phantom.dataset import plan_cohort

    training = {e["case_seed"] for e in plan_cohort(3, 3, 0, "test")}
    seeds = {f: {e["case_seed"] for e in plan_cohort(3, 3, 0, "test", f)} for f in ("glioma", "ms")}
    assert not (training & seeds["glioma"]) and not (seeds["glioma"] & seeds["ms"])
    assert all(e["case_id"].startswith("ld0_ms_test_") for e in plan_cohort(1, 1, 0, "test", "ms"))
    with pytest.raises(InputError, match="lesion family"):
        generate_case(1, tumour=True, family="nonsense")
    with pytest.raises(InputError, match="1 mm"):
        write_cohort(tmp_path, 1, 0, grid="brats", family="ms")


@pytest.mark.slow
def test_brats_grid_cohort_is_240_by_240_by_155_int16_with_brats_labels(tmp_path):
    import nibabel as nib

    entries = write_cohort(tmp_path, 0, 1, split="test", family="metastasis", grid="brats", spacing=1.0)
    case_id = entries[0]["case_id"]
    image = nib.load(str(tmp_path / case_id / f"{case_id}_t1.nii.gz"))
    seg = np.asarray(nib.load(str(tmp_path / case_id / f"{case_id}_seg.nii.gz")).dataobj)
    assert image.shape == (240, 240, 155) and image.get_data_dtype() == np.int16
    np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), 1.0)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4} and (seg > 0).any()
    brain = np.asarray(image.dataobj) > 0
    assert brain[:, :, 0].sum() == 0 and brain[0].sum() == 0 and brain[:, 0].sum() == 0  # the brain sits inside the grid
    assert entries[0]["family"] == "metastasis" and entries[0]["grid"] == "brats"


def test_skip_existing_adds_subjects_without_touching_the_ones_there(tmp_path):
    first = write_cohort(tmp_path, 0, 1, seed=5, spacing=4.0, split="test", family="metastasis")
    written = tmp_path / first[0]["case_id"] / f"{first[0]['case_id']}_t1.nii.gz"
    stamp = written.stat().st_mtime_ns
    entries = write_cohort(tmp_path, 0, 3, seed=5, spacing=4.0, split="test", family="metastasis", skip_existing=True)
    assert [e["case_id"] for e in entries] == ["ld5_metastasis_test_t0000", "ld5_metastasis_test_t0001",
                                               "ld5_metastasis_test_t0002"]
    assert written.stat().st_mtime_ns == stamp  # kept, not generated again
    assert entries[0] == json.loads(json.dumps(first[0]))
    # the added subjects are those a fresh run of three would write
    fresh = write_cohort(tmp_path / "fresh", 0, 3, seed=5, spacing=4.0, split="test", family="metastasis")
    assert [e["case_seed"] for e in fresh] == [e["case_seed"] for e in entries]
    for e in entries[1:]:
        name = e["case_id"]
        a = np.asarray(nib.load(tmp_path / name / f"{name}_t1.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "fresh" / name / f"{name}_t1.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
