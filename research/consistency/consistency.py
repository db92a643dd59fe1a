"""3D consistency of the translation (research/RECORD.md section 8): banding along z and
quality in the coronal and sagittal planes, of the truth and of each variant.

    python -m research.consistency.consistency --data data/gate_test_healthy data/bench_test --direction t1_to_flair \\
        --max-cases 5 --variants independent z2 --out research/results/consistency_t1_to_flair.json \\
        --png research/results/consistency_t1_to_flair.png

Every test case (the first ``--max-cases`` of each ``--data`` folder) is translated on its
working grid with the plain sampler (DDIM-25, seed 0 unless given), once per variant:

* ``independent``: the direction's shipped model folder, each slice with its own noise, no filter;
* ``z<sigma>`` (e.g. ``z2``): slice-correlated noise, ``noise_sigma_z = sigma`` slices;
* ``model=<folder>`` / ``model=<folder>,z<sigma>``: another model folder (e.g. a 2.5D one);
* ``,h<sigma>`` added to any of them: the banding filter (``volume/harmonise.py``) with
  ``z_harmonise = sigma`` on that translation (the filter runs on the stored translation, as
  ``translate_prepared`` runs it on its result, so variants that differ only in ``h`` sample once).

Every variant is sampled with exactly the noise and filter it names (0 otherwise), whatever the
model's configuration says.

Measures (``research.bench.consistency``): slice-mean jitter, z / in-plane
high-pass ratio, whole-brain and per-plane PSNR/SSIM; on tumour cases also the hallucination
benchmark's tumour measures (``benchmark/scoring.row_metrics``: tumour Dice of the
target-contrast U-Net, PSNR inside the tumour) on every slice with at least 1% tumour, so that
what the filter does to a lesion is measured on whole volumes (section 4 samples chosen
slices). Per variant the mean over cases (tumour measures over the tumour cases), and for every
variant the paired difference to the ``--baseline`` variant (default ``independent``) with a 95%
bootstrap interval over cases. Each (variant, case) result is cached in ``--cache`` (a JSON
file) so a re-run only adds what is missing; the translated volumes are kept beside it
(``<cache>.volumes/``, float16) so that the measures can be recomputed without sampling again.
The PNG shows the first case: axial, coronal and sagittal planes of the truth and of each variant.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from research.bench.consistency import consistency_scores
from research.bench.figures import PlaneRow, plane_grid
from research.bench.matrix import evaluation_slices
from research.bench.scoring import paired_bootstrap, row_metrics
from localdiffusion.data.io import atomic_path, save_png
from localdiffusion.data.readers import read_case
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.network.segmenter import load_segmenter
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.volume.batching import translate_prepared
from localdiffusion.volume.cohort import cases_in_split, has_manifest
from localdiffusion.volume.grid import prepare_case
from localdiffusion.volume.harmonise import harmonise_z

TUMOUR_MEASURES = ("tumour_dice", "psnr_ood")
MEASURES = ("jitter", "jitter_core", "z_ratio", "brain_psnr", "brain_ssim", "axial_psnr", "axial_ssim", "coronal_psnr",
            "coronal_ssim", "sagittal_psnr", "sagittal_ssim")


def parse_variant(name: str, direction: str) -> tuple[Path, float, float]:
    """``independent`` | ``z<sigma>`` | ``model=<folder>[,z<sigma>]``, each with an optional ``,h<sigma>``
    -> (model folder, noise_sigma_z, z_harmonise)."""
    model, sigma, harmonise = MODELS_ROOT / direction, 0.0, 0.0
    for part in name.split(","):
        if part.startswith("model="):
            model = Path(part[len("model="):])
        elif part.startswith("z"):
            sigma = float(part[1:])
        elif part.startswith("h"):
            harmonise = float(part[1:])
        elif part != "independent":
            raise SystemExit(f"unknown variant {name!r}")
    return model, sigma, harmonise


def sampled_variant(name: str) -> str:
    """The variant without its filter: what is sampled (and stored) for it."""
    return ",".join(p for p in name.split(",") if not p.startswith("h")) or "independent"


@functools.lru_cache(maxsize=None)
def weights_id(model: Path) -> str:
    """Short hash of a model's weights: cached results belong to the weights, not to a folder name
    (a folder such as a training run's output changes when the run goes on). Hashed once per run."""
    return hashlib.md5((model / "model.pt").read_bytes()).hexdigest()[:8]


def split_cases(folders: list[str], split: str, max_cases: int) -> list[Path]:
    """The first ``max_cases`` healthy and the first ``max_cases`` tumour cases of ``split`` in each folder."""
    cases = []
    for folder in folders:
        if has_manifest(folder):
            for kind in ("healthy", "tumour"):
                cases += cases_in_split(folder, split, kind)[:max_cases]
        else:
            cases += sorted(p for p in Path(folder).iterdir() if p.is_dir())[:max_cases]
    return cases


def figure(truth: np.ndarray, volumes: dict[str, np.ndarray], brain: np.ndarray, title: str):
    """The truth and each variant in three planes through the centre of the brain's extent."""
    centre = [int(np.round(np.mean(np.nonzero(brain.any(tuple(a for a in range(3) if a != ax)))))) for ax in range(3)]
    return plane_grid([PlaneRow(name, vol) for name, vol in {"truth": truth, **volumes}.items()], centre, title)


def result_key(args, variant: str, case: str) -> str:
    model = parse_variant(variant, args.direction)[0]
    return f"{args.direction}|{variant}|{weights_id(model)}|{args.steps}|{args.seed}|{case}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--direction", default="t1_to_flair", choices=list(DIRECTIONS))
    ap.add_argument("--variants", nargs="+", default=["independent", "z2"])
    ap.add_argument("--baseline", default="independent", help="the variant the others are compared with (e.g. "
                    "model=<an earlier model's folder> once the shipped model has changed)")
    ap.add_argument("--split", default="test", help="the manifest split to take (val to choose, test to report)")
    ap.add_argument("--max-cases", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("data/consistency_cache.json"))
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.baseline in args.variants:
        args.variants.remove(args.baseline)
    args.variants.insert(0, args.baseline)
    source, target = DIRECTIONS[args.direction]
    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    cases = split_cases(args.data, args.split, args.max_cases)
    volumes_dir = args.cache.with_suffix(".volumes")
    volumes_dir.mkdir(parents=True, exist_ok=True)
    models, segmenters = {}, {}
    shown = {}
    for i, path in enumerate(tqdm(cases, desc="cases", unit="case")):
        prepared = None
        for variant in args.variants:
            key = result_key(args, variant, path.name)
            sampled_key = result_key(args, sampled_variant(variant), path.name)
            stored = volumes_dir / f"{sampled_key.replace('|', '_').replace('/', '-')}.npy"
            if key in cache and "tumour_measured" in cache[key] and stored.exists() and not (i == 0 and args.png):
                continue
            model, sigma, harmonise = parse_variant(variant, args.direction)
            if model not in models:
                models[model] = load_denoiser(model)
            denoiser = models[model]
            if prepared is None:
                prepared = prepare_case(read_case(path, (source, target)), denoiser.config.spacing_mm,
                                        denoiser.config.in_plane)
                truth = prepared.images[target]
                cache[f"{args.direction}|truth|{path.name}"] = consistency_scores(truth, prepared.brain)
            if stored.exists():
                pred = np.load(stored).astype(np.float32)
                seconds = (cache.get(f"{sampled_key}|seconds") or cache[sampled_key])["seconds"]
            else:
                t0 = time.perf_counter()
                pred = translate_prepared(denoiser, prepared, steps=args.steps, seed=args.seed, progress=False,
                                          noise_sigma_z=sigma, z_harmonise=0.0)
                seconds = time.perf_counter() - t0
                pred = pred.astype(np.float16)  # scored as stored, so a recomputation gives the same numbers
                with atomic_path(stored) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, pred)
                pred = pred.astype(np.float32)
                cache[f"{sampled_key}|seconds"] = {"seconds": seconds}
            pred = harmonise_z(pred, prepared.brain, harmonise)
            scores = consistency_scores(pred, prepared.brain, truth)
            ks = evaluation_slices(prepared.seg) if prepared.seg is not None else np.zeros(0, int)
            if ks.size:
                if target not in segmenters:
                    segmenters[target] = load_segmenter(MODELS_ROOT / f"seg_{target}")
                tumour = row_metrics(pred, truth, prepared.brain, prepared.seg, ks, segmenters[target])
                scores.update({m: tumour[m] for m in TUMOUR_MEASURES})
            scores["tumour_measured"] = bool(ks.size)
            scores["seconds"] = seconds
            cache[key] = scores
            if i == 0:
                shown[variant] = pred
            with atomic_path(args.cache) as tmp:
                tmp.write_text(json.dumps(cache, indent=1))
        if i == 0 and args.png and shown:
            save_png(args.png, figure(truth, shown, prepared.brain, f"{path.name}, {source} -> {target}, "
                                      f"DDIM-{args.steps}, seed {args.seed}"))

    names = [p.name for p in cases]
    rows = {"truth": {n: cache[f"{args.direction}|truth|{n}"] for n in names}}
    for variant in args.variants:
        rows[variant] = {n: cache[result_key(args, variant, n)] for n in names}
    summary = {}
    for row, per_case in rows.items():
        summary[row] = {m: float(np.mean([s[m] for s in per_case.values()])) for m in MEASURES + ("seconds",)
                        if all(m in s for s in per_case.values())}
        summary[row].update({m: float(np.mean(values)) for m in TUMOUR_MEASURES  # over the tumour cases
                             if (values := [s[m] for s in per_case.values() if m in s])})
    differences = {}
    for variant in args.variants[1:]:
        differences[variant] = {m: paired_bootstrap({n: rows[variant][n][m] for n in names if m in rows[variant][n]},
                                                    {n: rows[args.baseline][n][m] for n in names
                                                     if m in rows[args.baseline][n]})
                                for m in MEASURES + TUMOUR_MEASURES + ("seconds",)
                                if any(m in rows[variant][n] for n in names)}
    result = {"direction": args.direction, "split": args.split, "steps": args.steps, "seed": args.seed, "cases": names,
              "weights": {v: weights_id(parse_variant(v, args.direction)[0]) for v in args.variants},
              "command": "python " + " ".join(sys.argv), "mean": summary, "baseline": args.baseline,
              "vs_baseline": differences,
              "per_case": rows}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    """The tables of research/RECORD.md section 8 for one direction."""
    cols = ("jitter_core", "z_ratio", "brain_psnr", "brain_ssim", "axial_psnr", "axial_ssim", "coronal_ssim",
            "sagittal_ssim", "coronal_psnr", "sagittal_psnr") + TUMOUR_MEASURES
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row, means in result["mean"].items():
        lines.append(f"| {row} | " + " | ".join(f"{means[c]:.4f}" if c in means else "-" for c in cols) + " |")
    baseline = result.get("baseline", "independent")
    lines += ["", f"| variant - {baseline} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for variant, diffs in result.get("vs_baseline", result.get("vs_independent")).items():
        cells = []
        for c in cols:
            d = diffs[c]
            text = f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
            cells.append(f"**{text}**" if d["claim"] else text)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
