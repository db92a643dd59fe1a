"""The cycle residual: how far the source is from the back-translation of its translation.

A translation that invented tissue cannot be undone: translating it back with the reverse
model (FLAIR -> T1 for a T1 -> FLAIR translation) does not give the source there. The map is
``|source - back-translation|`` inside the brain. Its level differs from subject to subject
(a healthy calibration of the raw residual flagged 36% of healthy test brain, research/RECORD.md
section 11), so the risk map standardises it by the volume's own brain median and MAD
(:attr:`CycleResidual.self_standardised`; applied after smoothing in
:func:`~localdiffusion.detectors.risk.detector_volumes`).

The map is given, not recorded: the job computes it after the translation
(:func:`back_translation`), at the cost of one more plain translation by the reverse model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from localdiffusion.detectors.maps import Detector, register
from localdiffusion.errors import InputError
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.options import default, reverse_direction
from localdiffusion.volume.batching import batch_sampler, translate_prepared
from localdiffusion.volume.grid import PreparedCase


class CycleResidual(Detector):
    name = "cycle"
    description = "|source - back-translation of the translation by the reverse model|"
    self_standardised = True


register(CycleResidual())


def reverse_model_dir(model_dir: str | Path, direction: str) -> Path:
    """Where the model that undoes ``model_dir`` (translating ``direction``) lives: beside it,
    ``<target>_to_<source>/``."""
    return Path(model_dir).parent / reverse_direction(direction)


def load_reverse_model(model_dir: str | Path, config, device):
    """The model beside ``model_dir`` that undoes it (:func:`reverse_model_dir`); one error line if absent."""
    folder = reverse_model_dir(model_dir, config.direction)
    if not (folder / "config.json").exists():
        raise InputError(f"{folder}: reverse model not found (the risk map's cycle residual needs it beside "
                         f"{model_dir})")
    return load_denoiser(folder, device)


def back_translation(reverse, prepared: PreparedCase, translation: np.ndarray, *, steps: int = default("steps"),
                     seed: int = default("seed"), batch_size: int = default("batch_size"), progress: bool = False,
                     on_batch=None) -> np.ndarray:
    """The working-grid ``translation`` translated back by ``reverse`` (plain DDIM with ``steps``,
    the reverse model's own sampling settings)."""
    cfg, grid = reverse.config, prepared.grid
    if cfg.target not in prepared.images:
        raise InputError(f"the reverse model translates {cfg.source} -> {cfg.target}; the case has no {cfg.target} "
                         f"to compare its back-translation with")
    if (float(cfg.spacing_mm), tuple(cfg.in_plane)) != (float(grid.spacing), tuple(grid.shape[:2])):
        raise InputError(f"the reverse model ({cfg.source} -> {cfg.target}) works on a {cfg.spacing_mm} mm "
                         f"{tuple(cfg.in_plane)} grid, the translation on {grid.spacing} mm {tuple(grid.shape[:2])}")
    case = dataclasses.replace(prepared, images={cfg.source: translation.astype(np.float32)})
    return translate_prepared(reverse, case, sample_batch=batch_sampler("ddim", steps), seed=seed,
                              batch_size=batch_size, progress=progress, on_batch=on_batch)


def cycle_map(reverse, prepared: PreparedCase, translation: np.ndarray, **sampling) -> np.ndarray:
    """The raw cycle residual of ``translation`` (working grid): the source against its back-translation
    by ``reverse`` (``sampling``: :func:`back_translation`'s keywords)."""
    back = back_translation(reverse, prepared, translation, **sampling)
    return cycle_residual(prepared.images[reverse.config.target], back, prepared.brain)


def cycle_residual(source: np.ndarray, back: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``|source - back|`` inside the brain, 0 outside (before smoothing and standardisation)."""
    return np.where(brain, np.abs(source.astype(np.float32) - back.astype(np.float32)), 0).astype(np.float32)
