"""Risk-map figures at fewer DDIM steps against DDIM-25 (the rule: research/steps/README.md).

Each cell (step count, case, seed) translates one validation volume with plain DDIM at that step
count, exactly as ``calibrate-risk`` does, makes the product's risk map with the calibration fitted
for that step count, and keeps the brain's neighbourhood error and risk in ``--cache``::

    python -m research.steps.risk --direction t1_to_flair --steps 25 5 \\
        --calibration 5=data/steps_val/risk_calibration_ddim5_t1_to_flair.json

(the DDIM-25 calibration is the shipped one unless ``--calibration 25=...`` names another). The
gross-error event's threshold is fixed once, in absolute units, from the DDIM-25 translation (seed 0)
of the healthy cases; every step count's translation is scored against it. Per tumour case
(seeds averaged): voxel AUROC of the risk for the event over the brain, the fraction of event voxels
flagged (risk >= 0.99) and of non-event brain voxels flagged; per healthy case (seed 0): the brain
flagged. Differences against DDIM-25 are paired per case with bootstrap intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from localdiffusion.data.io import atomic_path, save_png
from localdiffusion.data.readers import read_case
from localdiffusion.detectors.given import GivenMaps
from localdiffusion.detectors.maps import VolumeRecorder
from localdiffusion.detectors.risk import GROSS_ERROR, RiskCalibration, risk_volume
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.batching import batch_sampler, translate_prepared
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case
from research.bench.figures import PlaneRow, plane_grid
from research.bench.gross_error import neighbourhood_error
from research.bench.scoring import paired_bootstrap

REFERENCE = 25
FLAG = 0.99  # the product's flag threshold on the risk (options.FLAG_THRESHOLD)
#: worse-side margins of the rule (README): figure -> (margin, +1 if higher is better else -1)
MARGINS = {"auroc": (0.01, 1), "event_flagged": (0.03, 1), "nonevent_flagged": (0.005, -1)}
HEALTHY_FLAGGED_MAX = 0.02


def calibration_for(direction: str, steps: int, named: dict[int, Path]) -> RiskCalibration:
    path = named.get(steps, MODELS_ROOT / direction / "risk_calibration.json")
    calibration = RiskCalibration.load(path)
    if calibration.steps != steps:
        raise SystemExit(f"{path}: fitted for DDIM-{calibration.steps}, not DDIM-{steps}")
    return calibration


def run_cell(denoiser, given: GivenMaps, calibration: RiskCalibration, path: Path, steps: int, seed: int,
             out: Path) -> None:
    """Translate, map and keep one (step count, case, seed) cell as ``out`` (.npz)."""
    cfg = denoiser.config
    prepared = prepare_case(read_case(path, (cfg.source, cfg.target)), cfg.spacing_mm, cfg.in_plane)
    t0 = time.perf_counter()
    recorder = VolumeRecorder(prepared.grid.shape, calibration.last_k)
    translation = translate_prepared(denoiser, prepared, seed=seed, progress=False, recorder=recorder,
                                     sample_batch=batch_sampler("ddim", steps))
    maps = recorder.volumes(given.maps(prepared, translation, steps=steps, seed=seed))
    risk = risk_volume(calibration, maps, prepared.brain, prepared.voxel_ml)
    seconds = time.perf_counter() - t0
    error = neighbourhood_error(translation, prepared.images[cfg.target])
    seg = prepared.seg if prepared.seg is not None else np.zeros(prepared.grid.shape, np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, error=error, risk=risk, brain=prepared.brain, seg=seg, translation=translation,
                                truth=prepared.images[cfg.target], seconds=seconds)


def case_figures(cell: dict, threshold: float) -> dict:
    brain = cell["brain"].astype(bool)
    event = (cell["error"] > threshold) & brain
    risk, flagged = cell["risk"][brain], cell["risk"][brain] >= FLAG
    out = {"event_fraction": float(event[brain].mean()), "brain_flagged": float(flagged.mean())}
    if event.any():
        labels = event[brain]
        out.update(auroc=float(roc_auc_score(labels, risk)), event_flagged=float(flagged[labels].mean()),
                   nonevent_flagged=float(flagged[~labels].mean()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.steps.risk", description=__doc__.splitlines()[0])
    p.add_argument("--direction", required=True, choices=list(DIRECTIONS))
    p.add_argument("--data", type=Path, default=Path("data/bench_val"))
    p.add_argument("--steps", type=int, nargs="+", default=[REFERENCE, 5])
    p.add_argument("--calibration", nargs="*", default=[], help="STEPS=PATH: the risk calibration of a step count")
    p.add_argument("--tumour", type=int, nargs="+", default=[0, 1, 2, 3], help="tumour validation case indices")
    p.add_argument("--healthy", type=int, nargs="+", default=[3, 4], help="healthy validation case indices")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", type=Path, default=Path("data/steps_val/risk_cache"))
    p.add_argument("--out", type=Path, default=None, help="JSON of the figures (default: beside the cache)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    named = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.calibration)}
    source, target = DIRECTIONS[args.direction]
    denoiser = load_denoiser(MODELS_ROOT / args.direction)
    bank_path = ood_bank_path(MODELS_ROOT, source)
    bank = PatchCore.load(bank_path, modality=source, model_root=MODELS_ROOT)
    tumour = [cases_in_split(args.data, "val", "tumour")[i] for i in args.tumour]
    healthy = [cases_in_split(args.data, "val", "healthy")[i] for i in args.healthy]
    # the event threshold's cells first, then each step count's
    plan = [(REFERENCE, path, args.seeds[0]) for path in healthy]
    for steps in args.steps:
        plan += [(steps, path, args.seeds[0]) for path in healthy if steps != REFERENCE]
        plan += [(steps, path, seed) for path in tumour for seed in args.seeds]
    folder = args.cache / args.direction
    loaded = {}
    for n, (steps, path, seed) in enumerate(plan):
        out = folder / f"ddim{steps}_{path.name}_seed{seed}.npz"
        if not out.exists():
            calibration = calibration_for(args.direction, steps, named)
            if steps not in loaded:
                loaded[steps] = GivenMaps.load(calibration.needs, bank, bank_path, MODELS_ROOT / args.direction,
                                               denoiser.config, "cpu")
            t0 = time.perf_counter()
            run_cell(denoiser, loaded[steps], calibration, path, steps, seed, out)
            print(f"[{n + 1}/{len(plan)}] DDIM-{steps} {path.name} seed {seed}: {time.perf_counter() - t0:.0f} s",
                  flush=True)
    cell = lambda steps, path, seed: dict(np.load(folder / f"ddim{steps}_{path.name}_seed{seed}.npz"))  # noqa: E731
    errors = []
    for path in healthy:
        c = cell(REFERENCE, path, args.seeds[0])
        errors.append(c["error"][c["brain"].astype(bool)])
    threshold = float(np.quantile(np.concatenate(errors), GROSS_ERROR["healthy_quantile"]))
    result = {"direction": args.direction, "event_threshold": threshold, "steps": args.steps, "seeds": args.seeds,
              "tumour_cases": [p.name for p in tumour], "healthy_cases": [p.name for p in healthy],
              "command": "python -m research.steps.risk " + " ".join(sys.argv[1:] if argv is None else argv),
              "per_case": {}, "healthy": {}, "seconds": {}, "differences": {}, "passes": {}}
    for steps in args.steps:
        per_case, seconds = {}, []
        for path in tumour:
            cells = [cell(steps, path, seed) for seed in args.seeds]
            seconds += [float(c["seconds"]) for c in cells]
            figures = [case_figures(c, threshold) for c in cells]
            per_case[path.name] = {k: float(np.mean([f[k] for f in figures if k in f])) for k in figures[0]}
        result["per_case"][steps] = per_case
        result["seconds"][steps] = float(np.mean(seconds))
        result["healthy"][steps] = {path.name: case_figures(cell(steps, path, args.seeds[0]), threshold)["brain_flagged"]
                                    for path in healthy}
    for steps in args.steps:
        if steps == REFERENCE:
            continue
        diffs, passes = {}, {}
        for figure, (margin, better) in MARGINS.items():
            d = paired_bootstrap({c: v[figure] for c, v in result["per_case"][steps].items()},
                                 {c: v[figure] for c, v in result["per_case"][REFERENCE].items()})
            worse = d["low"] if better > 0 else d["high"]
            diffs[figure] = d
            passes[figure] = bool(np.isfinite(worse) and better * worse >= -margin)
        passes["healthy_flagged"] = max(result["healthy"][steps].values()) <= HEALTHY_FLAGGED_MAX
        result["differences"][steps], result["passes"][steps] = diffs, passes
    out = args.out or args.cache / f"steps_risk_{args.direction}.json"
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1), encoding="utf-8")
    first = cell(REFERENCE, tumour[0], args.seeds[0])
    centre = [int(np.mean(ix)) for ix in np.nonzero(first["seg"] > 0)] if (first["seg"] > 0).any() else \
        [s // 2 for s in first["seg"].shape]
    rows = []
    for steps in args.steps:
        c = cell(steps, tumour[0], args.seeds[0])
        brain = c["brain"].astype(bool)
        event = (c["error"] > threshold) & brain
        rows += [PlaneRow(f"DDIM-{steps} translation", c["translation"], outline=event),
                 PlaneRow(f"DDIM-{steps} risk", np.where(brain, c["risk"], 0), "viridis", 0.0, 1.0,
                          (c["risk"] >= FLAG) & brain)]
    save_png(out.with_suffix(".png"), plane_grid(rows, centre, f"{args.direction}, {tumour[0].name} seed "
                                                                f"{args.seeds[0]}: red = gross-error event (translation), "
                                                                f"risk >= {FLAG} (risk)"))
    print(json.dumps({"event_threshold": threshold, "differences": result["differences"], "passes": result["passes"],
                      "healthy": result["healthy"], "seconds": result["seconds"]}, indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
