"""Fit calibrations on healthy validation volumes: the hallucination risk (``localdiffusion
calibrate-risk``), the input gate (``localdiffusion calibrate-gate``) and a bank's
acquisition-robust OOD calibration (``localdiffusion ood calibrate-robust``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm import tqdm

from localdiffusion.data.readers import read_case
from localdiffusion.detectors.given import SOURCE_MAPS, GivenMaps
from localdiffusion.detectors.input_gate import InputGate, MapSummary, depth_correlation
from localdiffusion.detectors.maps import DETECTORS, VolumeRecorder
from localdiffusion.detectors.risk import (CONFIDENT_DETECTOR, Growth, RiskCalibration, Smoothing, Weights,
                                          fit_on_volumes, normalised_weights, risk_default, risk_definition)
from localdiffusion.errors import InputError
from localdiffusion.jobs.inputs import check_sampling
from localdiffusion.ood.volume import probability_volume
from localdiffusion.options import HEALTHY_FPR, default
from localdiffusion.volume.batching import batch_sampler, translate_prepared
from localdiffusion.volume.cohort import cases_in_split, has_manifest
from localdiffusion.volume.grid import prepare_case


def calibrate_risk(denoiser, data: str | Path, given: GivenMaps, *, detectors: tuple[str, ...] | None = None,
                   smoothing: Smoothing | None = None, combination: str | None = None, rods=None,
                   grow: Growth | None | str = "default", weights: Weights | None | str = "default",
                   split: str = "val", max_cases: int = 3,
                   lesion_cases: bool = False,
                   steps: int = default("steps"), seed: int = default("seed"), false_positive_rate: float = HEALTHY_FPR,
                   last_k: int = 10, batch_size: int = default("batch_size")) -> RiskCalibration:
    """Fit a :class:`RiskCalibration` of ``detectors`` on the healthy cases of ``split`` (plain DDIM with ``steps``);
    ``data``: one cohort or several (e.g. the same subjects scanned with each T1 kind), at most ``max_cases`` each.
    ``lesion_cases``: the lesion cases of ``split`` too, each on its brain outside its lesion labels, so that the
    threshold also holds next to a lesion (a case's labelled voxels are never fitted on). A risk whose detectors
    all read the source alone (:data:`~localdiffusion.detectors.given.SOURCE_MAPS`) samples nothing.

    ``detectors``, ``smoothing``, ``combination`` None: the direction's default
    (:data:`~localdiffusion.detectors.risk.RISK_DEFAULTS`);
    the maps of detectors that ask for it are self-standardised. ``given``: the models of the given maps
    (:class:`~localdiffusion.detectors.given.GivenMaps`; loaded for ``detectors``). ``rods``: a
    :class:`~localdiffusion.methods.rods.RODSConfig`; its curvature is recorded (with ``eps`` out of
    reach, so the trajectory is the plain one) and its ``eps`` is fitted. The direction's confident-component
    rule (:attr:`~localdiffusion.detectors.risk.RiskDefault.confident_ml`) is recorded when ``detectors`` are the
    direction's default or include its detector; so is its growth of flagged regions
    (:attr:`~localdiffusion.detectors.risk.RiskDefault.grow`) when ``grow`` is ``"default"`` and ``detectors`` are
    the default (``grow``: a (map, level) pair, or None for none; growth does not change the fit); so are its
    weights (:attr:`~localdiffusion.detectors.risk.RiskDefault.weights`; ``weights``: detector -> share of the
    false-alarm budget, a weighted maximum, or None for the plain combination).
    """
    cfg = denoiser.config
    steps = cfg.sampling_steps(steps)  # 0: the model's validated count
    check_sampling(denoiser, steps)
    chosen = risk_default(cfg.direction)
    detectors = tuple(detectors or chosen.detectors)
    smoothing = chosen.smoothing if smoothing is None else smoothing
    combination = combination or chosen.combination
    confident_ml = chosen.confident_ml if detectors == chosen.detectors or CONFIDENT_DETECTOR in detectors else None
    if grow == "default":
        grow = chosen.grow if detectors == chosen.detectors else None
    if weights == "default":
        weights = chosen.weights if detectors == chosen.detectors and combination == chosen.combination else None
    if weights is not None:
        try:
            weights = normalised_weights(weights, detectors, combination)
        except ValueError as exc:
            raise InputError(f"risk weights: {exc}") from None
    unknown = [name for name in detectors if name not in DETECTORS]
    if unknown:
        raise InputError(f"unknown risk detectors {unknown}; known: {', '.join(DETECTORS)}")
    standardised = tuple(n for n in detectors if DETECTORS[n].self_standardised)
    if "curvature" in detectors and rods is None:
        raise InputError("the RODS curvature detector needs --rods")
    missing = sorted(set(detectors) - set(given.needs))
    if missing:
        raise ValueError(f"the given maps were loaded without {missing}")  # a programming error
    folders = list(data) if isinstance(data, (list, tuple)) else [data]
    kind = None if lesion_cases else "healthy"
    cases = [case for folder in folders
             for case in cases_in_split(folder, split, kind if has_manifest(folder) else None)[:max_cases]]
    if not cases:
        raise InputError(f"{', '.join(map(str, folders))}: no {kind or 'healthy or lesion'} {split} cases to "
                         f"calibrate the risk map on")
    probe = dataclasses.replace(rods, eps=float("inf")) if rods is not None else None
    source_only = probe is None and set(detectors) <= set(SOURCE_MAPS)
    slice_curvature = []

    def fitted_maps():  # (brain, the risk's maps, the voxels fitted on) per case
        for path in tqdm(cases, desc="risk calibration", unit="case"):
            prepared = prepare_case(read_case(path, (cfg.source,)), cfg.spacing_mm, cfg.in_plane)
            if prepared.seg is None and lesion_cases:
                raise InputError(f"{path}: no lesion labels; --lesion-cases fits on each case's brain outside them")
            healthy = prepared.brain if prepared.seg is None else prepared.brain & (prepared.seg == 0)
            if source_only:  # nothing recorded during sampling: the source's maps alone
                yield prepared.brain, given.source_maps(prepared), healthy
                continue
            recorder = VolumeRecorder(prepared.grid.shape, last_k)
            translation = translate_prepared(denoiser, prepared, seed=seed, batch_size=batch_size, progress=False,
                                             recorder=recorder, sample_batch=batch_sampler("ddim", steps, rods=probe))
            if probe is not None:
                slice_curvature.append(recorder.slice_values("curvature")[prepared.brain_slices()])
            yield prepared.brain, recorder.volumes(given.maps(prepared, translation, steps=steps, seed=seed,
                                                              batch_size=batch_size)), healthy

    what = (f"{len(cases)} {split} cases (healthy, and lesion cases outside their lesion labels)" if lesion_cases
            else f"{len(cases)} healthy {split} cases")
    definition = risk_definition(detectors, smoothing, combination, standardised, false_positive_rate,
                                 fitted_on=f"{what} of {', '.join(str(folder) for folder in folders)}, "
                                           f"DDIM-{steps}, seed {seed}",
                                 confident_ml=confident_ml, grow=grow, weights=weights)
    calibration = fit_on_volumes(fitted_maps(), detectors, smoothing, combination, standardised,
                                 false_positive_rate, last_k=last_k, steps=steps, definition=definition,
                                 confident_ml=confident_ml, grow=grow, weights=weights)
    if probe is not None:  # the eps flagging false_positive_rate of healthy slices
        eps = float(np.quantile(np.concatenate(slice_curvature), 1 - false_positive_rate))
        calibration = dataclasses.replace(calibration, rods=dataclasses.replace(rods, eps=eps))
    return calibration


def calibrate_robust_ood(bank_path: str | Path, data: str | Path, *, split: str = "val", max_cases: int = 10,
                         standardise: bool | None = None, bias_correct: bool | None = None,
                         location: str | None = None, mask_level: float | None = None):
    """Fit a :class:`~localdiffusion.ood.robust.RobustCalibration` for the bank at ``bank_path`` on the
    healthy cases of ``split`` (:meth:`~localdiffusion.ood.robust.RobustCalibration.fit`; ``standardise``,
    ``bias_correct``, ``location``, ``mask_level`` None: the contrast's choice, ``ood.robust.PREPROCESSING``)."""
    from localdiffusion.ood.patchcore import PatchCore
    from localdiffusion.ood.robust import PREPROCESSING, RobustCalibration
    from localdiffusion.ood.volume import bank_grid

    bank = PatchCore.load(bank_path)
    contrast = bank.meta["modality"]
    chosen = PREPROCESSING[contrast]
    cases = cases_in_split(data, split, "healthy" if has_manifest(data) else None)[:max_cases]
    if not cases:
        raise InputError(f"{data}: no healthy {split} cases to fit the robust OOD calibration on")
    volumes = []
    for path in tqdm(cases, desc=f"robust OOD {contrast}", unit="case"):
        prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
        volumes.append((prepared.images[contrast], prepared.brain, prepared.grid.affine))
    return RobustCalibration.fit(bank, volumes, chosen["standardise"] if standardise is None else standardise,
                                 bias_correct=chosen["bias_correct"] if bias_correct is None else bias_correct,
                                 location=chosen["location"] if location is None else location,
                                 mask_level=chosen["mask_level"] if mask_level is None else mask_level)


def calibrate_gate(data: str | Path | list, models_root: str | Path, *, split: str = "val", max_cases: int = 10,
                   contrasts: tuple[str, ...] = ("t1", "flair")) -> InputGate:
    """Fit the input gate on the healthy cases of ``split``: per contrast the range of the
    depth-intensity correlation, the largest fraction of brain its bank flags and the largest
    median OOD probability and the strongest coil field (for the messages and the field check; the thresholds
    are policy, input_gate.py). ``data``: one cohort or several (e.g. the same subjects scanned with each T1
    kind and coil field the gate must accept), at most ``max_cases`` from each."""
    from localdiffusion.ood.patchcore import PatchCore
    from localdiffusion.ood.volume import bank_grid
    from localdiffusion.shipped import ood_bank_path
    from localdiffusion.volume.bias import field_strength

    folders = list(data) if isinstance(data, (list, tuple)) else [data]
    cases = [case for folder in folders
             for case in cases_in_split(folder, split, "healthy" if has_manifest(folder) else None)[:max_cases]]
    if len(cases) < 3:
        names = ", ".join(str(folder) for folder in folders)
        raise InputError(f"{names}: {len(cases)} healthy {split} cases; the input gate needs at least 3")
    correlation, flagged, typical, fields = {}, {}, {}, {}
    for contrast in contrasts:
        bank = PatchCore.load(ood_bank_path(models_root, contrast), modality=contrast, model_root=models_root)
        values, summaries, strengths = [], [], []
        for path in tqdm(cases, desc=f"input gate {contrast}", unit="case"):
            prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
            values.append(depth_correlation(prepared.images[contrast], prepared.brain, prepared.grid.spacing))
            summaries.append(MapSummary.of(probability_volume(bank, prepared), prepared.brain, bank.threshold))
            strengths.append(field_strength(prepared.images[contrast], prepared.brain, prepared.grid.spacing))
        correlation[contrast] = (float(np.min(values)), float(np.max(values)))
        flagged[contrast] = float(max(s.flagged for s in summaries))
        typical[contrast] = float(max(s.typical for s in summaries))
        fields[contrast] = float(max(strengths))
    return InputGate(correlation, flagged, len(cases), split, typical, fields)
