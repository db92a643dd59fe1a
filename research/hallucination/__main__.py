"""The hallucination benchmark: baselines against Local Diffusion on tumour cases.

Runs the matrix of :mod:`research.bench.matrix` (rows x cases x seeds, cells cached), writes
``hallucination_<direction>.{json,png}`` to ``--out-dir`` and rewrites the benchmark section of
``--markdown``::

    python -m research.hallucination --data data/bench_test --split test --lookup-data data/bench_val \
        --seeds 0 1 2 --max-slices 3 --max-cases 20 --cache data/bench_cache
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from localdiffusion.cli import MODELS_HELP
from localdiffusion.methods.local_diffusion import LocalDiffusionConfig
from localdiffusion.options import DIRECTIONS, add_options
from research.bench.runner import benchmark_direction, render_section


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.hallucination", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="cohort with tumour cases (phantom manifest)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    p.add_argument("--models", type=Path, default=None, help=MODELS_HELP)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--max-slices", type=int, default=4, help="evaluated slices per case (evenly spread, the largest "
                   "tumour slice included; 0 = every slice with at least 1%% tumour)")
    p.add_argument("--lookup-data", type=Path, default=None,
                   help="cohort whose healthy train/val cases fit the local healthy mapping (default: --data)")
    p.add_argument("--cache", type=Path, default=None, help="keep every (row, case, seed) result here between runs")
    p.add_argument("--rows", nargs="+", default=None, help="run only these rows (names as in the table)")
    p.add_argument("--vsm-model", type=Path, default=None,
                   help="a VSM-trained model folder of the direction: adds its DDPM rows beside the shipped model's")
    p.add_argument("--steps", type=int, nargs="+", default=[],
                   help="also run the plain and Local Diffusion rows at these DDIM step counts, each paired against "
                        "its --reference-steps namesake (rows named e.g. 'DDIM-5', 'LD oracle mask, IND floor 0, DDIM-5')")
    p.add_argument("--reference-steps", type=int, default=25, help="the step count --steps rows are paired against")
    p.add_argument("--mask-levels", type=float, nargs="+", default=[],
                   help="also run Local Diffusion on the robust PatchCore mask tightened to these level sets "
                        "(research/ood_masks), rows 'LD robust patchcore level L mask, IND floor 0.95'")
    p.add_argument("--shipped", action="store_true",
                   help="also run the two translations `run` writes, with the model's own step count: rows 'shipped "
                        "DDIM-<s>' and 'shipped LD, DDIM-<s>' (Local Diffusion on the product's mask, paired against "
                        "the former)")
    add_options(p, ["gate", "t_intermediate"])
    p.add_argument("--ood-dilation", type=int, default=0, help="Local Diffusion OOD-branch dilation (pixels)")
    p.add_argument("--out-dir", type=Path, default=Path("research/results"), help="JSON and PNG montages")
    p.add_argument("--markdown", type=Path, default=Path("research/RECORD.md"), help="file whose benchmark section is rewritten")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m research.hallucination " + " ".join(shlex.quote(a) for a in argv)
    ld_config = LocalDiffusionConfig(t_intermediate=args.t_intermediate, ood_dilation=args.ood_dilation)
    for direction in args.directions:
        result = benchmark_direction(direction, args.data, args.out_dir, models_root=args.models, split=args.split,
                                     seeds=tuple(args.seeds), max_cases=args.max_cases,
                                     max_slices=args.max_slices or None, gate=args.gate, lookup_data=args.lookup_data,
                                     cache_dir=args.cache, ld_config=ld_config, rows=args.rows, command=command,
                                     variant_models={"VSM": args.vsm_model} if args.vsm_model else None,
                                     steps=tuple(args.steps), reference_steps=args.reference_steps,
                                     mask_levels=tuple(args.mask_levels), shipped=args.shipped)
        print(f"{direction}: {result['cases']} cases, {result['evaluated_slices']} slices, "
              f"{result['computed_cells']} cells computed -> {args.out_dir}")
    render_section(args.out_dir, args.markdown)
    print(f"updated {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
