"""Candidate contrast features for the input gate, measured on every validation cohort (healthy and
lesion families, MPRAGE-like and spin-echo-like T1, with and without a strong coil field)::

    python -m research.input_gate.contrast_features --data data/bench_val data/gate_val_spin_echo \
        data/gate_val_strong_bias data/gate_val_spin_echo_bias data/families_mprage/* data/families_spin_echo/* \
        --split val --fakes data/bench_val --out research/results/contrast_features_val.json

Each case's T1 and FLAIR give one row: every feature of :data:`FEATURES` on the working-grid image as it is
and after N4 field correction, the coil-field strength and both banks' flagged fractions. The rule that
picks a feature from these rows is written in research/input_gate/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import Case, read_case
from localdiffusion.detectors.input_gate import DARK_FRACTION, depth_correlation, map_summary
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.bias import field_spread, log_bias_field, remove_field
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

from research.input_gate.input_gate import fakes

CONTRASTS = ("t1", "flair")
#: the outer layer (cortex) and the inner region (deep white matter) of :func:`layer_contrast`, mm below
#: the brain surface
OUTER_MM = 6.0
INNER_MM = 14.0


def layer_contrast(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> float:
    """How much brighter the deep brain is than its outer layer: (median of the region deeper than
    :data:`INNER_MM` - median of the layer within :data:`OUTER_MM` of the surface) / median of the brain, each
    with its darkest ``DARK_FRACTION`` (CSF) left out; NaN if undefined. Deep white matter is brighter
    than the cortex on T1 (positive) and darker on FLAIR (negative)."""
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_mm)
    medians = []
    for region in (brain & (depth >= INNER_MM), brain & (depth <= OUTER_MM), brain):
        values = image[region]
        if values.size < 100:
            return float("nan")
        values = values[values > np.percentile(values, 100 * DARK_FRACTION)]
        if values.size < 100:
            return float("nan")
        medians.append(float(np.median(values)))
    inner, outer, whole = medians
    return (inner - outer) / whole if whole > 0 else float("nan")


def bright_depth(image: np.ndarray, brain: np.ndarray, spacing_mm: float) -> float:
    """How much deeper the brighter half of the tissue lies than the darker half (mm): the brain's voxels,
    smoothed over one voxel, with the darkest ``DARK_FRACTION`` (CSF) left out, split at their median
    intensity; mean depth below the surface of the upper half minus that of the lower half. White matter (deep)
    is the bright tissue on T1 (positive), grey matter (the cortical ribbon) on FLAIR (negative)."""
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_mm)
    smooth = ndimage.gaussian_filter(np.where(brain, image, 0).astype(np.float32), 1.0)
    weight = ndimage.gaussian_filter(brain.astype(np.float32), 1.0)
    core = brain & (weight > 0.5)
    values, depths = smooth[core] / weight[core], depth[core]
    if values.size < 200:
        return float("nan")
    keep = values > np.percentile(values, 100 * DARK_FRACTION)
    values, depths = values[keep], depths[keep]
    upper = values > np.median(values)
    if upper.sum() < 100 or (~upper).sum() < 100:
        return float("nan")
    return float(depths[upper].mean() - depths[~upper].mean())


FEATURES = {"depth_correlation": depth_correlation, "layer_contrast": layer_contrast,
            "bright_depth": bright_depth}


def measure(prepared, name: str, banks: dict) -> dict:
    image, brain, spacing = prepared.images[name], prepared.brain, prepared.grid.spacing
    log_field = log_bias_field(image, brain, spacing)
    corrected = remove_field(image, brain, log_field)
    row = {"field": field_spread(log_field, brain)}
    for feature, fn in FEATURES.items():
        row[feature] = fn(image, brain, spacing)
        row[feature + "_n4"] = fn(corrected, brain, spacing)
    for declared, bank in banks.items():
        named = dataclasses.replace(prepared, images={declared: image})
        row[f"flagged_as_{declared}"] = map_summary(named, declared, bank).flagged
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.input_gate.contrast_features",
                                description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", type=Path, required=True, help="phantom cohorts (a manifest.json each)")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--fakes", type=Path, default=None, help="build the synthetic non-brains from this cohort's "
                                                              "first 3 cases")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    banks = {c: PatchCore.load(ood_bank_path(MODELS_ROOT, c), modality=c, model_root=MODELS_ROOT) for c in CONTRASTS}
    grid = bank_grid(banks["t1"])
    rows = []
    for root in args.data:
        for n, case in enumerate(tqdm(cases_in_split(root, args.split), desc=str(root), unit="case")):
            scan = read_case(case, CONTRASTS)
            prepared = prepare_case(scan, *grid)
            for given in CONTRASTS:
                rows.append({"cohort": str(root), "case": case.name, "input": given,
                             **measure(prepared, given, banks)})
            if args.fakes is not None and root == args.fakes and n < 3:
                for fake, image in fakes(scan.images["t1"], n).items():
                    made = prepare_case(Case(scan.case_id, {"t1": image.astype(np.float32)}, scan.affine, None),
                                        *grid)
                    rows.append({"cohort": str(root), "case": case.name, "input": fake,
                                 **measure(made, "t1", banks)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps({"command": "python -m research.input_gate.contrast_features " + " ".join(
            sys.argv[1:] if argv is None else argv), "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
