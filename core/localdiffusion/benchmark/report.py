"""The benchmark's markdown: its table, its detection paragraph and its section of docs/BENCHMARK.md."""

from __future__ import annotations

from localdiffusion.benchmark.scoring import COLUMNS
from localdiffusion.detectors.risk import rods_config_from

#: Kim, Jin et al. (ECCV 2024), BraTS T1 -> FLAIR, 224 px, GPU (DESIGN.md section 2); None = not reported
PAPER_T1_TO_FLAIR = {"DDPM": {"psnr_brain": 19.5, "ssim_brain": 0.709, "tumour_dice": 0.194},
                     "LD PatchCore mask": {"psnr_brain": 21.2, "ssim_brain": 0.720, "tumour_dice": 0.590},
                     "LD ground-truth mask": {"tumour_dice": 0.670},
                     "LD U-Net mask": {"tumour_dice": 0.671}}
SECTION_START, SECTION_END = "<!-- hallucination-benchmark:start -->", "<!-- hallucination-benchmark:end -->"


def _cell(value: tuple[float, float], column: str) -> str:
    digits = 2 if column.startswith("psnr") or column.startswith("seconds") else 3
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def markdown_table(result: dict) -> str:
    head = "| method | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    lines = [f"| {name} | " + " | ".join(_cell(m[c], c) for c in COLUMNS) + " |" for name, m in result["rows"].items()]
    up = result["upper_bound_true_target"]
    blanks = " - |" * 6
    lines.append(f"| true {result['direction'].split('->')[1]} (upper bound) |{blanks} "
                 f"{up['tumour_dice']:.3f} | {up['misdiagnosis_rate']:.3f} | - |")
    if result["direction"] == "t1->flair":
        for name, paper in PAPER_T1_TO_FLAIR.items():
            cells = [f"{paper[c]}" if c in paper else "-" for c in COLUMNS]
            lines.append(f"| *paper (BraTS): {name}* | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def json_ready(result: dict) -> dict:
    """The result without the montage arrays."""
    return {k: v for k, v in result.items() if k != "montage"}


def markdown_section(results: list[dict], command: str, figures: list[str]) -> str:
    """The benchmark section of docs/BENCHMARK.md (between the section markers)."""
    parts = [SECTION_START, "## 4. Hallucination benchmark: Local Diffusion against the baselines", "",
             f"Reproduce: `{command}` (writes this section, the JSON files and the montages).", ""]
    for result, figure in zip(results, figures):
        source, target = (m.upper() for m in result["direction"].split("->"))
        ld = result["ld_config"]
        parts += [f"### {source} -> {target}", "",
                  f"Tumour cases of the *{result['split']}* split: {result['cases']} cases, "
                  f"{result['evaluated_slices']} slices with at least {result['min_tumour_fraction']:.0%} tumour area; "
                  f"seeds {result['seeds']}; mean ± sd over (case, seed). Local Diffusion: {ld['mask_mode']} mask, "
                  f"IND floor {ld['ind_floor']}, t_intermediate {ld['t_intermediate'] or 'default (0.1 T)'}, "
                  f"gate {'on (target-modality PatchCore)' if result['gate'] else 'off'}, "
                  f"OOD-branch crop margin {ld['crop_margin']} px. Seconds are sampling time per evaluated "
                  f"(tumour) slice on the 2-core CPU with the torch threads of the command above (default: all).",
                  "",
                  markdown_table(result), f"![{source} to {target} montage]({figure})", "",
                  *detection_markdown(result)]
    parts.append(SECTION_END)
    return "\n".join(parts) + "\n"


def detection_markdown(result: dict) -> list[str]:
    det = result.get("detection") or {}
    if not det:
        return []
    fmt = lambda v: "n/a (one class only)" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"Hallucination detection on the DDIM-25 translations ({det['slices']} evaluated slices, "
             f"{det['hallucinated']} hallucinated: {det['definition']}). Slice-score AUROC: trajectory variance "
             f"{fmt(det['auroc_variance'])}, OOD probability {fmt(det['auroc_ood'])}, calibrated risk "
             f"{fmt(det['auroc_risk'])}.", ""]
    if "rods_detected_pct" in det:
        rods, plain = result["rows"]["DDIM-25 + RODS"], result["rows"]["DDIM-25"]
        overhead = rods["seconds_per_slice"][0] / plain["seconds_per_slice"][0]
        rc = rods_config_from(result)
        lines += [f"RODS ({rc.describe()}, eps {rc.eps:.4g} = healthy-validation "
                  f"99th percentile of the slice curvature index): flagged {det['rods_flagged_pct']:.1f}% of slices; "
                  f"detected {det['rods_detected_pct']:.1f}% of hallucinated slices, corrected "
                  f"{det['rods_corrected_pct']:.1f}%, new hallucinations {det['rods_new_hallucination_pct']:.1f}% of "
                  f"the others; time {overhead:.2f}x the plain DDIM-25 (paper: detects > 70%, corrects > 25%, "
                  f"1.78x; target <= 1.5x).", ""]
    return lines
