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
from localdiffusion.phantom.physics import TISSUE_ORDER, Acquisition, draw_protocol, draw_tissues, tissue_signals
from localdiffusion.phantom.subject import (bias_field, draw_pose, elastic_displacement, rician, smooth_noise,
                                            subject_to_template)
from localdiffusion.phantom.tumour import displace_for_mass_effect, draw_lesions, lesion_fractions

PHANTOM_MODALITIES = ("t1", "flair", "t2")
#: BraTS 2021 label values
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4


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


def output_grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the phantom grid: the template's field of view at ``spacing`` mm."""
    anatomy = load_anatomy()
    extent = np.array(anatomy.wm.shape) * np.abs(np.diag(anatomy.affine)[:3])
    shape = tuple(int(np.ceil(e / spacing)) for e in extent)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = anatomy.affine[:3, 3]
    return shape, affine


def generate_case(seed: int, *, tumour: bool, spacing: float = 2.0, t1_sequence: str = "mprage",
                  acquisition: Acquisition | None = None) -> PhantomCase:
    """Generate one subject fixed by ``seed``; ``tumour`` inserts one to three gliomas.

    ``acquisition``: the scanner settings (default: the training distribution with ``t1_sequence``);
    the same seed gives the same anatomy and lesions under every acquisition."""
    acquisition = acquisition or Acquisition(t1_sequence=t1_sequence)
    if not 0.5 <= spacing <= 4.0:
        raise InputError(f"spacing must be between 0.5 and 4 mm, got {spacing}")
    rng = np.random.default_rng(seed)
    anatomy = load_anatomy(smoothing_mm=0.4 * spacing if spacing > 1.0 else 0.0)
    shape, affine = output_grid(spacing)
    params: dict = {"seed": int(seed), "spacing_mm": float(spacing), "t1_sequence": acquisition.t1_sequence}
    if acquisition != Acquisition(t1_sequence=acquisition.t1_sequence):
        params["acquisition"] = dataclasses.asdict(acquisition)

    # --- geometry: subject grid -> template mm (pose, elastic, mass effect)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    world = ijk * np.float32(spacing) + affine[:3, 3].astype(np.float32)
    pose = draw_pose(rng)
    elastic_mm = float(rng.uniform(1.0, 3.0))
    params.update(pose=pose, elastic_mm=round(elastic_mm, 3))
    template_pts = subject_to_template(world, pose)
    template_pts += elastic_displacement(rng, shape, spacing, elastic_mm).reshape(3, -1).T
    lesions = draw_lesions(rng) if tumour else []
    params["lesions"] = [lesion.as_dict() for lesion in lesions]
    sample_pts = displace_for_mass_effect(template_pts, lesions) if lesions else template_pts
    vox = nib.affines.apply_affine(np.linalg.inv(anatomy.affine), sample_pts).T
    wm, gm, csf, brain = (ndimage.map_coordinates(f, vox, order=1, mode="constant", cval=0.0) for f in anatomy.stack())

    # --- tissue fractions per voxel (partial volume), lesions replacing tissue
    fractions = np.zeros((len(TISSUE_ORDER), wm.size), np.float32)
    if lesions:
        noise = np.stack([smooth_noise(rng, shape, 4.0 / spacing).ravel() for _ in range(2)])
        core, necrosis, reach_wm, reach_gm = lesion_fractions(template_pts, lesions, noise, spacing)
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
    tissues = draw_tissues(rng)
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
