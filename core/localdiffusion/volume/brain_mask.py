"""Which voxels of a skull-stripped input are brain: the brain, not the field of view, decides
the working grid and the normalisation.

A skull-stripped volume as BraTS and most tools write it has an exactly constant background
(zeros): the brain is every voxel above it. A volume whose background is noise (a stripped
brain resampled or reconstructed with Rician background, a phantom with background noise)
has no such value: there the background level is estimated from the volume itself (the
median and spread of the voxels below an Otsu threshold, i.e. mostly background) and the
brain is the largest connected region above it, with its holes filled.

A head that was never skull-stripped passes neither test of plausibility: its foreground
holds scalp and skull, far more than a brain's volume. It is refused with advice on
stripping tools rather than translated (the models never saw a skull).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from localdiffusion.errors import InputError

#: a background value (the minimum) covering at least this fraction of voxels is "exact background"
EXACT_BACKGROUND_FRACTION = 0.2
#: noisy background: brain starts this many robust standard deviations above the background median
NOISE_SIGMAS = 5.0
#: largest plausible stripped brain, litres (adult brains with their CSF are 1.1 - 1.9 l; a head
#: with scalp and skull 3 - 5 l); the phantom's brain is 1.93 l
MAX_BRAIN_LITRES = 2.6
STRIP_ADVICE = ("strip the skull first, for example with SynthStrip (mri_synthstrip), HD-BET or Slicer's "
                "SwissSkullStripper extension")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of ``values``' histogram."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below, mass = np.cumsum(counts), np.cumsum(counts * centres)
    above = below[-1] - below
    valid = (below > 0) & (above > 0)
    between = np.zeros_like(centres)
    between[valid] = (mass[-1] * below[valid] / below[-1] - mass[valid]) ** 2 / (below[valid] * above[valid])
    return float(centres[np.argmax(between)])


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Brain voxels of one skull-stripped volume (bool, same shape)."""
    floor = volume.min()
    exact = volume == floor
    if exact.all():  # a constant volume: no background to tell apart
        return volume > 0
    if exact.mean() >= EXACT_BACKGROUND_FRACTION:
        return ~exact
    sample = volume[:: 2, :: 2, :: 2].ravel()
    low = sample[sample < otsu_threshold(sample)]
    centre = np.median(low)
    spread = 1.4826 * np.median(np.abs(low - centre))
    above = ndimage.binary_opening(volume > centre + NOISE_SIGMAS * spread)  # drops isolated noise voxels
    labels, count = ndimage.label(above)
    if count == 0:
        return above
    largest = labels == (np.argmax(ndimage.sum_labels(above, labels, range(1, count + 1))) + 1)
    return ndimage.binary_fill_holes(ndimage.binary_closing(largest, iterations=2))


#: smallest foreground taken for a brain scan, litres (a whole brain is 1.1 - 1.9 l; a slab of a few 2 mm slices
#: through it about 0.1 l)
MIN_BRAIN_LITRES = 0.05


def check_stripped(mask: np.ndarray, affine: np.ndarray, name: object) -> None:
    """Refuse a foreground far larger than a brain (a head that was not skull-stripped) or far smaller (a crop)."""
    litres = float(mask.sum()) * abs(np.linalg.det(affine[:3, :3])) / 1e6
    if litres < MIN_BRAIN_LITRES:
        shape = " x ".join(map(str, mask.shape))
        raise InputError(f"{name}: the brain is too small: {1000 * litres:.1f} ml of foreground in a {shape}-voxel "
                         f"volume (a brain scan holds about 1,100-1,900 ml; at least {1000 * MIN_BRAIN_LITRES:.0f} ml "
                         f"is needed)")
    if litres > MAX_BRAIN_LITRES:
        raise InputError(f"{name}: the foreground is {litres:.1f} l, more than a brain (at most "
                         f"~{MAX_BRAIN_LITRES} l): the scan looks not skull-stripped; {STRIP_ADVICE}")
