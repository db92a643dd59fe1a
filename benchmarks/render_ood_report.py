"""Render ``results.json`` files of ``ood_benchmark.py`` as Markdown tables.

    python benchmarks/render_ood_report.py runs/ood_t1/results.json runs/ood_flair/results.json
"""

from __future__ import annotations

import json
import sys

METRICS = ("pixel_auroc", "pixel_auprc", "dice", "slice_auroc")


def render(path: str) -> str:
    r = json.load(open(path))
    m = r["modality"].upper()
    out = [f"#### {m}: offline backbone options, tumour *validation* split ({r['val_slices']} slices), "
           f"default chosen by pixel AUPRC\n",
           "| option | pixel AUROC | pixel AUPRC | Dice (val-best threshold) | slice AUROC | bank MB |",
           "|---|---|---|---|---|---|"]
    for name, o in r["options"].items():
        v = o["val"]
        mark = " **(default)**" if name == r["default"] else ""
        out.append(f"| `{name}`{mark} | {v['pixel_auroc']:.3f} | {v['pixel_auprc']:.3f} | {v['dice']:.3f} | "
                   f"{v['slice_auroc']:.3f} | {o['bank_mb']:.1f} |")
    v = r["intensity_outlier"]["val"]
    out.append(f"| intensity-outlier baseline | {v['pixel_auroc']:.3f} | {v['pixel_auprc']:.3f} | {v['dice']:.3f} | "
               f"{v['slice_auroc']:.3f} | - |")
    out += ["", f"#### {m}: tumour *test* split ({r['test_slices']} slices), thresholds fixed on validation\n",
            "| option | pixel AUROC | pixel AUPRC | Dice | Dice at calibrated 1% FPR threshold | slice AUROC |",
            "|---|---|---|---|---|---|"]
    for name, o in r["options"].items():
        t, c = o["test"], o["test_at_calibrated"]
        mark = " **(default)**" if name == r["default"] else ""
        out.append(f"| `{name}`{mark} | {t['pixel_auroc']:.3f} | {t['pixel_auprc']:.3f} | {t['dice']:.3f} | "
                   f"{c['dice']:.3f} | {t['slice_auroc']:.3f} |")
    t = r["intensity_outlier"]["test"]
    out.append(f"| intensity-outlier baseline | {t['pixel_auroc']:.3f} | {t['pixel_auprc']:.3f} | {t['dice']:.3f} | - | "
               f"{t['slice_auroc']:.3f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print("\n".join(render(p) for p in sys.argv[1:]))
