"""Run the hallucination benchmark for a direction and write its JSON, montage and markdown section
(``localdiffusion benchmark``)."""

from __future__ import annotations

import json
from pathlib import Path

from localdiffusion.benchmark.figures import montage_figure
from localdiffusion.benchmark.matrix import run_benchmark
from localdiffusion.benchmark.report import SECTION_END, SECTION_START, json_ready, markdown_section
from localdiffusion.data.io import atomic_path, save_png
from localdiffusion.detectors.risk import RiskCalibration
from localdiffusion.errors import InputError
from localdiffusion.jobs.run import model_paths
from localdiffusion.methods.local_diffusion import PatchCoreGate
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT


def write_results(result: dict, out_json: str | Path) -> None:
    with atomic_path(out_json) as tmp:
        Path(tmp).write_text(json.dumps(json_ready(result), indent=1))


def update_markdown(path: str | Path, section: str) -> None:
    """Replace (or append) the benchmark section of ``path`` atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        text = before + section.rstrip("\n") + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def benchmark_direction(direction: str, data: str | Path, out_dir: str | Path, *, models_root: str | Path | None = None,
                        split: str = "test", seeds=(0,), max_cases: int | None = None, gate: bool = True,
                        command: str = "") -> dict:
    """Load the models of ``direction`` (``t1_to_flair``), run the benchmark, write JSON and PNG."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    root = Path(models_root) if models_root else MODELS_ROOT
    source, target = DIRECTIONS[direction]
    paths = model_paths(root, direction)
    denoiser = load_denoiser(paths["diffusion"])
    bank = PatchCore.load(paths["ood"], modality=source, model_root=root)
    gate_model = PatchCoreGate(PatchCore.load(paths["gate"], modality=target, model_root=root)) if gate else None
    risk_path = paths["diffusion"] / "risk_calibration.json"
    risk = RiskCalibration.load(risk_path) if risk_path.exists() else None
    result = run_benchmark(denoiser, data, load_segmenter(root / f"seg_{target}"), split=split, ood_bank=bank,
                           source_segmenter=load_segmenter(root / f"seg_{source}"), gate=gate_model, seeds=seeds,
                           max_cases=max_cases, risk_calibration=risk)
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
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("hallucination_*.json"), reverse=True)]
    figures = [str((out_dir / r["figure"]).resolve().relative_to(markdown.parent.resolve())) for r in results]
    commands = sorted({r.get("command") or "localdiffusion benchmark" for r in results})
    update_markdown(markdown, markdown_section(results, "`, `".join(commands), figures))
