"""Render ``results.json`` files of ``ood_benchmark.py`` as Markdown tables.

    python -m research.ood.render_ood_report runs/ood_t1/results.json runs/ood_flair/results.json
"""

from __future__ import annotations

import json
import sys

METRICS = ("pixel_auroc", "pixel_auprc", "dice", "slice_auroc")


def _row(label: str, cells: list) -> str:
    return f"| {label} | " + " | ".join(c if isinstance(c, str) else f"{c:.3f}" for c in cells) + " |"


def render(path: str) -> str:
    r = json.load(open(path))
    m = r["modality"].upper()
    label = lambda name: f"`{name}`" + (" **(default)**" if name == r["default"] else "")  # noqa: E731
    base_val, base_test = r["intensity_outlier"]["val"], r["intensity_outlier"]["test"]
    out = [f"#### {m}: offline backbone options, tumour *validation* split ({r['val_slices']} slices), "
           f"default chosen by pixel AUPRC\n",
           "| option | pixel AUROC | pixel AUPRC | Dice (val-best threshold) | slice AUROC | bank MB |",
           "|---|---|---|---|---|---|"]
    for name, o in r["options"].items():
        out.append(_row(label(name), [*(o["val"][k] for k in METRICS), f"{o['bank_mb']:.1f}"]))
    out.append(_row("intensity-outlier baseline", [*(base_val[k] for k in METRICS), "-"]))
    out += ["", f"#### {m}: tumour *test* split ({r['test_slices']} slices), thresholds fixed on validation\n",
            "| option | pixel AUROC | pixel AUPRC | Dice | Dice at calibrated 1% FPR threshold | slice AUROC |",
            "|---|---|---|---|---|---|"]
    for name, o in r["options"].items():
        t = o["test"]
        out.append(_row(label(name), [t["pixel_auroc"], t["pixel_auprc"], t["dice"], o["test_at_calibrated"]["dice"],
                                      t["slice_auroc"]]))
    out.append(_row("intensity-outlier baseline", [base_test["pixel_auroc"], base_test["pixel_auprc"],
                                                   base_test["dice"], "-", base_test["slice_auroc"]]))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print("\n".join(render(p) for p in sys.argv[1:]))
