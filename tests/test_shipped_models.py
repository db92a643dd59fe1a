"""Smoke tests of the shipped weights (monai_bundle/models) on one 2 mm phantom case each.

The real trained models are measured by the benchmarks (research/RECORD.md); these tests
only check that what ships loads, fits its declared size and behaves like a trained model:
a short DDIM translation of a few healthy slices is far closer to the truth than noise,
the OOD map is higher inside a tumour than in healthy brain, the segmenter finds the
tumour, and the risk calibration names its RODS settings.
"""

import numpy as np
import pytest
import torch

from localdiffusion.data.readers import Case
from localdiffusion.detectors.risk import GROSS_ERROR, RISK_DEFAULTS, RiskCalibration
from localdiffusion.jobs.run import JobOptions, model_paths, planned_outputs
from localdiffusion.metrics import psnr
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import probability_volume
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.volume.batching import translate_prepared
from localdiffusion.volume.grid import prepare_case

pytestmark = pytest.mark.slow  # real servers, installs, subprocesses or shipped models


def _prepared(phantom, modalities, spacing=2.0, in_plane=(96, 112)):
    case = Case("smoke", {m: phantom.images[m].astype(np.float32) for m in modalities}, phantom.affine, phantom.seg)
    return prepare_case(case, spacing, in_plane)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_shipped_translation_model_loads_and_translates(direction, healthy_case):
    paths = model_paths(MODELS_ROOT, direction)
    weights = paths["diffusion"] / "model.pt"
    assert weights.stat().st_size <= 25 * 2**20 and (paths["diffusion"] / "MODEL_CARD.md").is_file()
    denoiser = load_denoiser(paths["diffusion"])
    cfg = denoiser.config
    assert (cfg.source, cfg.target) == DIRECTIONS[direction]
    assert 2e6 <= sum(p.numel() for p in denoiser.parameters()) <= 5e6
    prepared = _prepared(healthy_case, (cfg.source, cfg.target), cfg.spacing_mm, cfg.in_plane)
    ks = prepared.brain_slices()
    ks = ks[len(ks) // 2 - 2: len(ks) // 2 + 2]
    pred = translate_prepared(denoiser, prepared, steps=5, slices=ks, progress=False)
    truth, brain = prepared.images[cfg.target], prepared.brain
    as_t = lambda a: torch.as_tensor(np.moveaxis(a[:, :, ks], 2, 0)[:, None].astype(np.float32))  # noqa: E731
    model_psnr = psnr(as_t(pred), as_t(truth), as_t(brain) > 0).mean().item()
    shuffled = np.roll(truth, 20, axis=0)  # a plausible image of the wrong anatomy as the yardstick
    wrong_psnr = psnr(as_t(shuffled), as_t(truth), as_t(brain) > 0).mean().item()
    assert model_psnr > 15.0 and model_psnr > wrong_psnr + 8.0, (model_psnr, wrong_psnr)


@pytest.mark.parametrize("modality", ["t1", "flair"])
def test_shipped_ood_bank_scores_the_tumour_above_healthy_brain(modality, tumour_case):
    bank = PatchCore.load(MODELS_ROOT / f"ood_{modality}.pt", modality=modality)
    prepared = _prepared(tumour_case, (modality,))
    prob = probability_volume(bank, prepared)
    tumour, brain = prepared.seg > 0, prepared.brain > 0
    assert prob.shape == prepared.grid.shape and 0 <= prob.min() and prob.max() <= 1
    assert prob[tumour].mean() > prob[brain & ~tumour].mean() + 0.2


def test_shipped_flair_segmenter_finds_the_tumour(tumour_case):
    segmenter = load_segmenter(MODELS_ROOT / "seg_flair")
    prepared = _prepared(tumour_case, ("flair",))
    ks = np.flatnonzero((prepared.seg > 0).mean(axis=(0, 1)) >= 0.01)
    found = segmenter.tumour(torch.as_tensor(np.moveaxis(prepared.images["flair"][:, :, ks], 2, 0)[:, None]))
    truth = torch.as_tensor(np.moveaxis(prepared.seg[:, :, ks] > 0, 2, 0)[:, None])
    dice = 2 * (found & truth).sum().item() / (found.sum().item() + truth.sum().item())
    assert dice > 0.6, dice


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_shipped_risk_calibration_loads_with_its_rods_settings(direction):
    from localdiffusion.network.denoiser import read_config

    paths = model_paths(MODELS_ROOT, direction)
    calibration = RiskCalibration.load(paths["risk"])  # fitted for the model's own step count
    assert calibration.steps == read_config(paths["diffusion"]).steps
    assert calibration.rods is not None and calibration.rods.eps > 0
    # the risk chosen on validation (BENCHMARK section 11), its definition recorded in the file
    chosen = RISK_DEFAULTS[direction]
    assert set(calibration.detectors) == set(chosen.detectors) and calibration.smoothing == chosen.smoothing
    assert calibration.combination == chosen.combination
    assert calibration.confident_ml == chosen.confident_ml
    assert calibration.grow == chosen.grow
    # T1 -> FLAIR shares the false-alarm budget between its two lesion U-Nets (a weighted maximum)
    assert (calibration.weights is None) == (chosen.weights is None)
    assert chosen.weights is None or calibration.weights == pytest.approx(chosen.weights)
    assert set(calibration.standardised) == set(chosen.detectors) & {"cycle", "variance"}
    assert calibration.definition["validated_against"]["healthy_quantile"] == GROSS_ERROR["healthy_quantile"]
    # every file its maps need ships beside it (the reverse model, the robust OOD calibration, the lesion U-Net),
    # so that the main job writes the risk map
    from localdiffusion.detectors.given import GivenMaps

    needed = GivenMaps.files(calibration.needs, paths["ood"], paths["diffusion"], direction)
    assert needed and all(path.exists() for path in needed.values())
    options = JobOptions(direction=direction, sampler="ddim", steps=calibration.steps)
    assert "risk" in planned_outputs("case_t1.nii.gz", "out", options, MODELS_ROOT)


@pytest.mark.parametrize("contrast", ["t1", "flair"])
def test_shipped_robust_calibration_follows_the_validated_preprocessing(contrast):
    # a change of ood/robust.PREPROCESSING without a refit of the shipped file would go unnoticed otherwise
    from localdiffusion.ood.robust import PREPROCESSING, RobustCalibration
    from localdiffusion.shipped import ood_bank_path, robust_calibration_path

    calibration = RobustCalibration.load(robust_calibration_path(ood_bank_path(MODELS_ROOT, contrast)))
    assert calibration.modality == contrast
    assert {"standardise": calibration.standardise, "bias_correct": calibration.bias_correct,
            "location": calibration.location, "mask_level": calibration.mask_level} == PREPROCESSING[contrast]
