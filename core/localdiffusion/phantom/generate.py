"""Generate one phantom case: tissue fractions -> MR signals -> a subject's scan.

The output grid covers the MNI152 template's field of view at ``spacing`` mm in RAS
orientation (like BraTS, every case shares one grid); the subject's head moves inside it.
Images are skull-stripped (zero outside the brain) and stored as int16 scanner units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from localdiffusion.errors import InputError
from localdiffusion.phantom.anatomy import load_anatomy
from localdiffusion.phantom.families import blob_fractions, check_family, draw_blobs, draw_field_tissues
from localdiffusion.phantom.physics import TISSUE_ORDER, Acquisition, draw_protocol, draw_tissues, tissue_signals
from localdiffusion.phantom.subject import (bias_field, draw_pose, elastic_displacement, rician, smooth_noise,
                                            subject_to_template)
from localdiffusion.phantom.tumour import Lesion, displace_for_mass_effect, draw_lesions, lesion_fractions

PHANTOM_MODALITIES = ("t1", "flair", "t2")
#: BraTS 2021 label values
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
#: output grids: ``template`` (the MNI152 field of view at the chosen spacing) or ``brats`` (240 x 240 x 155
#: at 1 mm, the BraTS 2021 geometry, centred on the brain)
GRIDS = ("template", "brats")
BRATS_SHAPE = (240, 240, 155)
#: size of a brain on the BraTS grid relative to the MNI152 template: the template brain spans 154 mm
#: head to foot, SRI24-registered BraTS brains fit 155 slices with room for head size and pose
BRATS_BRAIN_SCALE = 0.9


@dataclass
class PhantomCase:
    images: dict[str, np.ndarray]  # modality -> int16 (X, Y, Z)
    seg: np.ndarray  # uint8, BraTS 2021 labels
    brain_mask: np.ndarray  # uint8
    affine: np.ndarray
    params: dict = field(default_factory=dict)
    #: tissue of voxels at least 80% one tissue, index into TISSUE_ORDER plus one
    #: (0 = background or mixed); for checks, not written to disk
    pure_tissue: np.ndarray | None = None
    #: modality -> float32 image before Rician noise, in the stored image's units; not written to disk
    noise_free: dict = field(default_factory=dict)


def output_grid(spacing: float, grid: str = "template") -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the phantom grid: the template's field of view at ``spacing`` mm, or with
    ``grid="brats"`` the BraTS geometry (1 mm only) centred on the template brain's bounding box."""
    anatomy = load_anatomy()
    if grid == "brats":
        if spacing != 1.0:
            raise InputError(f"the BraTS grid is 1 mm; got spacing {spacing}")
        ijk = np.argwhere(anatomy.brain > 0.5)
        centre = nib.affines.apply_affine(anatomy.affine, (ijk.min(0) + ijk.max(0)) / 2.0)
        affine = np.eye(4)
        affine[:3, 3] = np.round(centre - (np.array(BRATS_SHAPE) - 1) / 2.0)
        return BRATS_SHAPE, affine
    if grid != "template":
        raise InputError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
    extent = np.array(anatomy.wm.shape) * np.abs(np.diag(anatomy.affine)[:3])
    shape = tuple(int(np.ceil(e / spacing)) for e in extent)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = anatomy.affine[:3, 3]
    return shape, affine


def generate_case(seed: int, *, tumour: bool, spacing: float = 2.0, t1_sequence: str = "mprage",
                  acquisition: Acquisition | None = None, family: str = "training", grid: str = "template"
                  ) -> PhantomCase:
    """Generate one subject fixed by ``seed``; ``tumour`` inserts lesions of ``family``.

    Args:
        acquisition: the scanner settings (default: the training distribution with ``t1_sequence``);
            the same seed gives the same anatomy and lesions under every acquisition.
        family: ``training`` (one to three of the training phantom's gliomas, fixed 3 T tissues) or a
            test family of :mod:`~localdiffusion.phantom.families` (its own lesions, tissues drawn at
            1.5 or 3 T; a healthy case of a test family has the drawn healthy tissues).
        grid: ``template`` or ``brats`` (:func:`output_grid`).
    """
    acquisition = acquisition or Acquisition(t1_sequence=t1_sequence)
    check_family(family)
    if not 0.5 <= spacing <= 4.0:
        raise InputError(f"spacing must be between 0.5 and 4 mm, got {spacing}")
    rng = np.random.default_rng(seed)
    anatomy = load_anatomy(smoothing_mm=0.4 * spacing if spacing > 1.0 else 0.0)
    shape, affine = output_grid(spacing, grid)
    params: dict = {"seed": int(seed), "spacing_mm": float(spacing), "t1_sequence": acquisition.t1_sequence}
    if family != "training" or grid != "template":
        params.update(family=family, grid=grid)
    if acquisition != Acquisition(t1_sequence=acquisition.t1_sequence):
        params["acquisition"] = dataclasses.asdict(acquisition)

    # --- geometry: subject grid -> template mm (pose, elastic, mass effect)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    world = ijk * np.float32(spacing) + affine[:3, 3].astype(np.float32)
    if grid == "brats":  # a smaller brain: sample the template on a stretched grid about its centre
        centre = affine[:3, 3].astype(np.float32) + (np.array(shape, np.float32) - 1) / 2.0
        world = centre + (world - centre) / np.float32(BRATS_BRAIN_SCALE)
    pose = draw_pose(rng)
    elastic_mm = float(rng.uniform(1.0, 3.0))
    params.update(pose=pose, elastic_mm=round(elastic_mm, 3))
    template_pts = subject_to_template(world, pose)
    template_pts += elastic_displacement(rng, shape, spacing, elastic_mm).reshape(3, -1).T
    if family == "training":
        lesions = draw_lesions(rng) if tumour else []
        pushers = lesions
    else:
        lesions = draw_blobs(rng, family) if tumour else []
        pushers = [Lesion(b.centre_mm, float(np.mean(b.axes_mm)), 0.0, 0.0, 0.0, b.mass_effect)
                   for b in lesions if b.mass_effect > 0]
    params["lesions"] = [lesion.as_dict() for lesion in lesions]
    sample_pts = displace_for_mass_effect(template_pts, pushers) if pushers else template_pts
    vox = nib.affines.apply_affine(np.linalg.inv(anatomy.affine), sample_pts).T
    wm, gm, csf, brain = (ndimage.map_coordinates(f, vox, order=1, mode="constant", cval=0.0) for f in anatomy.stack())

    # --- tissue fractions per voxel (partial volume), lesions replacing tissue
    fractions = np.zeros((len(TISSUE_ORDER), wm.size), np.float32)
    if lesions:
        noise = np.stack([smooth_noise(rng, shape, 4.0 / spacing).ravel() for _ in range(2)])
        fields = lesion_fractions if family == "training" else blob_fractions
        core, necrosis, reach_wm, reach_gm = fields(template_pts, lesions, noise, spacing)
        inside = np.clip(brain / 0.5, 0.0, 1.0)
        core, necrosis = core * inside, necrosis * inside
        keep = 1.0 - core
        wm, gm, csf = wm * keep, gm * keep, csf * keep
        oedema = reach_wm * wm + reach_gm * gm
        wm, gm = wm * (1.0 - reach_wm), gm * (1.0 - reach_gm)
        fractions[3], fractions[4], fractions[5] = oedema, core - necrosis, necrosis
        brain = np.maximum(brain, core)
    fractions[0], fractions[1], fractions[2] = wm, gm, csf
    mask = brain >= 0.5

    # --- MR physics: mix tissue *signals* per voxel, then scanner effects
    if family == "training":
        tissues = draw_tissues(rng)
    else:
        params["field_strength_t"], tissues = draw_field_tissues(rng, family)
    protocol = draw_protocol(rng, acquisition)
    coil = bias_field(rng, shape, strength=acquisition.coil_bias).ravel()
    params.update(tissues={k: vars(v) for k, v in tissues.items()},
                  protocol={k: v.as_dict() for k, v in protocol.items()}, snr={}, gain={})
    images, noise_free = {}, {}
    for modality in PHANTOM_MODALITIES:
        signals = tissue_signals(protocol[modality], tissues)
        signals *= 1.0 + rng.normal(0.0, 0.03, signals.shape).astype(np.float32)  # contrast jitter
        image = signals @ fractions
        image *= coil * bias_field(rng, shape, strength=0.02).ravel()  # shared coil + sequence-specific
        snr = float(rng.uniform(*acquisition.snr))
        clean = image
        image = rician(rng, image, float(image[mask].mean()) / snr)
        gain = float(rng.uniform(1500.0, 4000.0)) / float(np.percentile(image[mask], 99.5))
        image = np.where(mask, image * gain, 0.0)
        noise_free[modality] = np.where(mask, clean * gain, 0.0).astype(np.float32).reshape(shape)
        images[modality] = np.clip(np.rint(image), 0, 32767).astype(np.int16).reshape(shape)
        params["snr"][modality], params["gain"][modality] = round(snr, 3), round(gain, 6)

    seg = np.zeros(wm.size, np.uint8)
    if lesions:
        tissue_total = np.maximum(fractions[:3].sum(0) + fractions[3:].sum(0), 1e-6)
        seg[(fractions[3] / tissue_total >= 0.5) & mask] = OEDEMA
        seg[(core >= 0.5) & mask] = ENHANCING
        seg[(necrosis >= 0.5) & mask] = NECROSIS
    seg = seg.reshape(shape)
    params["tumour_ml"] = round(float((seg > 0).sum()) * spacing**3 / 1000.0, 3)
    pure = mask & (fractions.max(0) >= 0.8)
    tissue = np.where(pure, fractions.argmax(0) + 1, 0).astype(np.uint8).reshape(shape)
    return PhantomCase(images, seg, mask.reshape(shape).astype(np.uint8), affine, params, tissue, noise_free)
