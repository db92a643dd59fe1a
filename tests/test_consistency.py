"""3D consistency: the measures on references, slice-correlated noise and the banding filter."""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from test_diffusion import tiny_config

from research.bench.consistency import consistency_scores, plane_scores, slice_mean_jitter, z_highpass_ratio
from localdiffusion.data.readers import read_case
from localdiffusion.engine.loop import SliceNoise
from localdiffusion.network.denoiser import CONFIG_FILE, Denoiser, DiffusionConfig, load_denoiser, save_model
from localdiffusion.options import OPTIONS
from localdiffusion.volume.batching import plan_batches, translate_prepared, z_mixes
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case
from localdiffusion.volume.harmonise import harmonise_z


def _smooth_volume(seed=0, shape=(40, 44, 36)):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    i, j, k = np.indices(shape)
    c = np.array(shape) / 2
    brain = ((i - c[0]) / 16) ** 2 + ((j - c[1]) / 18) ** 2 + ((k - c[2]) / 15) ** 2 < 1
    texture = gaussian_filter(rng.standard_normal(shape), 3)
    volume = 0.5 + 0.1 * texture / texture.std()
    return np.where(brain, np.clip(volume, 0, 1), 0).astype(np.float32), brain


def test_measures_on_references():
    truth, brain = _smooth_volume()
    same = consistency_scores(truth, brain, truth)
    assert same["axial_ssim"] > 0.999 and same["coronal_psnr"] > 100
    rng = np.random.default_rng(1)
    banded = np.where(brain, truth + rng.normal(0, 0.03, truth.shape[2])[None, None, :], 0).astype(np.float32)
    assert slice_mean_jitter(banded, brain) > 2 * slice_mean_jitter(truth, brain)
    assert z_highpass_ratio(banded, brain) > 1.5 * z_highpass_ratio(truth, brain)
    # banding shows in the coronal and sagittal planes, not in the axial one
    scores = consistency_scores(banded, brain, truth)
    assert scores["coronal_ssim"] < scores["axial_ssim"] - 0.05
    assert scores["sagittal_ssim"] < scores["axial_ssim"] - 0.05
    # the same in-plane noise in every slice: smooth along z, rough in-plane -> the ratio falls
    plane_noise = rng.normal(0, 0.05, truth.shape[:2])[:, :, None]
    striped = np.where(brain, truth + plane_noise, 0).astype(np.float32)
    assert z_highpass_ratio(striped, brain) < 0.5 * z_highpass_ratio(truth, brain)
    assert plane_scores(striped, truth, brain, "axial")["psnr"] < 30


def test_z_mixes_have_unit_variance_and_depend_on_the_slice_only():
    mix = z_mixes(3, 10, 2.0)
    assert abs(sum(w**2 for _, w in mix) - 1) < 1e-12 and len(mix) == 9
    assert z_mixes(3, 10, 0.0) == [(3 * 1_000_003 + 10, 1.0)]
    # neighbours share streams: adjacent slices' noise is strongly correlated, distant ones not
    noise = SliceNoise([0] * 12, mixes=[z_mixes(5, k, 2.0) for k in range(12)])
    draws = noise((1, 32, 32)).flatten(1).numpy()
    corr = np.corrcoef(draws)
    assert corr[5, 6] > 0.8 and abs(corr[0, 11]) < 0.1
    assert abs(draws.std() - 1) < 0.05


def test_correlated_noise_does_not_depend_on_the_batch_and_zero_is_the_default():
    brain = np.zeros((32, 32, 10), bool)
    brain[8:24, 6:26, 1:9] = True
    ks = np.arange(1, 9)

    def box(batch):
        rows, cols = batch.windows[0]
        return (rows.stop - rows.start, cols.stop - cols.start)

    def draws(batch_size, sigma):
        out = {}
        for batch in plan_batches(brain, ks, 4, batch_size, 16, 4, noise_sigma_z=sigma):
            noise = batch.noise()
            noise((1, *box(batch)))  # x_T, then the first step's draw: generators advance in step
            step = noise((1, *box(batch)))
            out.update({int(k): step[b] for b, k in enumerate(batch.ks)})
        return out

    for sigma in (0.0, 1.5):
        one, many = draws(1, sigma), draws(5, sigma)
        assert all(torch.equal(one[k], many[k]) for k in one)
    plain = draws(3, 0.0)
    independent = {}
    for batch in plan_batches(brain, ks, 4, 3, 16, 4):
        assert batch.mixes is None
        noise = batch.noise()
        noise((1, *box(batch)))
        got = noise((1, *box(batch)))
        independent.update({int(k): got[b] for b, k in enumerate(batch.ks)})
    assert all(torch.equal(plain[k], independent[k]) for k in plain)


def _in_plane_detail(volume):
    return volume - gaussian_filter(volume, (2, 2, 0))


def test_banding_filter_removes_slice_offsets_and_keeps_detail_and_small_lesions():
    truth, brain = _smooth_volume()
    rng = np.random.default_rng(2)
    banded = np.where(brain, truth + rng.normal(0, 0.03, truth.shape[2])[None, None, :], 0).astype(np.float32)
    filtered = harmonise_z(banded, brain, 1.5)
    assert slice_mean_jitter(filtered, brain) < 0.4 * slice_mean_jitter(banded, brain)
    assert z_highpass_ratio(filtered, brain) < z_highpass_ratio(banded, brain)
    # in-plane detail (finer than the 32 mm scale) is the banded volume's own
    inner = brain & np.roll(brain, 3, 0) & np.roll(brain, -3, 0) & np.roll(brain, 3, 1) & np.roll(brain, -3, 1)
    change = (_in_plane_detail(filtered) - _in_plane_detail(banded))[inner]
    assert np.sqrt(np.mean(change**2)) < 0.1 * np.sqrt(np.mean(_in_plane_detail(banded)[inner] ** 2))
    assert filtered.dtype == banded.dtype and not filtered[~brain].any() and 0 <= filtered.min() <= filtered.max() <= 1
    # a small lesion in three slices keeps its contrast and does not leak two slices away
    lesion = np.zeros_like(brain)
    c = np.array(brain.shape) // 2
    lesion[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 1:c[2] + 2] = True
    with_lesion = np.where(lesion, truth + 0.3, truth).astype(np.float32)
    kept = harmonise_z(with_lesion, brain, 1.5) - harmonise_z(truth, brain, 1.5)
    assert kept[lesion].mean() > 0.85 * 0.3
    assert np.abs(kept[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] + 3]).max() < 0.03
    assert harmonise_z(banded, brain, 0.0) is banded


def test_sampling_settings_come_from_the_model_unless_given(tmp_path):
    assert OPTIONS["noise_sigma_z"].default == -1 and OPTIONS["z_harmonise"].default == -1
    cfg = tiny_config(noise_sigma_z=2.0, z_harmonise=1.5)
    assert cfg.sampling("z_harmonise", -1) == 1.5 and cfg.sampling("z_harmonise", 0) == 0.0
    assert cfg.sampling("noise_sigma_z", -1) == 2.0 and cfg.sampling("noise_sigma_z", 3) == 3.0
    # a configuration written before the settings existed loads with both off
    save_model(tmp_path, tiny_config(), Denoiser(tiny_config()).network.state_dict())
    stored = json.loads((tmp_path / CONFIG_FILE).read_text())
    for name in ("noise_sigma_z", "z_harmonise"):
        stored.pop(name)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(stored))
    old = load_denoiser(tmp_path).config
    assert old.sampling("noise_sigma_z", -1) == 0.0 and old.sampling("z_harmonise", -1) == 0.0
    with pytest.raises(ValueError):
        DiffusionConfig(z_harmonise=-1.0)


def test_translations_are_filtered_whole_and_by_the_models_setting(cohort):
    torch.manual_seed(0)
    banded_model = Denoiser(tiny_config(z_harmonise=2.0))
    prepared = prepare_case(read_case(cases_in_split(cohort, "test", "healthy")[0], ("t1", "flair")), 4.0, (48, 56))
    default = translate_prepared(banded_model, prepared, steps=2, progress=False)
    off = translate_prepared(banded_model, prepared, steps=2, progress=False, z_harmonise=0)
    np.testing.assert_allclose(default, harmonise_z(off, prepared.brain, 2.0), atol=1e-6)
    assert np.abs(default - off).max() > 1e-3  # the filter acted (what it does: the test above)
    # evaluating chosen slices samples them without the filter (it needs every brain slice)
    ks = prepared.brain_slices()[::2]
    some = translate_prepared(banded_model, prepared, steps=2, progress=False, slices=ks)
    np.testing.assert_array_equal(some[:, :, ks], off[:, :, ks])
