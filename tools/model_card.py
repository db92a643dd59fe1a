"""Write MODEL_CARD.md for a shipped diffusion model from its training log and test report.

    python tools/model_card.py --run runs/t1_to_flair_ft --previous runs/t1_to_flair \
        --report runs/t1_to_flair_ft/test_report.json --out monai_bundle/models/t1_to_flair

``--previous``: earlier training runs this one was initialised from (``--init-from``), oldest
first; the card lists every stage. ``--previous-card``: the card of the model this run was
initialised from, when the earlier runs' logs are not on this machine (its stage lines are kept).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

STAGE_LINE = re.compile(r"^  \d+\. (`.*)$")


def parse_log(log: Path) -> dict:
    lines = log.read_text().splitlines()
    stamp = lambda line: datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")  # noqa: E731
    start = next(line for line in lines if "training" in line)
    val = [line for line in lines if "validation" in line]
    exported = [int(m.group(1)) for line in lines if (m := re.search(r"after (\d+) steps", line))]
    resumed = [line.split(" ", 2)[2] for line in lines if "resumed" in line]
    seconds, previous = 0.0, None  # wall time of the training processes, without the gaps between them
    for line in lines:
        if not line[:4].isdigit():
            continue
        if "healthy slices" in line or "resumed from" in line:  # a process starts
            previous = stamp(line)
        elif previous is not None:
            seconds += (stamp(line) - previous).total_seconds()
            previous = stamp(line)
    return {"started": start[:19], "finished": lines[-1][:19], "wall_minutes": round(seconds / 60, 1),
            "slices": re.search(r"(\d+) healthy slices", start).group(1), "config": start.split("config ", 1)[1],
            "last_step": exported[-1] if exported else 0, "validation": val, "resumed": resumed}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--previous", type=Path, nargs="*", default=[])
    p.add_argument("--previous-card", type=Path, default=None)
    p.add_argument("--compare", type=Path, nargs="*", default=[],
                   help="evaluate reports (JSON) of this model and the shipped one on the same cases, listed as a table")
    args = p.parse_args()
    log = parse_log(args.run / "train.log")
    stages = [(run, parse_log(run / "train.log")) for run in [*args.previous, args.run]]
    earlier = [m.group(1) for line in (args.previous_card.read_text().splitlines() if args.previous_card else [])
               if (m := STAGE_LINE.match(line))]
    stage_lines = "\n".join([f"  {i + 1}. {text}" for i, text in enumerate(earlier)] + [
        f"  {len(earlier) + i + 1}. `{run}`: {st['last_step']} steps, {st['wall_minutes']} min ({st['started']} to {st['finished']} UTC); "
        f"configuration `{st['config']}`" + (f"; resumptions: {'; '.join(st['resumed'])}" if st["resumed"] else "")
        for i, (run, st) in enumerate(stages)])
    report = json.loads(args.report.read_text())
    cfg = json.loads((args.out / "config.json").read_text())
    (psnr, psnr_sd), (ssim, ssim_sd), (pslice, pslice_sd), (prange, prange_sd), (srange, srange_sd), (sec, _) = (
        report["mean_std"][k] for k in ("psnr", "ssim", "psnr_slice_mean", "psnr_range", "ssim_range", "seconds"))
    size_mb = (args.out / "model.pt").stat().st_size / 1e6
    extra = cfg.get("extra") or {}
    n_cond = cfg.get("condition_slices", 1)
    condition = (f"{cfg['source']}" if n_cond == 1 else
                 f"{cfg['source']} slices k, k-1, k+1, ... ({n_cond} slices: 2.5D, neighbours zero outside the volume)")
    objective = ("plain: MSE on x0" if extra.get("objective", "plain") == "plain" else
                 f"VSM: MSE on x0 + learned variance (a second output channel, log-variance fraction between "
                 f"beta-tilde and beta) trained by improved DDPM's variational term + the VSM smoothness regulariser "
                 f"mean(1 / (1 + J^2)), J = -1 / sigma^2, rho {extra.get('vsm_rho')}"
                 f"{', time-aware' if extra.get('vsm_time_aware') else ''}; sample with `--sampler ddpm` for the "
                 f"learned variance to act (DDIM ignores it)")
    compare_lines = ""
    if args.compare:
        rows = []
        for path in args.compare:
            r = json.loads(path.read_text())
            m = r["mean_std"]
            rows.append(f"  | `{r.get('model', path.stem)}` | {r['sampler'].upper()}-{r['steps']} | {r['split']} "
                        f"{r['kind']} ({r['cases']}) | {m['psnr'][0]:.2f} ± {m['psnr'][1]:.2f} | "
                        f"{m['ssim'][0]:.4f} ± {m['ssim'][1]:.4f} |")
        compare_lines = ("* Compared on the same cases (whole-brain PSNR/SSIM, [0, 1] scale, mean ± sd over cases):\n\n"
                         "  | model | sampler | cases | PSNR dB | SSIM |\n  |---|---|---|---|---|\n"
                         + "\n".join(rows) + "\n")
    val_lines = "\n".join(f"    {v.split(' ', 2)[2]}" for v in log["validation"])
    verdict = ("Meets the project's quality bar (PSNR 27 dB, SSIM 0.90, judged with the true volume's p99.5 as "
               "data range)." if prange >= 27 and srange >= 0.90 else
               "**Below the project's quality bar (PSNR 27 dB, SSIM 0.90)**, which no translator can meet on this "
               "phantom in either direction (oracle ceilings in research/RECORD.md section 1).")
    sampling = (f"* Sampling defaults (`config.json`, chosen on validation, research/RECORD.md 8a/8b): slice-correlated "
                f"noise `noise_sigma_z` {cfg.get('noise_sigma_z', 0.0):g}, banding filter `z_harmonise` "
                f"{cfg.get('z_harmonise', 0.0):g} (0 = off; the options' default -1 takes these).\n")
    margin = report.get("crop_margin")
    slices = f"each slice on its brain crop (margin {margin} px, `translate`'s default)" if margin is not None \
        else "whole slices"
    text = f"""# Model card: {cfg['source'].upper()} -> {cfg['target'].upper()} conditional diffusion model

**Research use only; not for diagnosis.**

* Network: MONAI `DiffusionModelUNet` (2D), channels {tuple(cfg['channels'])}, attention at the lowest
  level, {cfg['num_res_blocks']} residual blocks per level; input `cat([x_t, {condition}])` (noisy target
  first, condition second); output x0 (`prediction_type` "{cfg['prediction_type']}"); sigmoid beta
  schedule, T = {cfg['num_train_timesteps']}. Weights: EMA, `model.pt` ({size_mb:.1f} MB), `config.json`.
* Objective: {objective}.
* Working grid: {cfg['spacing_mm']} mm axial slices, {cfg['in_plane'][0]} x {cfg['in_plane'][1]}; intensities
  normalised by contrast (`volume/grid.py` NORMALISATION: T1 99.5th foreground percentile -> 1, FLAIR median -> 0.5),
  clipped to [0, 1] (network scale [-1, 1]).
* Data: healthy cases of the physics phantom's *train* split
  (`localdiffusion phantom --out data/phantom --healthy 60 --tumour 40 --seed 0`: 42 healthy
  training cases, {log['slices']} brain slices), random 64 x 64 crops, left-right flips.
* Training: `localdiffusion train --data data/phantom --source {cfg['source']} --target {cfg['target']}`
  (exported EMA), batch 16, AdamW, EMA 0.999, bf16 autocast, CPU threads as in each configuration
  (other jobs often shared the 2 cores; minutes are the training processes' wall time, gaps between
  resumptions excluded), in {len(earlier) + len(stages)} stage(s), each later one `--init-from` the one before:
{stage_lines}
  Stage 1 normalised FLAIR by its 99.5th percentile; the later stages by its median (T1 unchanged).
* Validation during the last stage (DDIM-10 on 32 healthy *val* slices, mean per-slice PSNR/SSIM over the brain):
{val_lines}
* Test ({report['cases']} healthy *test* cases, {report['sampler'].upper()}-{report['steps']}, seed {report['seed']}, {slices}, [0, 1]
  intensities; per case PSNR from the MSE over all brain voxels, SSIM map averaged over all
  brain voxels; mean ± sd over cases; with the sampling defaults above): PSNR {psnr:.2f} ± {psnr_sd:.2f} dB, SSIM {ssim:.4f} ± {ssim_sd:.4f}
  on the [0, 1] scale; **with the true volume's 99.5th brain percentile as data range (independent
  of the normalisation's scale): PSNR {prange:.2f} ± {prange_sd:.2f} dB, SSIM {srange:.4f} ± {srange_sd:.4f}**
  (mean per-slice PSNR {pslice:.2f} ± {pslice_sd:.2f} dB), {sec:.1f} s per volume (other jobs shared the 2 cores; idle figures in the README).
  {verdict} Reproduce:
  `localdiffusion evaluate --data data/phantom --model {args.out} --split test --kind healthy`.
{sampling}{compare_lines}* Limitations: trained on healthy synthetic brains only. Like every healthy-trained
  translator it may paint healthy tissue over lesions (structural hallucination); use the
  OOD map, Local Diffusion and the risk map, and never use the output for diagnosis. Local
  Diffusion runs with the defaults chosen on tumour *validation* cases (no classifier gate,
  the two branches fused at the model's `config.json` `t_intermediate`, research/hallucination); what it does
  and does not do with these weights:
  research/RECORD.md section 4 (hallucination benchmark v2).
"""
    (args.out / "MODEL_CARD.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
