"""The location atlas and the registration that puts a scan into it (ood/location.py)."""

import numpy as np
import pytest

from localdiffusion.ood.location import location_score, register
from localdiffusion.phantom.generate import generate_case
from localdiffusion.volume.grid import normalise


def _scan(seed, tumour=False, family="training", shift=(0, 0, 0), t1_sequence="mprage"):
    """A phantom T1 on a 2 mm grid, normalised as the working grid is, optionally shifted in world space."""
    case = generate_case(seed, tumour=tumour, spacing=2.0, family=family, t1_sequence=t1_sequence)
    brain = case.brain_mask > 0
    image, _ = normalise(case.images["t1"].astype(np.float32), brain, modality="t1")
    affine = case.affine.copy()
    affine[:3, 3] += np.asarray(shift, float)
    return np.where(brain, image, 0.0).astype(np.float32), brain, affine, case.seg


def test_registration_finds_a_known_shift_and_reports_an_implausible_mask():
    image, brain, affine, _ = _scan(3)
    here = register(brain, affine)
    moved = register(brain, _scan(3, shift=(9.0, -7.0, 5.0))[2])
    assert here.problem is None and here.dice > 0.9 and moved.dice > 0.9
    point = np.array([10.0, -20.0, 15.0, 1.0])  # the same anatomy, 9/-7/5 mm away in the moved scan's world
    shifted = point + np.array([9.0, -7.0, 5.0, 0.0])
    assert np.linalg.norm((moved.to_template @ shifted - here.to_template @ point)[:3]) < 2.0
    cube = np.zeros_like(brain)
    cube[10:40, 10:40, 10:40] = True  # a brain-sized block: no head's shape
    assert register(cube, affine).problem is not None
    assert register(np.zeros_like(brain), affine).problem == "the brain mask is empty"


@pytest.mark.parametrize("t1_sequence", ["mprage", "spin_echo"])
def test_location_sees_a_lesion_that_looks_like_normal_tissue_elsewhere(t1_sequence):
    from sklearn.metrics import roc_auc_score

    image, brain, affine, seg = _scan(9, tumour=True, t1_sequence=t1_sequence)
    score = location_score(image, brain, affine, register(brain, affine))
    lesion, normal = seg > 0, brain & (seg == 0)
    assert roc_auc_score(lesion[brain], score[brain]) > 0.8  # either T1 kind: the scan's own tissue intensities
    assert (score[lesion] > np.percentile(score[normal], 99)).mean() > 0.3
    healthy, healthy_brain, healthy_affine, _ = _scan(1, t1_sequence=t1_sequence)
    typical = location_score(healthy, healthy_brain, healthy_affine, register(healthy_brain, healthy_affine))
    assert np.median(typical[healthy_brain]) < 0.5 and not typical[~healthy_brain].any()


@pytest.mark.slow
def test_a_calibration_with_location_round_trips_and_says_when_it_cannot_register(tmp_path):
    import torch

    from localdiffusion.ood.features import FeatureExtractor
    from localdiffusion.ood.patchcore import PatchCore
    from localdiffusion.ood.robust import RobustCalibration

    torch.manual_seed(0)
    volumes = [_scan(seed)[:3] for seed in (1, 2, 4)]
    slices = np.concatenate([np.moveaxis(image, 2, 0)[::3] for image, _, _ in volumes])
    masks = np.concatenate([np.moveaxis(brain, 2, 0)[::3] for _, brain, _ in volumes])
    extractor = FeatureExtractor("resnet18", ("layer1",), weights="random", input_scale=1.0)
    bank = PatchCore.fit(extractor, slices, masks, modality="t1", bank_size=300, progress=False,
                         grid={"spacing_mm": 2.0})
    bank.calibrate(slices[1::2], masks[1::2], 0.01)
    robust = RobustCalibration.fit(bank, volumes, standardise=True, location="max", mask_level=0.5)
    loaded = RobustCalibration.load(robust.save(tmp_path / "ood_t1_robust.json"))
    assert loaded.location == "max" and loaded.mask_level == 0.5
    image, brain, affine, seg = _scan(9, tumour=True)
    located = loaded.ood_map(bank, image, brain, affine)
    ood = located.map
    assert located.unlocated is None and ood.score is not None and ood.mask_level == 0.5
    np.testing.assert_array_equal(ood.probability, robust.ood_map(bank, image, brain, affine).map.probability)
    assert ood.probability[seg > 0].mean() > ood.probability[brain & (seg == 0)].mean()
    # the risk calibrations read the patch map alone: the location-free calibration of the same distances
    np.testing.assert_array_equal(located.patch, loaded.patch_only().probability(bank, image, brain))
    cube = np.zeros_like(brain)  # a mask no head has: no registration, the patch map alone, and the reason
    cube[10:40, 10:40, 10:40] = True
    fallback = loaded.ood_map(bank, np.where(cube, 0.5, 0.0).astype(np.float32), cube, affine)
    assert fallback.unlocated is not None and "MNI152" in fallback.unlocated
    np.testing.assert_array_equal(fallback.map.probability, fallback.patch)


def test_the_location_score_of_a_subset_of_slices_is_the_whole_brains():
    """A calibration scores every second slice; the location score must still read the whole brain, as a job
    does, or its smoothing and tissue medians see empty slices."""
    from localdiffusion.ood.anomaly_map import Calibration
    from localdiffusion.ood.robust import RobustCalibration, landmarks, strided_brain

    image, brain, affine, _ = _scan(9, tumour=True)
    reference = landmarks(image, brain)  # intensity standardisation on: what it sees is zero off the scored slices
    robust = RobustCalibration("t1", reference, Calibration.fit(np.linspace(0, 10, 1000)), location="only",
                               patch_calibration=Calibration.fit(np.linspace(0, 10, 1000)))
    scored = strided_brain(brain)
    _, subset, _ = robust._scores(None, image, brain, scored, affine)
    _, whole, _ = robust._scores(None, image, brain, brain, affine)
    np.testing.assert_allclose(subset[scored], whole[scored], rtol=1e-5, atol=1e-6)
