"""3D consistency: the measures on references, and slice-correlated noise."""

import numpy as np
import torch

from localdiffusion.benchmark.consistency import consistency_scores, plane_scores, slice_mean_jitter, z_highpass_ratio
from localdiffusion.engine.loop import SliceNoise
from localdiffusion.volume.batching import plan_batches, z_mixes


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
