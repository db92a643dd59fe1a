"""The OOD map under a change of scanner (research/RECORD.md section 9).

    for a in training spin_echo long_ti strong_bias low_snr high_snr; do
        localdiffusion phantom --out data/shift/$a --split test --healthy 4 --tumour 6 --seed 0 --acquisition $a
    done
    localdiffusion phantom --out data/shift/1mm --split test --healthy 4 --tumour 6 --seed 0 --spacing 1
    python -m research.ood_shift.ood_shift --shift-root data/shift --val data/bench_val --contrasts t1 --out research/results/ood_shift_t1.json

Every variant holds the same test subjects scanned differently (``training`` is the training
distribution, the in-domain reference). For each contrast's shipped bank and each variant:

* lesion pixel AUROC: tumour label against the rest of the brain, pooled over the tumour cases;
* healthy flagged: the fraction of healthy brain voxels at or above the bank's default
  threshold, pooled over the healthy cases;

for three ways of turning PatchCore's patch distances into a probability:

* ``shipped``: the bank's calibration (healthy *validation* distances -> probability);
* ``self``: per-volume self-calibration: each volume's distances are standardised by its own
  brain median and MAD before a calibration fitted on the healthy validation volumes'
  standardised distances (a scanner that moves every distance moves the median with it);
* ``standardised``: the input's brain intensities are first mapped to the training
  distribution's percentiles (piecewise linear, Nyul-style landmarks 1, 5, 10, ..., 95, 99),
  then ``self``;
* ``corrected`` and ``corrected_standardised`` (``--modes``; section 9d): the coil bias removed
  first (N4, volume/bias.py), then ``self`` or ``standardised``.

Both are the product's :class:`~localdiffusion.ood.robust.RobustCalibration` (``localdiffusion ood
map --robust``), fitted here on the same healthy validation volumes and slices.

Validation (for the calibrations and the landmarks): the healthy cases of ``--val``.

Section 9d (bias correction; the choice on validation, then new test subjects):

    python -m research.ood_shift.ood_shift --shift-root data/shift_val data/shift_val2 --variants training 1mm high_snr \
        low_snr strong_bias --split val --val data/bench_val --contrasts flair --modes self corrected \
        --out research/results/ood_shift_corrected_val_pooled_flair.json
    python -m research.ood_shift.ood_shift --shift-root data/shift2 --split test --val data/bench_val --contrasts flair \
        --modes shipped self corrected --compare corrected self \
        --out research/results/ood_shift_corrected_test2_flair.json

Section 9e (banks built for the robust map, ``ood build --standardise-to ... [--augment 2]``, against the
shipped one; ``--bank LABEL=PATH`` scores several banks of one contrast, columns ``LABEL:MODE``):

    python -m research.ood_shift.ood_shift --shift-root data/shift_val data/shift_val2 --split val --val data/bench_val \
        --contrasts t1 --modes standardised --bank A=monai_bundle/models/ood_t1.pt D=data/banks/ood_t1_std.pt \
        B=data/banks/ood_t1_aug2.pt --out research/results/ood_shift_augbank_val_t1.json

(several ``--shift-root`` pool a variant's cases; ``--figure CASE`` draws one case's maps instead.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from research.bench.scoring import paired_bootstrap
from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import read_case
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import CALIBRATION_SLICE_STRIDE, RobustCalibration, distance_volume, strided_brain
from localdiffusion.ood.volume import bank_grid
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case

#: mode -> (standardise, bias_correct) of its robust calibration; ``shipped`` is the bank's own
ROBUST_MODES = {"self": (False, False), "standardised": (True, False), "corrected": (False, True),
                "corrected_standardised": (True, True)}
MODES = ("shipped", "self", "standardised")  # the default columns (sections 9-9c)


#: every second brain slice is scored, as the product's robust calibrations are fitted
SLICE_STRIDE = CALIBRATION_SLICE_STRIDE


def volumes(folder: Path, split: str, kind: str, contrast: str, bank: PatchCore):
    """(case id, image, brain, the brain restricted to the scored slices, labels) of each case."""
    for path in cases_in_split(folder, split, kind):
        prepared = prepare_case(read_case(path, (contrast,)), *bank_grid(bank))
        yield (prepared.case_id, prepared.images[contrast], prepared.brain, strided_brain(prepared.brain, SLICE_STRIDE),
               prepared.seg)


def robust_calibrations(bank: PatchCore, val: list[tuple[np.ndarray, np.ndarray]], modes) -> dict:
    """The product's robust calibration of each robust mode among ``modes``, fitted on ``val``."""
    return {m: RobustCalibration.fit(bank, val, standardise=ROBUST_MODES[m][0], bias_correct=ROBUST_MODES[m][1])
            for m in modes if m in ROBUST_MODES}


def bank_paths(specs: list[str] | None, contrast: str) -> dict[str, Path]:
    """``--bank`` as label -> path (default: the shipped bank of ``contrast``, labelled ``shipped``)."""
    if not specs:
        return {"shipped": ood_bank_path(MODELS_ROOT, contrast)}
    return {spec.split("=", 1)[0]: Path(spec.split("=", 1)[1]) for spec in specs}


def load_banks(specs: list[str] | None, contrast: str) -> dict[str, PatchCore]:
    return {label: PatchCore.load(path, modality=contrast, model_root=MODELS_ROOT)
            for label, path in bank_paths(specs, contrast).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift-root", type=Path, nargs="+", default=[Path("data/shift")],
                    help="one or more roots of variant folders; a variant's cases are pooled over the roots")
    ap.add_argument("--val", type=Path, default=Path("data/bench_val"))
    ap.add_argument("--contrasts", nargs="+", default=["t1", "flair"])
    ap.add_argument("--split", default="test", help="the variants' split (val variants to choose, test to report)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=["shipped", *ROBUST_MODES])
    ap.add_argument("--variants", nargs="+", help="only these variants (default: every one under --shift-root)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                    help="per variant, a paired bootstrap interval over cases of mode A minus mode B: per-case lesion "
                         "AUROC (tumour cases) and per-case healthy brain flagged (healthy cases)")
    ap.add_argument("--bank", nargs="+", default=None, metavar="LABEL=PATH",
                    help="score these banks (of the one contrast in --contrasts) instead of the shipped one; with "
                         "more than one, the columns are LABEL:MODE and --compare takes those names")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--figure", type=Path, default=None,
                    help="instead of the table: one case folder's image and maps (every --modes, first of --contrasts) "
                         "in three planes, written to --out (a PNG)")
    args = ap.parse_args(argv)
    if args.bank and len(args.contrasts) != 1:
        ap.error("--bank scores one contrast's banks: give one --contrasts")
    if args.figure is not None:
        return figure(args)
    variants = sorted({p.name for root in args.shift_root for p in root.iterdir() if (p / "manifest.json").exists()
                       and (args.variants is None or p.name in args.variants)})
    variants = [v for v in ["training"] if v in variants] + [v for v in variants if v != "training"]
    result = {"command": "python " + " ".join(sys.argv), "variants": variants, "contrasts": {}}
    for contrast in args.contrasts:
        banks = load_banks(args.bank, contrast)
        grid_bank = next(iter(banks.values()))
        # validation: the product's robust calibrations (ood/robust.py) of every bank
        val = [(img, brain) for _, img, brain, _, _ in
               tqdm(volumes(args.val, "val", "healthy", contrast, grid_bank), desc=f"{contrast} val", unit="case")]
        robust = {label: robust_calibrations(bank, val, args.modes) for label, bank in banks.items()}
        columns = [(label, mode) for label in banks for mode in args.modes]
        name = {c: c[1] if len(banks) == 1 else f"{c[0]}:{c[1]}" for c in columns}
        rows = {}
        for variant in variants:
            folders = [root / variant for root in args.shift_root if (root / variant / "manifest.json").exists()]
            per = {name[c]: {"labels": [], "scores": [], "healthy": [], "case_auroc": {}, "case_flagged": {}}
                   for c in columns}
            for folder, kind in ((f, k) for f in folders for k in ("tumour", "healthy")):
                for case_id, img, whole, brain, seg in tqdm(volumes(folder, args.split, kind, contrast, grid_bank),
                                                            desc=f"{contrast} {folder} {kind}", unit="case"):
                    probs = {}
                    for label, bank in banks.items():
                        # the bank's own distances on the scored slices, shared by its calibration and self
                        raw = distance_volume(bank, img, brain) if {"shipped", "self"} & set(args.modes) else None
                        for m in args.modes:
                            probs[name[label, m]] = (
                                bank.pixel_calibration.probability(raw) if m == "shipped" else
                                robust[label][m].from_distances(raw, brain) if m == "self" else
                                robust[label][m].probability(bank, img, whole, scored=brain))
                    key = f"{folder}/{case_id}"
                    for column, p in probs.items():
                        if kind == "tumour":
                            per[column]["labels"].append(seg[brain] > 0)
                            per[column]["scores"].append(p[brain])
                            per[column]["case_auroc"][key] = float(roc_auc_score(seg[brain] > 0, p[brain]))
                        else:
                            per[column]["healthy"].append(p[brain] >= grid_bank.threshold)
                            per[column]["case_flagged"][key] = float(per[column]["healthy"][-1].mean())
            rows[variant] = {}
            for column, d in per.items():
                y, s = np.concatenate(d["labels"]), np.concatenate(d["scores"])
                rows[variant][column] = {"lesion_auroc": float(roc_auc_score(y, s)),
                                         "healthy_flagged": float(np.concatenate(d["healthy"]).mean()),
                                         "tumour_cases": len(d["labels"]), "healthy_cases": len(d["healthy"]),
                                         "case_auroc": d["case_auroc"], "case_flagged": d["case_flagged"]}
            if args.compare:
                a, b = (per[m] for m in args.compare)
                rows[variant]["compare"] = {
                    "modes": list(args.compare),
                    "lesion_auroc": paired_bootstrap(a["case_auroc"], b["case_auroc"]),
                    "healthy_flagged": paired_bootstrap(a["case_flagged"], b["case_flagged"])}
            print(contrast, variant, json.dumps({m: {k: v for k, v in r.items() if not k.startswith("case_")}
                                                 for m, r in rows[variant].items()}), flush=True)
        result["contrasts"][contrast] = {"threshold": grid_bank.threshold, "rows": rows, "val_cases": len(val),
                                         "modes": [name[c] for c in columns],
                                         "banks": {label: str(bank_paths(args.bank, contrast)[label])
                                                   for label in banks}}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def figure(args) -> int:
    """Axial, coronal and sagittal views of one case: the image (tumour outlined), then each mode's
    probability over the whole brain with the voxels at or above the threshold outlined."""
    from research.bench.figures import PlaneRow, plane_grid
    from localdiffusion.data.io import save_png

    contrast = args.contrasts[0]
    banks = load_banks(args.bank, contrast)
    grid_bank = next(iter(banks.values()))
    val = [(img, brain) for _, img, brain, _, _ in volumes(args.val, "val", "healthy", contrast, grid_bank)]
    prepared = prepare_case(read_case(args.figure, (contrast,)), *bank_grid(grid_bank))
    img, brain = prepared.images[contrast], prepared.brain
    lesion = prepared.seg > 0 if prepared.seg is not None else np.zeros_like(brain)
    rows = [PlaneRow(f"{contrast} ({args.figure.name})", img, outline=lesion)]
    for label, bank in banks.items():
        robust = robust_calibrations(bank, val, args.modes)
        for mode in args.modes:
            if mode == "shipped":
                p, t = bank.pixel_calibration.probability(distance_volume(bank, img, brain)), bank.threshold
            else:
                p, t = robust[mode].probability(bank, img, brain), robust[mode].threshold
            flagged = (p >= t) & brain
            title = mode if len(banks) == 1 else f"{label}:{mode}"
            rows.append(PlaneRow(f"{title}: {100 * flagged[~lesion & brain].mean():.1f}% of non-lesion brain flagged",
                                 np.where(brain, p, 0), "viridis", 0.0, 1.0, flagged))
    centre = [int(np.round(np.mean(ax))) for ax in np.nonzero(lesion if lesion.any() else brain)]
    save_png(args.out, plane_grid(rows, centre, f"{contrast.upper()} OOD probability (red: tumour / >= the threshold)"))
    return 0


def markdown(result: dict) -> str:
    """research/RECORD.md section 9: per contrast, lesion AUROC / healthy flagged per variant and mode."""
    lines = []
    for contrast, part in result["contrasts"].items():
        names = part.get("modes", MODES)
        lines += [f"{contrast.upper()} bank (threshold {part['threshold']:.3f}; lesion pixel AUROC / healthy brain "
                  f"flagged):", "", "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for variant, modes in part["rows"].items():
            lines.append(f"| {variant} | " + " | ".join(
                f"{modes[m]['lesion_auroc']:.3f} / {100 * modes[m]['healthy_flagged']:.1f}%" for m in names) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
