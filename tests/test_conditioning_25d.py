"""2.5D conditioning: neighbours as condition channels, from the working grid and in training."""

import numpy as np
import pytest
import torch
from test_diffusion import tiny_config

from localdiffusion.data.readers import read_case
from localdiffusion.engine.scale import to_model_scale
from localdiffusion.methods.local_diffusion import LocalDiffusion, LocalDiffusionConfig, LocalDiffusionPlan
from localdiffusion.ood.volume import OodMap
from localdiffusion.network.denoiser import Denoiser, adapt_state_dict, condition_offsets, load_denoiser
from localdiffusion.training.diffusion import CropSampler, TrainConfig, train
from localdiffusion.volume.batching import batch_sampler, plan_batches, translate_prepared
from localdiffusion.volume.cohort import cases_in_split, load_slice_set
from localdiffusion.volume.grid import prepare_case
from sampling_helpers import branch_weight


def test_offsets_and_neighbour_planes_from_the_volume():
    assert condition_offsets(1) == (0,) and condition_offsets(5) == (0, -1, 1, -2, 2)
    with pytest.raises(ValueError, match="odd"):
        tiny_config(condition_slices=4)
    volume = np.arange(4 * 4 * 6, dtype=np.float32).reshape(4, 4, 6)
    brain = np.ones(volume.shape, bool)
    batch = plan_batches(brain, np.array([0, 3, 5]), 0, 8, 4, None)[0]
    planes = batch.take(volume, offsets=condition_offsets(5)).numpy()
    assert planes.shape == (3, 5, 4, 4)
    np.testing.assert_array_equal(planes[1, 0], volume[:, :, 3])
    np.testing.assert_array_equal(planes[1, 1], volume[:, :, 2])
    np.testing.assert_array_equal(planes[1, 4], volume[:, :, 5])
    assert not planes[0, 1].any() and not planes[0, 3].any()  # below slice 0: zeros
    assert not planes[2, 2].any() and not planes[2, 4].any()  # above the last slice: zeros


def _widened(folder) -> tuple[Denoiser, Denoiser]:
    plain = load_denoiser(folder, autocast=False)
    wide = Denoiser(tiny_config(condition_slices=5), autocast=False).eval()
    wide.network.load_state_dict(adapt_state_dict(plain.network.state_dict(), wide.network))
    return plain, wide


@pytest.fixture(scope="module")
def tiny_plain(tmp_path_factory, cohort):
    folder = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    train(TrainConfig(data=str(cohort), out=str(folder), steps=2, batch_size=2, crop=16, val_every=0, threads=1),
          tiny_config(), progress=False)
    return folder


def test_a_widened_model_translates_volumes_exactly_as_before(tiny_plain, cohort):
    plain, wide = _widened(tiny_plain)
    prepared = prepare_case(read_case(cases_in_split(cohort, "test", "tumour")[0], ("t1", "flair")), 4.0, (48, 56))
    a = translate_prepared(plain, prepared, steps=3, progress=False)
    b = translate_prepared(wide, prepared, steps=3, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    ood = np.zeros(prepared.grid.shape, np.float32)
    ood[prepared.brain] = 0.0
    ks = prepared.brain_slices()
    ood[:, :, ks[len(ks) // 2]][prepared.brain[:, :, ks[len(ks) // 2]]] = 1.0  # one slice out of distribution
    config = LocalDiffusionConfig(min_component=0, t_intermediate=0)
    runs = [translate_prepared(m, prepared, steps=3, progress=False,
                               sample_batch=batch_sampler("ddim", 3, method=LocalDiffusionPlan(OodMap(ood, 0.5), config)))
            for m in (plain, wide)]
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-5)


def test_local_diffusion_masks_each_condition_channel_with_its_own_slice():
    wide = Denoiser(tiny_config(condition_slices=3), autocast=False).eval()
    cond = torch.rand(2, 3, 16, 16) * 0.5 + 0.25
    prob = torch.zeros(2, 3, 16, 16)
    prob[0, 0, 2:6, 2:6] = 1.0  # the slice itself
    prob[0, 1, 8:12, 8:12] = 1.0  # its lower neighbour, elsewhere
    prob[1, 2, 0:4, 0:4] = 1.0  # slice 1: only a neighbour is out of distribution
    ld = LocalDiffusion(wide, cond, branch_weight(prob, 0.5, "hard"), LocalDiffusionConfig(ind_floor=0.0))
    assert ld.branching.tolist() == [True, False]  # branching follows the slice's own mask
    torch.testing.assert_close(ld.cond_ood, to_model_scale(cond * prob))
    torch.testing.assert_close(ld.cond_ind, to_model_scale(cond * (1 - prob)))
    assert ld.weight.shape == (2, 1, 16, 16) and torch.equal(ld.weight[0, 0], prob[0, 0])


def test_training_sees_neighbours_and_a_25d_fine_tune_resumes(tiny_plain, cohort, tmp_path):
    slices = load_slice_set(cohort, "train", ("t1", "flair"), spacing=4.0, in_plane=(48, 56))
    sampler = CropSampler(slices, "t1", "flair", 16, 0, offsets=(0, -1, 1), among=slices)
    index = slices.neighbours((0, -1, 1))
    i = int(np.nonzero((index >= 0).all(1))[0][0])
    assert slices.z[index[i, 1]] == slices.z[i] - 1 and slices.case_ids[index[i, 2]] == slices.case_ids[i]
    cond, target = sampler.batch(3)
    assert cond.shape == (3, 3, 16, 16) and target.shape == (3, 1, 16, 16)
    out = tmp_path / "wide"
    cfg = dict(data=str(cohort), out=str(out), batch_size=2, crop=16, val_every=1, val_slices=2, val_steps=2,
               threads=1, checkpoint_every=1)
    train(TrainConfig(steps=1, **cfg), tiny_config(condition_slices=3), init_from=tiny_plain, progress=False)
    train(TrainConfig(steps=2, **cfg), tiny_config(condition_slices=3), resume=True, progress=False)
    log = (out / "train.log").read_text()
    assert "(widened)" in log and "resumed from step 1" in log and "validation" in log
    model = load_denoiser(out)
    assert model.config.condition_slices == 3 and model.network.conv_in.conv.weight.shape[1] == 4
