"""Hallucination benchmark v2: the run matrix (rows x cases x seeds), cached per cell.

Rows (:func:`benchmark_rows`): the local healthy mapping (a pixel-wise lookup, no context),
the plain samplers (DDIM-25 on every seed, DDPM-100 on the first), and Local Diffusion
(DDIM-25, every seed) with the oracle mask (the tumour label), the source-modality U-Net's
mask and the product's PatchCore mask, each with the IND floor of the paper (0) and of the
reference code (0.95), and, when the source bank has a robust calibration, with the robust
PatchCore mask (:mod:`~localdiffusion.ood.robust`), paired against the bank's mask. Every cell
(row, case, seed) is computed once and kept in a cache
(:class:`Cache`, keyed by the row's settings, the model files, the case and the seed), so
a re-run computes only what changed.

Cases are the tumour cases of a split; a case's evaluated slices are those whose tumour
covers at least 1% of the slice (as in the paper), at most ``max_slices`` of them, evenly
spread and always including the slice with the most tumour. Summaries are mean and
standard deviation over (case, seed); differences against DDIM-25 are paired per case
(seeds averaged) with bootstrap intervals (:func:`~research.bench.scoring.paired_bootstrap`).

Rows may run another model of the same direction (``Row.model``, e.g. a VSM-trained one,
see :func:`variant_rows`); such a row names the plain row it is to be compared with
(``Row.compare_to``) and its paired differences against that row are reported too.

Masks: the oracle is the label as it is; the PatchCore mask is the source bank's calibrated
threshold, the robust PatchCore mask the robust calibration's (the same 1% of healthy validation
voxels), and the U-Net mask the source segmenter's tumour prediction, all post-processed
(:func:`~localdiffusion.methods.local_diffusion.branch_weight_volume`). Loading models and
writing files: :mod:`research.bench.runner`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from research.bench.reference import HealthyLookup
from research.bench.scoring import COMPARED, paired_bootstrap, row_metrics
from localdiffusion.data.readers import read_case
from localdiffusion.errors import InputError
from localdiffusion.methods.local_diffusion import LocalDiffusionConfig, LocalDiffusionPlan, branch_weight_volume
from localdiffusion.metrics import axial_stack
from localdiffusion.volume.batching import batch_sampler, translate_prepared
from localdiffusion.options import default
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

BENCHMARK_VERSION = 3  # 3: halo_error and mask_edge_excess
MIN_TUMOUR_FRACTION = 0.01
#: the reference sampler and step count every row is paired against (DDIM-25; the shipped models sample
#: with fewer steps, research/steps)
BASELINE_SAMPLER, BASELINE_STEPS = default("sampler"), 25
BASELINE = f"{BASELINE_SAMPLER.upper()}-{BASELINE_STEPS}"
ROBUST_MASK = "robust patchcore"  # Local Diffusion branching on the acquisition-robust OOD map


@dataclass(frozen=True)
class Row:
    kind: str  # "truth" (the upper bound), "lookup", "baseline" or "ld"
    sampler: str = "ddim"
    steps: int = 25
    mask: str | None = None  # ld: "oracle", "unet", "patchcore" or ROBUST_MASK
    ind_floor: float | None = None
    all_seeds: bool = True  # False: the first seed only
    model: str | None = None  # another model's label (run_benchmark's ``models``); None: the direction's model
    compare_to: str | None = None  # the row this one is paired against (besides DDIM-25)

    def key(self, ld_config: LocalDiffusionConfig, gate: bool) -> dict:
        extra = {"ld": dataclasses.asdict(ld_config), "gate": gate} if self.kind == "ld" else {}
        own = {k: v for k, v in dataclasses.asdict(self).items()
               if k != "compare_to" and (k != "model" or v is not None)}  # the pairing changes no cell
        return {**own, **extra}


def ld_row_name(mask: str, floor: float) -> str:
    return f"LD {mask} mask, IND floor {floor:g}"


def benchmark_rows(T: int, with_patchcore: bool = True, with_unet: bool = True, with_robust: bool = False
                   ) -> dict[str, Row]:
    rows = {"true target (upper bound)": Row("truth", all_seeds=False),
            "local healthy mapping (lookup)": Row("lookup", all_seeds=False),
            BASELINE: Row("baseline", BASELINE_SAMPLER, min(BASELINE_STEPS, T)),
            "DDPM-100": Row("baseline", "ddpm", min(100, T), all_seeds=False)}
    masks = ["oracle"] + (["unet"] if with_unet else []) + (["patchcore"] if with_patchcore else [])
    for mask in masks:
        for floor in (0.95, 0.0):
            rows[ld_row_name(mask, floor)] = Row("ld", BASELINE_SAMPLER, min(BASELINE_STEPS, T), mask, floor)
    if with_robust:
        for floor in (0.95, 0.0):
            rows[ld_row_name(ROBUST_MASK, floor)] = Row("ld", BASELINE_SAMPLER, min(BASELINE_STEPS, T), ROBUST_MASK, floor,
                                                        compare_to=ld_row_name("patchcore", floor))
    return rows


def step_rows(T: int, steps: int, reference: int = 25, with_robust: bool = False) -> dict[str, Row]:
    """The plain row and the Local Diffusion rows (oracle, PatchCore and, ``with_robust``, robust PatchCore
    masks; both IND floors) sampled with DDIM-``reference`` and with DDIM-``steps``, each of the latter
    paired against its DDIM-``reference`` namesake. Names carry the step count (``DDIM-5``,
    ``LD oracle mask, IND floor 0, DDIM-5``)."""
    rows = {}
    for count in (reference, steps):
        count = min(count, T)
        against = None if count == min(reference, T) else min(reference, T)
        plain = f"{BASELINE_SAMPLER.upper()}-{count}"
        rows[plain] = Row("baseline", BASELINE_SAMPLER, count,
                          compare_to=against and f"{BASELINE_SAMPLER.upper()}-{against}")
        masks = ["oracle", "patchcore"] + ([ROBUST_MASK] if with_robust else [])
        for mask in masks:
            for floor in (0.95, 0.0):
                name = ld_row_name(mask, floor)
                rows[f"{name}, {plain}"] = Row("ld", BASELINE_SAMPLER, count, mask, floor, compare_to=against and
                                               f"{name}, {BASELINE_SAMPLER.upper()}-{against}")
    return rows


def shipped_rows(T: int, steps: int, ind_floor: float = default("ind_floor")) -> dict[str, Row]:
    """The two translations ``run`` writes, as it samples them: the plain sampler with the model's own
    step count and Local Diffusion on the product's mask (the robust PatchCore map) with the product's
    IND floor, the latter paired against the former (rows ``shipped DDIM-<s>``, ``shipped LD, DDIM-<s>``)."""
    steps = min(steps, T)
    plain = f"shipped {BASELINE_SAMPLER.upper()}-{steps}"
    return {plain: Row("baseline", BASELINE_SAMPLER, steps),
            f"shipped LD, {BASELINE_SAMPLER.upper()}-{steps}": Row("ld", BASELINE_SAMPLER, steps, ROBUST_MASK,
                                                                 ind_floor, compare_to=plain)}


def level_mask(level: float) -> str:
    """The mask kind of the robust PatchCore mask tightened to ``level`` (research/ood_masks level sets)."""
    return f"{ROBUST_MASK} level {level:g}"


def level_rows(T: int, levels) -> dict[str, Row]:
    """Local Diffusion (DDIM-25, IND floor 0.95) on the robust PatchCore mask tightened to each level set
    (:func:`localdiffusion.ood.postprocess.level_set`), each paired against the robust PatchCore mask."""
    return {ld_row_name(level_mask(level), 0.95): Row("ld", BASELINE_SAMPLER, min(BASELINE_STEPS, T), level_mask(level),
                                                     0.95, compare_to=ld_row_name(ROBUST_MASK, 0.95))
            for level in levels}


def variant_rows(label: str, T: int, steps: int = BASELINE_STEPS) -> dict[str, Row]:
    """Rows of another model ``label`` (e.g. "VSM") sampled with the DDPM update (where a learned
    variance acts) beside the same rows of the direction's model: alone and with Local
    Diffusion (oracle mask, IND floor 0)."""
    steps = min(steps, T)
    plain, plain_ld = f"DDPM-{steps}", f"LD oracle mask, IND floor 0, DDPM-{steps}"
    return {plain: Row("baseline", "ddpm", steps),
            f"{label} DDPM-{steps}": Row("baseline", "ddpm", steps, model=label, compare_to=plain),
            plain_ld: Row("ld", "ddpm", steps, "oracle", 0.0),
            f"{label} + {plain_ld}": Row("ld", "ddpm", steps, "oracle", 0.0, model=label, compare_to=plain_ld)}


def evaluation_slices(seg: np.ndarray, max_slices: int | None = None,
                      min_fraction: float = MIN_TUMOUR_FRACTION) -> np.ndarray:
    """Slices with at least ``min_fraction`` tumour; at most ``max_slices``, evenly spread, with the largest."""
    area = (seg > 0).mean(axis=(0, 1))
    ks = np.flatnonzero(area >= min_fraction)
    if max_slices is None or len(ks) <= max_slices:
        return ks
    picked = set(ks[np.linspace(0, len(ks) - 1, max_slices).round().astype(int)].tolist())
    largest = int(ks[np.argmax(area[ks])])
    if largest not in picked:
        picked.discard(min(picked, key=lambda k: abs(k - largest)))
        picked.add(largest)
    return np.array(sorted(picked))


class Cache(Protocol):
    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...


class MemoryCache(dict):
    def put(self, key: str, value: dict) -> None:
        self[key] = value


def cell_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def case_identity(path: str | Path) -> str:
    """The content of a case folder (every file's name and bytes): two cohorts may share case ids (the lesion
    families scanned with each T1 kind), so a cached cell is keyed by what was read, not by the id."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:24]


def case_masks(prepared, source: str, ood_bank=None, source_segmenter=None, ks=None, robust=None,
               levels=()) -> dict[str, tuple]:
    """Per mask kind: (OOD map with its threshold, LocalDiffusionConfig overrides). ``robust``: the
    bank's :class:`~localdiffusion.ood.robust.RobustCalibration`, for the robust PatchCore mask and its
    level sets at ``levels`` (:func:`level_mask`)."""
    import dataclasses

    from localdiffusion.ood.postprocess import level_set
    from localdiffusion.ood.volume import OodMap, bank_map

    masks = {"oracle": (OodMap((prepared.seg > 0).astype(np.float32), 0.5), {"min_component": 0})}
    if ood_bank is not None:
        masks["patchcore"] = (bank_map(ood_bank, prepared), {})
    if ood_bank is not None and robust is not None:  # the map run writes, with its score and mask level
        robust_map = robust.ood_map(ood_bank, prepared.images[source], prepared.brain, prepared.grid.affine).map
        masks[ROBUST_MASK] = (robust_map, {})
        thresholded = dataclasses.replace(robust_map, mask_level=0.0)
        for level in levels:
            hard = branch_weight_volume(thresholded, LocalDiffusionConfig(mask_mode="hard"), prepared.brain) >= 0.5
            tight = level_set(hard, robust_map.score, level)
            masks[level_mask(level)] = (OodMap(tight.astype(np.float32), 0.5), {"min_component": 0})
    if source_segmenter is not None:
        ks = prepared.brain_slices() if ks is None else ks
        vol = np.zeros(prepared.grid.shape, np.float32)
        vol[:, :, ks] = np.moveaxis(source_segmenter.tumour(axial_stack(prepared.images[source], ks)).numpy(), 0, 2)
        masks["unet"] = (OodMap(vol, 0.5), {})
    return masks


def run_benchmark(denoiser, data: str | Path, segmenter, lookup: HealthyLookup, *, split: str = "test",
                  ood_bank=None, source_segmenter=None, gate=None, seeds=(0,), max_cases: int | None = None,
                  max_slices: int | None = 4, ld_config: LocalDiffusionConfig | None = None,
                  rows: dict[str, Row] | None = None, cache: Cache | None = None, model_id: str = "",
                  batch_size: int = 8, progress: bool = True, models: dict[str, tuple] | None = None,
                  robust: tuple | None = None) -> dict:
    """Every (row, case, seed) cell, from ``cache`` where it is there; returns summaries,
    per-case values, paired differences against DDIM-25 and the montage slices.

    ``models``: label -> (denoiser, files id) of the other models rows may name (``Row.model``);
    ``robust``: (the source bank's robust calibration, its file id), for the robust PatchCore rows."""
    models = models or {}
    cfg = denoiser.config
    cache = cache if cache is not None else MemoryCache()
    cases = cases_in_split(data, split, "tumour")
    ld_config = ld_config or LocalDiffusionConfig()
    rows = rows or benchmark_rows(denoiser.schedule.num_train_timesteps, ood_bank is not None,
                                  source_segmenter is not None, ood_bank is not None and robust is not None)
    robust_calibration, robust_id = robust or (None, "")
    cells = {name: [] for name in rows}
    montage, evaluated, computed = [], 0, 0
    for path in cases:
        if max_cases is not None and len(montage) >= max_cases:
            break  # max_cases counts evaluated cases (a case may have no slice with enough tumour)
        prepared = prepare_case(read_case(path, (cfg.source, cfg.target)), cfg.spacing_mm, cfg.in_plane)
        ks = evaluation_slices(prepared.seg, max_slices)
        if ks.size == 0:
            continue
        identity = case_identity(path)
        evaluated += len(ks)
        truth, source = prepared.images[cfg.target], prepared.images[cfg.source]
        local = np.where(prepared.brain, lookup(source), 0.0).astype(np.float32)
        masks = None
        z = int(ks[np.argmax((prepared.seg[:, :, ks] > 0).sum(axis=(0, 1)))])
        shown = {"case_id": prepared.case_id, "z": z, "condition": source[:, :, z], "truth": truth[:, :, z],
                 "tumour": prepared.seg[:, :, z] > 0, "pred": {}, "masks": {}}
        for name, row in rows.items():
            for seed in (seeds if row.all_seeds else seeds[:1]):
                row_model, row_id = models[row.model] if row.model else (denoiser, None)
                key_parts = (model_id,) if row_id is None else (model_id, row_id)
                key_parts += (robust_id,) if row.mask == ROBUST_MASK else ()
                key = cell_key(BENCHMARK_VERSION, *key_parts, row.key(ld_config, gate is not None), prepared.case_id,
                               identity, seed, ks.tolist())
                cell = cache.get(key)
                if cell is None:
                    if masks is None and (row.kind == "ld" or robust_calibration is not None):
                        levels = sorted({float(r.mask.rsplit(" level ", 1)[1]) for r in rows.values()
                                         if r.mask and " level " in r.mask})
                        masks = case_masks(prepared, cfg.source, ood_bank, source_segmenter, ks,
                                           robust_calibration, levels)
                    pred, seconds, records = _translate(row_model, prepared, row, masks, ld_config, gate, seed, ks,
                                                        local, truth, batch_size)
                    cell = {"case_id": prepared.case_id, "seed": seed, "slices": len(ks),
                            **row_metrics(pred, truth, prepared.brain, prepared.seg, ks, segmenter, local,
                                          _product_mask(masks, ld_config, prepared.brain)),
                            "seconds_per_slice": seconds / len(ks), "ld": records,
                            "montage": pred[:, :, z].astype(np.float16).tolist()}
                    cache.put(key, cell)
                    computed += 1
                    if progress:
                        print(f"{prepared.case_id} seed {seed} {name}: {len(ks)} slices, {seconds:.0f} s, "
                              f"healing {cell['healing_rate']:.3f}, tumour Dice {cell['tumour_dice']:.3f}", flush=True)
                if seed == seeds[0]:
                    shown["pred"][name] = np.asarray(cell["montage"], np.float32)
                cells[name].append({k: v for k, v in cell.items() if k != "montage"})
        if masks is not None:
            shown["masks"] = {kind: branch_weight_volume(volume, dataclasses.replace(ld_config, **overrides),
                                                         prepared.brain)[:, :, z] for kind, (volume, overrides)
                              in masks.items()}
        montage.append(shown)
    if not montage:
        raise InputError(f"{data}: no {split} tumour case has an axial slice with at least {MIN_TUMOUR_FRACTION:.0%} "
                         f"of its area in the lesion labels: nothing to evaluate")
    return {"direction": f"{cfg.source}->{cfg.target}", "split": split, "seeds": list(seeds), "cases": len(montage),
            "evaluated_slices": evaluated, "max_slices": max_slices, "min_tumour_fraction": MIN_TUMOUR_FRACTION,
            "rows": summarise(cells), "differences": differences(cells),
            "paired_differences": paired_differences(cells, rows), "ld_records": ld_summary(cells),
            "cells": cells, "ld_config": dataclasses.asdict(ld_config), "gate": gate is not None,
            "computed_cells": computed, "montage": montage, "version": BENCHMARK_VERSION}


def _product_mask(masks, ld_config, brain):
    """The hard branching mask ``run`` uses (the robust PatchCore map), or None without it."""
    if not masks or ROBUST_MASK not in masks:
        return None
    volume, overrides = masks[ROBUST_MASK]
    return branch_weight_volume(volume, dataclasses.replace(ld_config, mask_mode="hard", **overrides), brain) >= 0.5


def _translate(denoiser, prepared, row: Row, masks, ld_config, gate, seed, ks, local, truth, batch_size):
    t0 = time.perf_counter()
    if row.kind in ("lookup", "truth"):
        return (local if row.kind == "lookup" else truth), time.perf_counter() - t0, None
    plan = None
    if row.kind == "baseline":
        sample = batch_sampler(row.sampler, row.steps)
    else:
        volume, overrides = masks[row.mask]
        config = dataclasses.replace(ld_config, ind_floor=row.ind_floor, **overrides)
        plan = LocalDiffusionPlan(volume, config, gate, brain_volume=prepared.brain)
        sample = batch_sampler(row.sampler, row.steps, method=plan)
    pred = translate_prepared(denoiser, prepared, seed=seed, batch_size=batch_size, progress=False,
                              sample_batch=sample, slices=ks)
    records = list(plan.slice_records().values()) if plan is not None else None
    return pred, time.perf_counter() - t0, records


def _per_case(runs: list[dict], column: str) -> dict[str, float]:
    """Case -> the column's mean over that case's seeds."""
    by_case: dict[str, list] = {}
    for r in runs:
        by_case.setdefault(r["case_id"], []).append(r[column])
    return {c: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in by_case.items()}


def summarise(cells: dict[str, list[dict]]) -> dict:
    columns = [c for c in cells[next(iter(cells))][0] if c not in ("case_id", "seed", "slices", "ld")] if cells else []
    out = {}
    for name, runs in cells.items():
        out[name] = {}
        for column in columns:
            values = np.array([r[column] for r in runs], np.float64)
            finite = values[np.isfinite(values)]
            out[name][column] = (float(finite.mean()), float(finite.std())) if len(finite) else (float("nan"),) * 2
    return out


def differences(cells: dict[str, list[dict]], columns=COMPARED) -> dict:
    """Row -> column -> paired difference against DDIM-25 (per case, seeds averaged) with its interval."""
    if BASELINE not in cells:
        return {}
    columns = _present(cells, columns)
    base = {c: _per_case(cells[BASELINE], c) for c in columns}
    return {name: {c: paired_bootstrap(_per_case(runs, c), base[c]) for c in columns}
            for name, runs in cells.items() if name != BASELINE}


def paired_differences(cells: dict[str, list[dict]], rows: dict[str, Row], columns=COMPARED) -> dict:
    """Row -> its ``compare_to`` row and the paired differences against it (rows that name one)."""
    out = {}
    columns = _present(cells, columns)
    for name, row in rows.items():
        if row.compare_to and row.compare_to in cells and cells[name]:
            ref = {c: _per_case(cells[row.compare_to], c) for c in columns}
            out[name] = {"against": row.compare_to,
                         **{c: paired_bootstrap(_per_case(cells[name], c), ref[c]) for c in columns}}
    return out


def _present(cells: dict[str, list[dict]], columns) -> list[str]:
    """The columns every computed cell has (the harm columns need the product's mask)."""
    runs = [r for rows in cells.values() for r in rows]
    return [c for c in columns if all(c in r for r in runs)]


def ld_summary(cells: dict[str, list[dict]]) -> dict:
    """Per Local Diffusion row: how many evaluated slices branched, were judged by the gate, re-branched."""
    out = {}
    for name, runs in cells.items():
        records = [rec for r in runs if r.get("ld") for rec in r["ld"]]
        if records:
            out[name] = {"slices": len(records), "branched": sum(r["branched"] for r in records),
                         "judged": sum(r["judged"] > 0 for r in records),
                         "rebranched": sum(r["rebranches"] > 0 for r in records),
                         "fused_at": sorted({r["fused_at"] for r in records if r["branched"]})}
    return out

