"""Where a voxel lies: the MNI152 template's tissues as a prediction of each voxel's intensity, and
the affine registration that puts a scan into the template.

A patch-level detector that ignores location cannot see a lesion that looks like normal tissue in
the wrong place: in native T1 vasogenic oedema looks like grey matter and necrosis like CSF
(``docs/RESULTS.md``, OOD maps on the test lesion families). Registered to the template, each voxel
has expected white-matter, grey-matter and CSF fractions (nilearn's MNI152 2009 maps); mixed with
the scan's own intensity of each tissue they predict its intensity (:func:`location_score`). A voxel
is unusual when *no* position within :data:`TOLERANCE_MM` of its registered one predicts it. The
tolerance absorbs the error of an affine registration and the anatomy's variation around it, so grey
matter is not flagged for lying a few millimetres from where the template keeps it; the scan's own
tissue intensities make the prediction independent of the T1 kind, the field strength and the
scanner, with nothing fitted on training scans.

Registration (:func:`register`) is contrast-free: the scan's brain mask is aligned to the template's
(nilearn's MNI152 brain mask, shipped in its wheel) by a 12-parameter affine, both masks smoothed,
mean squares, SimpleITK. A skull-stripped brain of either contrast, either T1 kind and any lesion
has a brain-shaped mask; a registration whose masks overlap poorly or whose scales are not a
head's is reported (:attr:`Registration.problem`) and the caller falls back to the map without
location.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from localdiffusion.volume.grid import resample

#: the template grid: the MNI152 template's field of view at this spacing (mm)
ATLAS_SPACING_MM = 2.0
#: how far (mm) from its registered position a voxel may find its healthy match (registration error)
TOLERANCE_MM = 4.0
#: Gaussian smoothing (mm) of intensities before they are compared (noise, not anatomy)
SMOOTHING_MM = 2.0
#: plausible registrations: Dice of the aligned brain masks, and scale factors of a head
MIN_MASK_DICE = 0.85
SCALE_RANGE = (0.75, 1.35)


@functools.lru_cache(maxsize=2)
def template_brain(spacing: float = ATLAS_SPACING_MM) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's MNI152 brain mask resampled to ``spacing`` mm: ((X, Y, Z) float32 in [0, 1], affine)."""
    from nilearn.datasets import load_mni152_brain_mask

    image = load_mni152_brain_mask(resolution=1)
    data = np.asarray(image.dataobj, np.float32)
    factor = spacing / float(abs(image.affine[0, 0]))
    shape = tuple(int(np.ceil(s / factor)) for s in data.shape)
    smoothed = ndimage.gaussian_filter(data, 0.4 * factor)
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1) * factor
    mask = ndimage.map_coordinates(smoothed, coords, order=1).reshape(shape).astype(np.float32)
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] * factor
    return mask, affine


def _sitk_image(volume: np.ndarray, affine: np.ndarray):
    """A SimpleITK image (LPS physical space) of an axis-aligned RAS volume."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume, (2, 1, 0)), dtype=np.float32))
    spacing = np.abs(np.diag(affine)[:3])
    flip = np.sign(np.diag(affine)[:3])
    origin = affine[:3, 3] * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(v) for v in np.diag(flip * np.array([-1.0, -1.0, 1.0])).ravel()])
    return image


@dataclass(frozen=True)
class Registration:
    """An affine map from a scan's world (RAS mm) to template world (RAS mm).

    Attributes:
        to_template: (4, 4) RAS mm -> template RAS mm.
        dice: overlap of the aligned brain masks.
        problem: why the registration cannot be used, or None.
    """

    to_template: np.ndarray
    dice: float
    problem: str | None = None


def register(brain: np.ndarray, affine: np.ndarray) -> Registration:
    """Align a skull-stripped brain mask to the template brain (12-parameter affine, SimpleITK).

    Args:
        brain: (X, Y, Z) bool brain mask on an axis-aligned RAS grid.
        affine: that grid's voxel -> RAS mm.
    Returns:
        The :class:`Registration`; ``problem`` says when it is implausible. The same on every run and
        with any number of threads (every voxel sampled, ITK on one thread: about 1 s at 2 mm).
    """
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # ITK's threads sum in a run-dependent order
    try:
        return _register(brain, affine)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _register(brain: np.ndarray, affine: np.ndarray) -> Registration:
    import SimpleITK as sitk

    if not brain.any():
        return Registration(np.eye(4), 0.0, "the brain mask is empty")
    template, template_affine = template_brain()
    spacing = float(abs(affine[0, 0]))
    fixed = _sitk_image(ndimage.gaussian_filter(template, 2.0 / ATLAS_SPACING_MM), template_affine)
    moving = _sitk_image(ndimage.gaussian_filter(brain.astype(np.float32), 2.0 / spacing), affine)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetMetricSamplingStrategy(method.NONE)  # every voxel: no random sample
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                    relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 0.0])
    method.SetInitialTransform(initial, inPlace=False)
    try:
        transform = method.Execute(fixed, moving)
    except RuntimeError as exc:  # ITK reports a failed optimisation as RuntimeError
        return Registration(np.eye(4), 0.0, f"the registration to the MNI152 brain failed ({str(exc).splitlines()[0]})")
    affine_tx = sitk.AffineTransform(transform.GetNthTransform(0) if transform.GetName() == "CompositeTransform"
                                     else transform)
    # ITK maps fixed (template, LPS) points to moving (scan, LPS) points; turn it into scan RAS -> template RAS
    matrix = np.array(affine_tx.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(affine_tx.GetCenter()), np.array(affine_tx.GetTranslation())
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3] = matrix
    fixed_to_moving[:3, 3] = translation + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    to_template = np.linalg.inv(flip @ fixed_to_moving @ flip)
    aligned = resample(brain.astype(np.float32), to_template @ affine, template_affine, template.shape,
                       antialias=False) >= 0.5
    reference = template >= 0.5
    dice = float(2 * (aligned & reference).sum() / max(aligned.sum() + reference.sum(), 1))
    scales = np.linalg.svd(to_template[:3, :3], compute_uv=False)
    problem = None
    if dice < MIN_MASK_DICE:
        problem = f"the brain overlaps the MNI152 brain poorly after registration (Dice {dice:.2f} < {MIN_MASK_DICE})"
    elif not (SCALE_RANGE[0] <= scales.min() and scales.max() <= SCALE_RANGE[1]):
        problem = (f"the registration to the MNI152 brain scales the head implausibly (factors {scales.min():.2f}-"
                   f"{scales.max():.2f}, plausible {SCALE_RANGE[0]}-{SCALE_RANGE[1]})")
    return Registration(to_template, dice, problem)


def smoothed(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Gaussian smoothing inside the brain only (normalised convolution: no darkening at its edge)."""
    sigma = SMOOTHING_MM / spacing_mm
    weight = ndimage.gaussian_filter(brain.astype(np.float32), sigma)
    values = ndimage.gaussian_filter(np.where(brain, image, 0.0).astype(np.float32), sigma)
    return np.where(brain, values / np.maximum(weight, 1e-3), 0.0).astype(np.float32)


def ball_offsets(radius_vox: float) -> list[tuple[int, int, int]]:
    r = int(np.floor(radius_vox))
    return [(i, j, k) for i in range(-r, r + 1) for j in range(-r, r + 1) for k in range(-r, r + 1)
            if i * i + j * j + k * k <= radius_vox * radius_vox + 1e-6]


def _shifted(volume: np.ndarray, offset: tuple[int, int, int], fill: float) -> np.ndarray:
    """``volume`` moved so that ``out[x] = volume[x + offset]`` (``fill`` beyond the edge)."""
    out = np.full_like(volume, fill)
    src = tuple(slice(max(o, 0), s + min(o, 0)) for o, s in zip(offset, volume.shape))
    dst = tuple(slice(max(-o, 0), s - max(o, 0)) for o, s in zip(offset, volume.shape))
    out[dst] = volume[src]
    return out


@functools.lru_cache(maxsize=1)
def template_tissues() -> np.ndarray:
    """(3, X, Y, Z) white matter, grey matter and CSF fractions of the MNI152 template on the template grid
    (:func:`template_brain`), from the maps inside nilearn's wheel (:mod:`~localdiffusion.phantom.anatomy`)."""
    from localdiffusion.phantom.anatomy import load_anatomy

    anatomy = load_anatomy(smoothing_mm=0.4 * ATLAS_SPACING_MM)
    template, _ = template_brain()
    factor = ATLAS_SPACING_MM / float(abs(anatomy.affine[0, 0]))
    coords = np.indices(template.shape, dtype=np.float32).reshape(3, -1) * factor
    return np.stack([ndimage.map_coordinates(f, coords, order=1).reshape(template.shape)
                     for f in (anatomy.wm, anatomy.gm, anatomy.csf)]).astype(np.float32)


def tissue_intensities(values: np.ndarray, brain: np.ndarray, fractions: np.ndarray, pure: float = 0.9
                       ) -> np.ndarray:
    """The scan's own intensity of each tissue: the median where the registered template is ``pure`` in it.

    Lesions take a small part of each tissue's voxels and move a median little. A tissue with too few
    pure voxels (CSF in a small brain) falls back to the brain's 2nd percentile (CSF is darkest on T1 and
    nulled on FLAIR)."""
    out = np.empty(len(fractions), np.float32)
    for i, fraction in enumerate(fractions):
        inside = brain & (fraction >= pure)
        out[i] = np.median(values[inside]) if inside.sum() >= 50 else np.percentile(values[brain], 2)
    return out


def location_score(image: np.ndarray, brain: np.ndarray, affine: np.ndarray, registration: Registration
                   ) -> np.ndarray:
    """How far each voxel is from what the template's tissue around its registered position predicts.

    The prediction mixes the scan's *own* tissue intensities (:func:`tissue_intensities`) by the template's
    tissue fractions, so it holds for any T1 kind, field strength or scanner; a voxel is unusual only if no
    position within :data:`TOLERANCE_MM` predicts its intensity.

    Args:
        image: (X, Y, Z) the image the robust map's backbone sees, on an axis-aligned RAS grid.
        brain: (X, Y, Z) bool brain mask.
        affine: the grid's voxel -> RAS mm.
        registration: from :func:`register` on the same grid.
    Returns:
        (X, Y, Z) float32: the smallest ``|I - prediction|`` over the tolerance, in units of the scan's
        robust residual spread; 0 outside ``brain``.
    """
    spacing = float(abs(affine[0, 0]))
    _, template_affine = template_brain()
    fractions = np.stack([resample(f, template_affine, registration.to_template @ affine, image.shape, antialias=False)
                          for f in template_tissues()])
    values = smoothed(image, brain, spacing)
    own = tissue_intensities(values, brain, fractions)
    best = np.full(image.shape, np.inf, np.float32)
    residual0 = None
    for offset in ball_offsets(TOLERANCE_MM / spacing):
        moved = np.stack([_shifted(f, offset, 0.0) for f in fractions])
        total = moved.sum(0)
        predicted = np.tensordot(own, moved, axes=1) / np.maximum(total, 1e-3)
        residual = np.where(total > 0.5, np.abs(values - predicted), np.inf)  # outside the template: no prediction
        if offset == (0, 0, 0):
            residual0 = residual
        np.minimum(best, residual, out=best)
    finite = brain & np.isfinite(residual0)
    spread = 1.4826 * float(np.median(residual0[finite])) + 1e-6 if finite.any() else 1.0
    best = np.where(np.isfinite(best), best, 0.0) / spread  # no prediction anywhere near: no evidence
    return np.where(brain, best, 0.0).astype(np.float32)
