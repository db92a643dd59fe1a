"""The benchmark's markdown: its tables and its section of research/RECORD.md."""

from __future__ import annotations

from research.bench.scoring import COLUMNS, COMPARED, LABELS

#: Kim, Jin et al. (ECCV 2024), BraTS T1 -> FLAIR, 224 px, GPU (DESIGN.md section 2)
PAPER_T1_TO_FLAIR = {"DDPM": {"psnr_brain": 19.5, "ssim_brain": 0.709, "tumour_dice": 0.194},
                     "LD PatchCore mask": {"psnr_brain": 21.2, "ssim_brain": 0.720, "tumour_dice": 0.590},
                     "LD ground-truth mask": {"tumour_dice": 0.670},
                     "LD U-Net mask": {"tumour_dice": 0.671}}
SECTION_START, SECTION_END = "<!-- hallucination-benchmark:start -->", "<!-- hallucination-benchmark:end -->"


def _digits(column: str) -> int:
    return 2 if column.startswith("psnr") or column.startswith("seconds") else 3


def _cell(value, column: str) -> str:
    d = _digits(column)
    if value[0] != value[0]:
        return "-"
    if column.startswith("psnr") and value[0] >= 100:  # the truth against itself (MSE floored at 1e-12)
        return "∞"
    return f"{value[0]:.{d}f} ± {value[1]:.{d}f}"


def markdown_table(result: dict) -> str:
    head = "| method | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    lines = [f"| {name} | " + " | ".join(_cell(m[c], c) for c in COLUMNS) + " |" for name, m in result["rows"].items()]
    if result["direction"] == "t1->flair":
        for name, paper in PAPER_T1_TO_FLAIR.items():
            cells = [f"{paper[c]}" if c in paper else "-" for c in COLUMNS]
            lines.append(f"| *paper (BraTS): {name}* | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _difference_cells(diffs: dict) -> list[str]:
    """mean [95% interval] per compared column; bold where the interval excludes 0."""
    cells = []
    for c in _columns(diffs):
        d, digits = diffs[c], _digits(c)
        text = "-" if d["mean"] != d["mean"] else f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
        cells.append(f"**{text}**" if d["claim"] else text)
    return cells


def _columns(diffs: dict) -> list[str]:
    """The compared columns a result has (the harm columns need the product's mask)."""
    return [c for c in COMPARED if c in diffs]


def differences_table(result: dict) -> str:
    """Paired differences against DDIM-25: mean [95% interval]; bold where the interval excludes 0."""
    columns = _columns(next(iter(result["differences"].values()), {}))
    head = "| method - DDIM-25 | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    lines = []
    for name, diffs in result["differences"].items():
        if name.startswith("true target"):
            continue  # the upper bound is in the main table
        lines.append(f"| {name} | " + " | ".join(_difference_cells(diffs)) + " |")
    return head + "\n".join(lines) + "\n"


def paired_table(result: dict) -> str:
    """Rows of another model against their plain counterparts (empty when there are none)."""
    paired = result.get("paired_differences") or {}
    if not paired:
        return ""
    columns = _columns(next(iter(paired.values())))
    head = "| method - its plain counterpart | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    lines = []
    for name, diffs in paired.items():
        lines.append(f"| {name} - {diffs['against']} | " + " | ".join(_difference_cells(diffs)) + " |")
    return ("Rows of another model, paired against the same row of the shipped model (same sampler, seeds and "
            "slices):\n\n" + head + "\n".join(lines) + "\n")


def labels_table(result: dict) -> str:
    """Per tumour label: healing rate and mean intensity (truth beside it)."""
    names = list(LABELS.values())
    head = ("| method | " + " | ".join(f"healing {n}" for n in names) + " | "
            + " | ".join(f"mean {n} (truth)" for n in names) + " |\n|---|" + "---|" * (2 * len(names)) + "\n")
    lines = []
    for name, m in result["rows"].items():
        heal = [_cell(m[f"healing_{n}"], "healing") for n in names]
        means = [f"{m[f'mean_{n}'][0]:.3f} ({m[f'truth_mean_{n}'][0]:.3f})" for n in names]
        lines.append(f"| {name} | " + " | ".join(heal + means) + " |")
    return head + "\n".join(lines) + "\n"


def ld_records_line(result: dict) -> str:
    parts = [f"{name}: {r['branched']}/{r['slices']} slices branched, {r['judged']} judged by the gate, "
             f"{r['rebranched']} re-branched, fused at t in {r['fused_at']}" for name, r in result["ld_records"].items()]
    return "Local Diffusion per slice (all seeds): " + "; ".join(parts) + "."


def json_ready(result: dict) -> dict:
    """The result without the montage arrays."""
    return {k: v for k, v in result.items() if k != "montage"}


def markdown_section(results: list[dict], command: str, figures: list[str]) -> str:
    """The benchmark section of research/RECORD.md (between the section markers)."""
    parts = [SECTION_START, "## 4. Hallucination benchmark v2: Local Diffusion against the baselines", "",
             f"Reproduce: `{command}` (writes this section, the JSON files and the montages; cells are cached, "
             "so a re-run computes only what changed).", ""]
    for result, figure in zip(results, figures):
        source, target = (m.upper() for m in result["direction"].split("->"))
        ld = result["ld_config"]
        parts += [f"### {source} -> {target}", "",
                  f"Tumour cases of the *{result['split']}* split: {result['cases']} cases, "
                  f"{result['evaluated_slices']} slices (at most {result['max_slices']} per case with at least "
                  f"{result['min_tumour_fraction']:.0%} tumour area, the largest included); seeds {result['seeds']} "
                  f"(DDPM-100, the lookup and the truth: the first seed); mean ± sd over (case, seed). "
                  f"Local Diffusion: {ld['mask_mode']} mask, t_intermediate {ld['t_intermediate']}, "
                  f"gate {'on (target-modality PatchCore)' if result['gate'] else 'off'}, OOD-branch dilation "
                  f"{ld['ood_dilation']} px, crop margin {ld['crop_margin']} px. Seconds: sampling time per evaluated "
                  "slice on the 2-core CPU.", "",
                  markdown_table(result),
                  "Paired differences against DDIM-25 over cases (seeds averaged within a case), mean and 95% "
                  "bootstrap interval (10,000 resamples); **bold**: the interval excludes 0.", "",
                  differences_table(result), paired_table(result), labels_table(result), ld_records_line(result), "",
                  f"![{source} to {target} montage]({figure})", ""]
    parts.append(SECTION_END)
    return "\n".join(parts) + "\n"
