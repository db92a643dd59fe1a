"""The OOD maps, their masks and the input gate on the test lesion families (BraTS-like cases the
defaults were never chosen on), per family, contrast and T1 kind.

Cohorts come from ``localdiffusion phantom --family F --grid brats --spacing 1`` (one folder per
family and T1 kind, see the README). Per case and contrast, what ``run`` computes on its working grid:
the acquisition-robust OOD probability of the contrast and the mask Local Diffusion branches on
(:func:`research.ood_masks.masks.mask_figures`: Dice, volume ratio, healthy brain inside, lesion
labels covered, healthy brain >= 0.99, voxel AUROC for the lesion), the tighter level-set masks
when asked, and the input gate's verdict (``gate_input`` exactly as ``run`` calls it). Healthy cases
give the healthy brain >= 0.99 of a lesion-free scan and the gate's verdict on it::

    python -m research.ood_families.families --cohorts glioma=data/families_mprage/glioma \
        metastasis=data/families_mprage/metastasis ms=data/families_mprage/ms cavity=data/families_mprage/cavity \
        --split test --levels 0.25 0.5 --out research/results/ood_families_test_mprage.json

Means over cases with 95% bootstrap intervals over cases, per family.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from localdiffusion.data.readers import read_case
from localdiffusion.errors import InputError
from localdiffusion.jobs.inputs import gate_input
from localdiffusion.methods.local_diffusion import LocalDiffusionConfig, branch_weight_volume
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.postprocess import level_set
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path, robust_calibration_path
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case
from research.ood_masks.masks import bootstrap, figures_text, mask_figures, write_result

CONTRASTS = ("t1", "flair")


def case_figures(path: Path, contrast: str, bank: PatchCore, robust: RobustCalibration, levels: list[float],
                 gate: bool, models: Path = MODELS_ROOT) -> dict:
    """Every figure of one case and contrast (see the module docstring)."""
    prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
    brain, seg = prepared.brain.astype(bool), prepared.seg
    robust_map = robust.ood_map(bank, prepared.images[contrast], prepared.brain, prepared.grid.affine)
    ood = robust_map.map  # what run writes; its mask is the one Local Diffusion branches on (mask level included)
    mask = branch_weight_volume(ood, LocalDiffusionConfig(mask_mode="hard"), prepared.brain) >= 0.5
    thresholded = branch_weight_volume(dataclasses.replace(ood, mask_level=0.0), LocalDiffusionConfig(mask_mode="hard"),
                                       prepared.brain) >= 0.5
    out: dict = {"registration": {"failed": float(robust_map.unlocated is not None)}}
    if seg is not None and (seg > 0).any():
        out["product mask"] = mask_figures(mask, seg, brain, ood.probability)
        out["thresholded mask"] = mask_figures(thresholded, seg, brain)  # before any level set
        for level in levels:
            out[f"level set {level:g}"] = mask_figures(level_set(thresholded, ood.score, level), seg, brain)
    else:
        out["healthy scan"] = {"healthy_flagged": float((ood.probability[brain] >= 0.99).mean()),
                               "healthy_in_mask": float(mask[brain].mean())}
    if gate:
        try:
            warnings = gate_input(path, prepared, contrast, models, bank=bank, robust_map=True)
            out["gate"] = {"refused": 0.0, "warned": float(bool(warnings))}
        except InputError as exc:
            out["gate"] = {"refused": 1.0, "warned": 0.0, "refusal": str(exc)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.ood_families.families", description=__doc__.splitlines()[0])
    p.add_argument("--cohorts", nargs="+", required=True, metavar="NAME=FOLDER",
                   help="phantom cohorts to score, each under a name (e.g. glioma=data/families_mprage/glioma)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--models", type=Path, default=MODELS_ROOT,
                   help="folder with the banks, their robust calibrations and the input gate (default: the shipped ones)")
    p.add_argument("--contrasts", nargs="+", default=list(CONTRASTS), choices=list(CONTRASTS))
    p.add_argument("--levels", type=float, nargs="*", default=[], help="also score level-set masks (ood/postprocess.level_set)")
    p.add_argument("--no-gate", action="store_true", help="skip the input gate")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    cohorts = dict(c.split("=", 1) for c in args.cohorts)
    result = {"cohorts": cohorts, "split": args.split, "models": str(args.models),
              "command": "python -m research.ood_families.families " + " ".join(sys.argv[1:] if argv is None else argv),
              "per_case": {}, "summary": {}}
    for contrast in args.contrasts:
        bank_path = ood_bank_path(args.models, contrast)
        bank = PatchCore.load(bank_path, modality=contrast, model_root=MODELS_ROOT)
        robust = RobustCalibration.load(robust_calibration_path(bank_path))
        for family, folder in cohorts.items():
            cases = cases_in_split(Path(folder), args.split)
            per_case = {c.name: case_figures(c, contrast, bank, robust, args.levels, not args.no_gate, args.models)
                        for c in tqdm(cases, desc=f"{family} {contrast}", unit="case")}
            result["per_case"].setdefault(contrast, {})[family] = per_case
            rows = sorted({row for figures in per_case.values() for row in figures if row != "gate"})
            summary = {row: {k: bootstrap([f[row].get(k, float("nan")) for f in per_case.values() if row in f])
                             for k in sorted({k for f in per_case.values() if row in f for k in f[row]})}
                       for row in rows}
            if not args.no_gate:
                summary["gate"] = {"refused": int(sum(f["gate"]["refused"] for f in per_case.values())),
                                   "warned": int(sum(f["gate"]["warned"] for f in per_case.values())),
                                   "cases": len(per_case)}
            result["summary"].setdefault(contrast, {})[family] = summary
            for row, figures in summary.items():
                text = figures_text(figures) if row != "gate" else json.dumps(figures)
                print(f"{contrast} {family} {row}: {text}", flush=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
