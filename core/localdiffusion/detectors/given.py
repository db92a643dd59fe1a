"""The detector maps a risk calibration is *given* (computed by the job around the sampling, not
recorded during it), and the models that compute them.

* ``ood``: the bank's own OOD probability of the condition (the map the input gate reads);
* ``ood_robust``: the acquisition-robust OOD probability (:mod:`~localdiffusion.ood.robust`: the
  volume's distances self-calibrated, T1 intensity-standardised and FLAIR bias-corrected before
  the backbone). In the risk
  it replaces the bank's map for T1 -> FLAIR: on validation it predicts gross errors better and on
  shifted scanners it flags far less healthy brain (research/RECORD.md sections 11c and 11d). For
  T1 it costs one more PatchCore pass over the standardised image. It is the patch map alone
  (:meth:`~localdiffusion.ood.robust.RobustCalibration.patch_only`): a calibration that adds the location
  score to the map ``run`` writes keeps the patch distances' own calibration for the risk;
* ``ood_located``: the OOD map ``run`` writes and Local Diffusion branches on (the robust map with its
  location score, :meth:`~localdiffusion.ood.robust.RobustCalibration.ood_map`);
* ``tumour``: the source contrast's lesion U-Net (``lesion_<source>`` beside the model folder, a
  :mod:`~localdiffusion.network.segmenter` U-Net): the probability that a voxel is lesion. A supervised detector:
  it knows what a lesion looks like in the source contrast, where the OOD maps know only healthy tissue;
  one U-Net pass over the brain slices;
* ``wm_lesion``: a second lesion U-Net of the source contrast trained on small white-matter lesions alone
  (``wm_lesion_<source>``; MS-like). Beside ``tumour`` in a maximum it keeps the faint lesions a U-Net trained on
  every lesion kind gives up (research/lesion_risk/README.md);
* ``cycle``: the cycle residual (:mod:`~localdiffusion.detectors.cycle`, one more translation).

:class:`GivenMaps` loads what a calibration needs once per job and computes only those maps, so
that translate, run (bundle, MONAI Label, Slicer) and calibrate-risk give the risk the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localdiffusion.detectors.cycle import cycle_map, load_reverse_model, reverse_model_dir
from localdiffusion.detectors.maps import Detector, register
from localdiffusion.errors import InputError
from localdiffusion.network.segmenter import Segmenter, load_segmenter, tumour_probability_volume
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.ood.volume import probability_volume
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import LESION_MODELS, lesion_model_dir, robust_calibration_path
from localdiffusion.volume.grid import PreparedCase, resample


class RobustOodProbability(Detector):
    name = "ood_robust"
    description = ("acquisition-robust PatchCore OOD probability of the condition (distances standardised by the "
                   "volume's own brain median and MAD; T1 intensity-standardised, FLAIR bias-corrected first; "
                   "ood/robust.py)")
    calibrated = True


class LocatedOodProbability(Detector):
    name = "ood_located"
    description = ("the OOD probability `run` writes: the acquisition-robust map with the location score (where "
                   "each voxel lies against the MNI152 template: ood/location.py) where the robust calibration "
                   "adds it")
    calibrated = True


class TumourProbability(Detector):
    name = "tumour"
    description = ("the source contrast's lesion U-Net (models/lesion_<source>, a tumour-segmentation U-Net trained on "
                   "several lesion kinds and T1 kinds): the probability that a voxel is lesion of any class, "
                   "1 - P(background)")


class WhiteMatterLesionProbability(Detector):
    name = "wm_lesion"
    description = ("the source contrast's white-matter lesion U-Net (models/wm_lesion_<source>, trained on small "
                   "MS-like white-matter lesions alone, both T1 kinds): the probability that a voxel is lesion, "
                   "1 - P(background)")


register(RobustOodProbability())
register(LocatedOodProbability())
register(TumourProbability())
register(WhiteMatterLesionProbability())


@dataclass
class GivenMaps:
    """What computes the given maps of one calibration's ``needs``: the source bank, its robust
    calibration (when ``ood_robust`` is needed) and the reverse model (when ``cycle`` is)."""

    needs: tuple[str, ...]
    bank: PatchCore
    robust: RobustCalibration | None = None  # patch distances only (``ood_robust``)
    reverse: object | None = None  # a Denoiser
    located: RobustCalibration | None = None  # the whole robust calibration (``ood_located``)
    segmenters: dict[str, Segmenter] = field(default_factory=dict)  # lesion U-Nets by detector (``LESION_MODELS``)

    @staticmethod
    def files(needs: tuple[str, ...], bank_path: str | Path, model_dir: str | Path, direction: str
              ) -> dict[str, Path]:
        """The model file each map of ``needs`` loads, keyed by map: the robust calibration beside
        ``bank_path``, the reverse model's configuration beside ``model_dir`` (translating ``direction``), each
        lesion U-Net's configuration (the source contrast's) in the models folder above ``model_dir``."""
        files = {}
        for name in ("ood_robust", "ood_located"):
            if name in needs:
                files[name] = robust_calibration_path(bank_path)
        for name in LESION_MODELS:
            if name in needs:
                files[name] = lesion_model_dir(Path(model_dir).parent, DIRECTIONS[direction][0], name) / "config.json"
        if "cycle" in needs:
            files["cycle"] = reverse_model_dir(model_dir, direction) / "config.json"
        return files

    @classmethod
    def load(cls, needs: tuple[str, ...], bank: PatchCore, bank_path: str | Path, model_dir: str | Path,
             config, device) -> "GivenMaps":
        """Load what ``needs`` asks for (``config``: the model's in ``model_dir``); an
        :class:`~localdiffusion.errors.InputError` naming the missing file otherwise (:meth:`files`)."""
        files = cls.files(needs, bank_path, model_dir, config.direction)
        robust = RobustCalibration.load(files["ood_robust"]).patch_only() if "ood_robust" in files else None
        reverse = load_reverse_model(model_dir, config, device) if "cycle" in files else None
        located = RobustCalibration.load(files["ood_located"]) if "ood_located" in files else None
        segmenters = {name: load_segmenter(files[name].parent).to(device) for name in LESION_MODELS if name in files}
        for name, segmenter in segmenters.items():
            if not _same_view(segmenter.config, config):
                raise InputError(f"{files[name]}: the lesion U-Net reads a {segmenter.config.in_plane} grid at "
                                 f"{segmenter.config.spacing_mm} mm, the translation model a {tuple(config.in_plane)} "
                                 f"grid at {config.spacing_mm} mm (the U-Net's grid must be as fine or finer, over the "
                                 f"same field of view)")
        return cls(needs, bank, robust, reverse, located, segmenters)

    def source_maps(self, prepared: PreparedCase, known: dict[str, np.ndarray] | None = None
                    ) -> dict[str, np.ndarray]:
        """The given maps of ``needs`` that depend on the source alone (:data:`SOURCE_MAPS`: the OOD maps, the lesion
        U-Net's; ``known``: those the job has computed already, by map name), so that a job can compute them before
        sampling."""
        known = known or {}
        return {name: known[name] if name in known else compute(self, prepared)
                for name, compute in _FROM_SOURCE.items() if name in self.needs}

    def maps(self, prepared: PreparedCase, translation: np.ndarray, source: dict[str, np.ndarray] | None = None,
             **sampling) -> dict[str, np.ndarray]:
        """Every given map of ``needs`` for ``translation`` of ``prepared`` (``source``: what
        :meth:`source_maps` returned, computed here when None; ``sampling``: the back-translation's
        keywords, :func:`cycle_map`)."""
        given = dict(self.source_maps(prepared) if source is None else source)
        if "cycle" in self.needs:
            given["cycle"] = cycle_map(self.reverse, prepared, translation, **sampling)
        return given


def _same_view(segmenter_config, config) -> bool:
    """Whether the lesion U-Net's grid is the model's or a finer one over the same field of view."""
    view = lambda c: tuple(round(n * c.spacing_mm, 3) for n in c.in_plane)  # noqa: E731
    return segmenter_config.spacing_mm <= config.spacing_mm and view(segmenter_config) == view(config)


def lesion_probability(segmenter: Segmenter, prepared: PreparedCase) -> np.ndarray:
    """A lesion U-Net's probability (the ``tumour`` or ``wm_lesion`` map) on ``prepared``'s working grid.

    A U-Net on a finer grid of the same field of view reads the source prepared again on its own grid (from the
    case ``prepared`` was made from), and its probability is resampled to the working grid (trilinear, smoothed
    first as every image going to a coarser grid: :func:`~localdiffusion.volume.grid.resample`).

    Args:
        segmenter: a lesion U-Net of the source contrast.
        prepared: the case on the translation model's working grid.
    Returns:
        (X, Y, Z) float32 in [0, 1] on the working grid; 0 outside the brain.
    """
    cfg = segmenter.config
    if (cfg.spacing_mm, tuple(cfg.in_plane)) == (prepared.grid.spacing, tuple(prepared.grid.shape[:2])):
        return tumour_probability_volume(segmenter, prepared.images[cfg.modality], prepared.brain)
    finer = prepared.on_grid(cfg.spacing_mm, cfg.in_plane)
    probability = tumour_probability_volume(segmenter, finer.images[cfg.modality], finer.brain)
    working = resample(probability, finer.grid.affine, prepared.grid.affine, prepared.grid.shape, order=1)
    return np.where(prepared.brain, np.clip(working, 0.0, 1.0), 0.0).astype(np.float32)


#: how :meth:`GivenMaps.source_maps` computes each given map that reads the source alone
_FROM_SOURCE = {
    "ood": lambda given, prepared: probability_volume(given.bank, prepared),
    "ood_robust": lambda given, prepared: given.robust.probability(
        given.bank, prepared.images[given.robust.modality], prepared.brain),
    "ood_located": lambda given, prepared: given.located.ood_map(
        given.bank, prepared.images[given.located.modality], prepared.brain, prepared.grid.affine).map.probability,
    **{name: (lambda given, prepared, name=name: lesion_probability(given.segmenters[name], prepared))
       for name in LESION_MODELS},
}
#: the given maps that read the source alone (:meth:`GivenMaps.source_maps`): a risk of only these needs no sampling
SOURCE_MAPS = tuple(_FROM_SOURCE)
