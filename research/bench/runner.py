"""Run the hallucination benchmark for a direction and write its JSON, montage and markdown section
(``python -m research.hallucination``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from research.bench.figures import montage_figure
from research.bench.matrix import (BENCHMARK_VERSION, benchmark_rows, level_rows, run_benchmark, shipped_rows, step_rows,
                                   variant_rows)
from research.bench.reference import HealthyLookup
from research.bench.report import SECTION_END, SECTION_START, json_ready, markdown_section
from localdiffusion.data.io import atomic_path, save_png
from localdiffusion.errors import InputError
from localdiffusion.jobs.run import model_paths
from localdiffusion.methods.local_diffusion import LocalDiffusionConfig, PatchCoreGate
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.options import DIRECTIONS, default
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.volume.cohort import load_slice_set


def write_results(result: dict, out_json: str | Path) -> None:
    with atomic_path(out_json) as tmp:
        Path(tmp).write_text(json.dumps(json_ready(result), indent=1), encoding="utf-8")


def update_markdown(path: str | Path, section: str) -> None:
    """Replace (or append) the benchmark section of ``path`` atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        text = before + section.rstrip("\n") + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


class DirCache:
    """Benchmark cells as JSON files under ``root`` (one per key, written atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def put(self, key: str, value: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.root / f"{key}.json") as tmp:
            Path(tmp).write_text(json.dumps(value), encoding="utf-8")


def files_id(*paths: Path) -> str:
    """A short hash of the files (all files under a folder) the results depend on."""
    digest = hashlib.sha256()
    for path in paths:
        for f in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
            if f.is_file() and f.suffix in (".pt", ".json"):
                digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def fit_lookup(data: str | Path, source: str, target: str, splits=("train", "val"), spacing: float = 2.0,
               in_plane=(96, 112)) -> HealthyLookup:
    """The local healthy mapping from the healthy cases of ``splits`` in ``data`` (those that exist)."""
    parts = []
    for split in splits:
        try:
            parts.append(load_slice_set(data, split, (source, target), kind="healthy", spacing=spacing,
                                        in_plane=in_plane))
        except InputError:
            continue
    if not parts:
        raise InputError(f"{data}: no healthy {'/'.join(splits)} cases to fit the local healthy mapping on")
    cat = lambda get: np.concatenate([get(p) for p in parts])  # noqa: E731
    return HealthyLookup.fit(cat(lambda p: p.images[source]), cat(lambda p: p.images[target]), cat(lambda p: p.brain))


def benchmark_direction(direction: str, data: str | Path, out_dir: str | Path, *, models_root: str | Path | None = None,
                        split: str = "test", seeds=(0,), max_cases: int | None = None, max_slices: int | None = 4,
                        gate: bool = default("gate"), lookup_data: str | Path | None = None,
                        cache_dir: str | Path | None = None, ld_config: LocalDiffusionConfig | None = None,
                        rows: list[str] | None = None, command: str = "",
                        variant_models: dict[str, str | Path] | None = None, steps: tuple[int, ...] = (),
                        reference_steps: int = 25, mask_levels: tuple[float, ...] = (), shipped: bool = False) -> dict:
    """Load the models of ``direction`` (``t1_to_flair``), run the benchmark, write JSON and PNG.

    ``lookup_data``: the cohort whose healthy train/val cases fit the local healthy mapping
    (default ``data``); ``cache_dir``: where cells are kept between runs (default: none);
    ``rows``: names of :func:`~research.bench.matrix.benchmark_rows` to run (default: all);
    ``variant_models``: label -> model folder of the same direction (e.g. ``{"VSM": ...}``), whose
    rows (:func:`~research.bench.matrix.variant_rows`) are added; ``steps``: step counts whose plain and Local
    Diffusion rows are added, each paired against its DDIM-``reference_steps`` namesake
    (:func:`~research.bench.matrix.step_rows`); ``mask_levels``: rows on the robust PatchCore mask tightened to
    these level sets (:func:`~research.bench.matrix.level_rows`); ``shipped``: add the two translations ``run``
    writes, sampled as it samples them (:func:`~research.bench.matrix.shipped_rows`)."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    root = Path(models_root) if models_root else MODELS_ROOT
    source, target = DIRECTIONS[direction]
    paths = model_paths(root, direction)
    denoiser = load_denoiser(paths["diffusion"])
    cfg = denoiser.config
    bank = PatchCore.load(paths["ood"], modality=source, model_root=root)
    gate_model = PatchCoreGate(PatchCore.load(paths["gate"], modality=target, model_root=root)) if gate else None
    lookup = fit_lookup(lookup_data or data, source, target, spacing=cfg.spacing_mm, in_plane=cfg.in_plane)
    T = denoiser.schedule.num_train_timesteps
    ld_config = ld_config or LocalDiffusionConfig()
    if ld_config.t_intermediate < 0:  # the options' -1: the model's validated fusion timestep
        ld_config = dataclasses.replace(ld_config, t_intermediate=cfg.fusion_step(-1))
    robust_path = paths["robust"]
    robust = (RobustCalibration.load(robust_path), files_id(robust_path)) if robust_path.exists() else None
    table = benchmark_rows(T, with_robust=robust is not None)
    for count in steps:
        table.update(step_rows(T, count, reference_steps, with_robust=robust is not None))
    if mask_levels and robust is not None:
        table.update(level_rows(T, mask_levels))
    if shipped and robust is not None:
        table.update(shipped_rows(T, cfg.sampling_steps(0)))
    others = {}
    for label, folder in (variant_models or {}).items():
        other = load_denoiser(folder)
        if (other.config.source, other.config.target) != (source, target):
            raise InputError(f"{folder}: translates {other.config.source} -> {other.config.target}, not {direction}")
        others[label] = (other, files_id(folder))
        table.update(variant_rows(label, T))
    unknown = sorted(set(rows or []) - set(table))
    if unknown:
        raise InputError(f"unknown benchmark rows {unknown}; choose from {list(table)}")
    model_id = files_id(paths["diffusion"], paths["ood"], paths["gate"], root / f"seg_{source}", root / f"seg_{target}")
    result = run_benchmark(denoiser, data, load_segmenter(root / f"seg_{target}"), lookup, split=split, ood_bank=bank,
                           source_segmenter=load_segmenter(root / f"seg_{source}"), gate=gate_model, seeds=seeds,
                           max_cases=max_cases, max_slices=max_slices,
                           ld_config=ld_config,
                           cache=DirCache(cache_dir) if cache_dir else None, model_id=model_id,
                           rows={name: row for name, row in table.items() if not rows or name in rows}, models=others,
                           robust=robust)
    result["command"] = command
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["figure"] = f"hallucination_{direction}.png"
    save_png(out_dir / result["figure"], montage_figure(result))
    write_results(result, out_dir / f"hallucination_{direction}.json")
    return result


def render_section(out_dir: str | Path, markdown: str | Path) -> None:
    """Rebuild the benchmark section of ``markdown`` from every JSON result in ``out_dir``."""
    out_dir, markdown = Path(out_dir), Path(markdown)
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out_dir.glob("hallucination_*.json"), reverse=True)]
    results = [r for r in results if r.get("version") == BENCHMARK_VERSION]  # older results lack v2's columns
    figures = [str((out_dir / r["figure"]).resolve().relative_to(markdown.parent.resolve())) for r in results]
    commands = sorted({r.get("command") or "python -m research.hallucination" for r in results})
    update_markdown(markdown, markdown_section(results, "`, `".join(commands), figures))
