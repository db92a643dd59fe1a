"""Hallucination benchmark: baseline samplers against Local Diffusion with three masks.

The run matrix: rows (samplers, RODS, Local Diffusion with three masks) x seeds x the tumour
cases of a split, on slices whose tumour covers at least 1% of the slice (as in the paper).
Per row, case and seed: the metrics of :mod:`~localdiffusion.benchmark.scoring` and the
sampling seconds per evaluated slice. Summaries are mean and standard deviation over
(case, seed) pairs. Loading models and writing results: :mod:`localdiffusion.jobs.benchmark`.

Hallucination detection (on the DDIM-25 row; defined before measuring): a slice is
*hallucinated* when the tumour Dice between the segmentation U-Net on the translation and
the same U-Net on the true target is below 0.5. Slice scores: mean over brain voxels of the
x0-trajectory variance (last K steps), of the OOD probability and of the calibrated risk;
their AUROC for hallucinated slices. With a RODS calibration, the row "DDIM-25 + RODS"
gives RODS's detected % (hallucinated plain slices that RODS flagged), corrected % (of
those, no longer hallucinated with RODS), new-hallucination % (plain slices fine, RODS
slices hallucinated) and its time against the plain sampler.

Masks: the oracle is the tumour label as it is; the PatchCore mask is the source-modality
bank's calibrated threshold, post-processed (:func:`~localdiffusion.methods.local_diffusion.branch_weight_volume`);
the U-Net mask is the source-modality segmenter's tumour prediction, post-processed the same way.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from localdiffusion.benchmark.scoring import COLUMNS, detection_records, detection_summary, row_metrics
from localdiffusion.data.cohort import cases_in_split
from localdiffusion.data.readers import read_case
from localdiffusion.detectors.maps import VolumeRecorder
from localdiffusion.methods.local_diffusion import LocalDiffusionConfig, LocalDiffusionPlan, branch_weight_volume
from localdiffusion.metrics import axial_stack
from localdiffusion.volume.batching import batch_sampler, translate_prepared
from localdiffusion.volume.grid import prepare_case

MIN_TUMOUR_FRACTION = 0.01


def evaluation_slices(seg: np.ndarray, min_fraction: float = MIN_TUMOUR_FRACTION) -> np.ndarray:
    area = (seg > 0).mean(axis=(0, 1))
    return np.flatnonzero(area >= min_fraction)


def case_masks(prepared, source: str, ood_bank=None, source_segmenter=None, ks=None) -> dict[str, tuple]:
    """Per mask kind: (volume, LocalDiffusionConfig overrides)."""
    from localdiffusion.ood.volume import probability_volume

    masks = {"oracle": ((prepared.seg > 0).astype(np.float32), {"threshold": 0.5, "min_component": 0})}
    if ood_bank is not None:
        masks["patchcore"] = (probability_volume(ood_bank, prepared), {"threshold": ood_bank.threshold})
    if source_segmenter is not None:
        ks = prepared.brain_slices() if ks is None else ks
        vol = np.zeros(prepared.grid.shape, np.float32)
        vol[:, :, ks] = np.moveaxis(source_segmenter.tumour(axial_stack(prepared.images[source], ks)).numpy(), 0, 2)
        masks["unet"] = (vol, {"threshold": 0.5})
    return masks


def benchmark_rows(T: int, with_patchcore: bool, with_unet: bool, with_rods: bool = False) -> dict[str, tuple]:
    rows = {"DDPM-100": ("baseline", "ddpm", 100), "DDIM-25": ("baseline", "ddim", 25),
            "DDIM-50": ("baseline", "ddim", 50)}
    if with_rods:
        rows["DDIM-25 + RODS"] = ("rods", "ddim", 25)
    rows["LD oracle mask (DDIM-25)"] = ("oracle", "ddim", 25)
    if with_patchcore:
        rows["LD PatchCore mask (DDIM-25)"] = ("patchcore", "ddim", 25)
    if with_unet:
        rows["LD U-Net mask (DDIM-25)"] = ("unet", "ddim", 25)
    return {name: (kind, sampler, min(steps, T)) for name, (kind, sampler, steps) in rows.items()}


def run_benchmark(denoiser, data: str | Path, segmenter, *, split: str = "test", ood_bank=None, source_segmenter=None,
                  gate=None, seeds=(0,), max_cases: int | None = None, ld_config: LocalDiffusionConfig | None = None,
                  risk_calibration=None, batch_size: int = 8, progress: bool = True) -> dict:
    """Rows x seeds x cases; returns per-row mean and std over (case, seed) and the per-case values.

    ``montage`` in the result holds, per case, the seed-0 predictions at its slice with the
    most tumour (for :func:`montage_figure`).
    """
    cfg = denoiser.config
    cases = cases_in_split(data, split, "tumour")[:max_cases]
    ld_config = ld_config or LocalDiffusionConfig()
    rods = getattr(risk_calibration, "rods", None)
    rows = benchmark_rows(denoiser.schedule.num_train_timesteps, ood_bank is not None, source_segmenter is not None,
                          rods is not None)
    per_case = {name: [] for name in rows}
    upper, montage, evaluated, records = [], [], 0, []
    for path in cases:
        prepared = prepare_case(read_case(path, (cfg.source, cfg.target)), cfg.spacing_mm, cfg.in_plane)
        ks = evaluation_slices(prepared.seg)
        if ks.size == 0:
            continue
        evaluated += len(ks)
        tumour = prepared.seg > 0
        masks = case_masks(prepared, cfg.source, ood_bank, source_segmenter, ks)
        mask_configs = {kind: dataclasses.replace(ld_config, **overrides) for kind, (_, overrides) in masks.items()}
        upper.append(row_metrics(prepared.images[cfg.target], prepared.images[cfg.target], prepared.brain, tumour,
                                 ks, segmenter))
        z = int(ks[np.argmax(tumour[:, :, ks].sum(axis=(0, 1)))])
        shown = {"case_id": prepared.case_id, "z": z, "condition": prepared.images[cfg.source][:, :, z],
                 "truth": prepared.images[cfg.target][:, :, z], "tumour": tumour[:, :, z], "pred": {}}
        for seed in seeds:
            recorders = {}
            for name, (kind, sampler, steps) in rows.items():
                if kind == "baseline":
                    sample = batch_sampler(sampler, steps)
                elif kind == "rods":
                    sample = batch_sampler(sampler, steps, rods=rods)
                else:
                    sample = batch_sampler(sampler, steps, method=LocalDiffusionPlan(
                        masks[kind][0], mask_configs[kind], gate, brain_volume=prepared.brain))
                recorder = None
                if risk_calibration is not None and name in ("DDIM-25", "DDIM-25 + RODS"):
                    recorder = VolumeRecorder(prepared.grid.shape, risk_calibration.last_k)
                t0 = time.perf_counter()
                pred = translate_prepared(denoiser, prepared, seed=seed, batch_size=batch_size, progress=False,
                                          sample_batch=sample, slices=ks, recorder=recorder)
                seconds = time.perf_counter() - t0
                if recorder is not None:
                    recorders[name] = (recorder, pred)
                metrics = row_metrics(pred, prepared.images[cfg.target], prepared.brain, tumour, ks, segmenter)
                per_case[name].append({"case_id": prepared.case_id, "seed": seed, **metrics,
                                       "seconds_per_slice": seconds / len(ks)})
                if seed == seeds[0]:
                    shown["pred"][name] = pred[:, :, z]
                if progress:
                    print(f"{prepared.case_id} seed {seed} {name}: {len(ks)} slices, {seconds:.0f} s, "
                          f"PSNR {metrics['psnr_brain']:.2f}, tumour Dice {metrics['tumour_dice']:.3f}", flush=True)
            if "DDIM-25" in recorders and "patchcore" in masks:
                records += detection_records(recorders, masks["patchcore"][0], prepared, ks, cfg.target, segmenter,
                                             risk_calibration, seed)
        shown["masks"] = {kind: branch_weight_volume(volume, mask_configs[kind], prepared.brain)[:, :, z]
                          for kind, (volume, _) in masks.items()}
        montage.append(shown)
    summary = {name: {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
                      for k in COLUMNS} for name, runs in per_case.items()}
    upper_summary = {k: float(np.mean([u[k] for u in upper])) for k in ("tumour_dice", "misdiagnosis_rate")}
    return {"direction": f"{cfg.source}->{cfg.target}", "split": split, "seeds": list(seeds),
            "cases": len(montage), "evaluated_slices": evaluated, "min_tumour_fraction": MIN_TUMOUR_FRACTION,
            "rows": summary, "per_case": per_case, "upper_bound_true_target": upper_summary,
            "ld_config": dataclasses.asdict(ld_config), "gate": gate is not None, "montage": montage,
            "detection": detection_summary(records), "detection_slices": records,
            "rods": dataclasses.asdict(rods) if rods is not None else None}
