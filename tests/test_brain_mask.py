"""The brain, not the field of view, decides the crop: background noise and a larger field of
view are accepted, a head that was not skull-stripped is refused with advice."""

import numpy as np
import pytest
from scipy import ndimage

from localdiffusion.data.io import save_volume
from localdiffusion.errors import InputError
from localdiffusion.jobs.inputs import prepare_input
from localdiffusion.volume.brain_mask import brain_mask


def _with_noise(volume: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Rician background: the magnitude of the image plus complex Gaussian noise."""
    rng = np.random.default_rng(seed)
    sigma = fraction * np.median(volume[volume > 0])
    return np.hypot(volume + rng.normal(0, sigma, volume.shape), rng.normal(0, sigma, volume.shape)).astype(np.float32)


def _padded(volume: np.ndarray, affine: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """A larger field of view: ``pad`` voxels on every side (origin moved so the brain stays in place)."""
    bigger = np.pad(volume, pad)
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    return bigger, shifted


@pytest.mark.parametrize("noise", [0.02, 0.05, 0.1])
def test_a_noisy_background_leaves_the_brain_mask_close_to_the_truth(tumour_case, noise):
    truth = tumour_case.images["t1"] > 0
    mask = brain_mask(_with_noise(tumour_case.images["t1"], noise))
    missed, extra = (truth & ~mask).sum() / truth.sum(), (mask & ~truth).sum() / truth.sum()
    assert missed < 0.06 and extra < 0.01, (missed, extra)
    assert np.array_equal(brain_mask(tumour_case.images["t1"]), truth)  # a zero background is used as it is


def test_a_stripped_brain_in_a_larger_noisy_field_of_view_is_translated_on_the_brain(tumour_case, tmp_path):
    """The finding: 'brain extent 196 x 232 mm does not fit' for a phantom T1 with background noise."""
    volume, affine = _padded(tumour_case.images["t1"], tumour_case.affine, 20)
    volume = _with_noise(volume, 0.03)
    path = save_volume(tmp_path / "noisy_t1.nii.gz", volume, affine)
    assert (volume > 0).mean() > 0.99  # every voxel is 'foreground' to a > 0 test
    prepared = prepare_input(path, "t1", 2.0, (96, 112))
    clean = prepare_input(save_volume(tmp_path / "clean_t1.nii.gz", tumour_case.images["t1"], tumour_case.affine),
                          "t1", 2.0, (96, 112))
    assert prepared.grid.shape[:2] == clean.grid.shape[:2]
    assert abs(int(prepared.brain.sum()) - int(clean.brain.sum())) < 0.05 * clean.brain.sum()


def test_a_head_that_was_not_skull_stripped_is_refused_with_advice(tumour_case, tmp_path):
    brain = tumour_case.images["t1"]
    volume, affine = _padded(brain, tumour_case.affine, 12)
    inside = ndimage.binary_fill_holes(volume > 0)
    head = ndimage.binary_dilation(inside, iterations=8)  # 16 mm of scalp and skull around the brain
    scalp = np.median(brain[brain > 0]) * 1.2
    volume = np.where(head & ~inside, scalp, volume).astype(np.float32)
    path = save_volume(tmp_path / "head_t1.nii.gz", volume, affine)
    with pytest.raises(InputError) as info:
        prepare_input(path, "t1", 2.0, (96, 112))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "not skull-stripped" in message
    assert "SynthStrip" in message and "HD-BET" in message
