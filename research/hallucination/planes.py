"""Local Diffusion around the lesion in three planes: the plain translation, Local Diffusion and their
difference, with the mask it branched on and the true lesion outlined.

    python -m research.hallucination.planes --case data/bench_test/ld0_test_t0003 --direction flair_to_t1 \\
        --out research/results/ld_shipped

Runs the main job as shipped (its validated steps and fusion timestep) on the case's source contrast and writes
``planes_<direction>_<case>_t<fusion>.png``: axial, coronal and sagittal planes through the largest lesion's centre. A blocky
Local Diffusion edge shows as a step in the difference panel along the mask's outline (yellow), straight in the
coronal and sagittal planes where the mask is a stack of per-slice masks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def planes_figure(case: Path, direction: str, outputs: dict[str, Path], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from localdiffusion.options import DIRECTIONS
    from localdiffusion.volume.grid import normalise

    source, target = DIRECTIONS[direction]
    load = lambda p: np.asarray(nib.load(str(p)).dataobj, np.float32)  # noqa: E731
    src, truth, seg = (load(case / f"{case.name}_{s}.nii.gz") for s in (source, target, "seg"))
    scale = lambda v, m: normalise(v, v > 0, modality=m)[0]  # noqa: E731
    plain, local, mask = load(outputs["baseline"]), load(outputs["local"]), load(outputs["ood_mask"]) > 0
    from scipy import ndimage

    components, n = ndimage.label(seg > 0)
    largest = np.argmax(ndimage.sum(np.ones_like(seg), components, range(1, n + 1))) + 1
    centre = [int(round(c.mean())) for c in np.nonzero(components == largest)]  # the largest lesion's centre
    cuts = {"axial": lambda v: v[:, :, centre[2]].T, "coronal": lambda v: v[:, centre[1], :].T,
            "sagittal": lambda v: v[centre[0], :, :].T}
    panels = [(f"{source} (condition)", scale(src, source), "gray", (0, 1)),
              (f"plain {target}", plain, "gray", (0, 1)), (f"Local Diffusion {target}", local, "gray", (0, 1)),
              ("Local Diffusion - plain", local - plain, "coolwarm", (-0.3, 0.3)),
              (f"true {target}", scale(truth, target), "gray", (0, 1))]
    fig, axes = plt.subplots(3, len(panels), figsize=(3.2 * len(panels), 9.6), squeeze=False)
    for r, (plane, cut) in enumerate(cuts.items()):
        for ax, (name, volume, cmap, (lo, hi)) in zip(axes[r], panels):
            ax.imshow(cut(volume), cmap=cmap, origin="lower", vmin=lo, vmax=hi)
            ax.contour(cut(seg) > 0, levels=[0.5], colors="c", linewidths=0.6, origin="lower")
            if cut(mask).any():
                ax.contour(cut(mask), levels=[0.5], colors="yellow", linewidths=0.6, origin="lower")
            ax.set_title(name if r == 0 else "", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            if ax is axes[r][0]:
                ax.set_ylabel(plane)
    fig.suptitle(f"{title} (cyan: true lesion; yellow: the mask Local Diffusion branched on)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    from localdiffusion.data.io import save_png
    from localdiffusion.jobs.run import JobOptions, run_job
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.options import DIRECTIONS
    from localdiffusion.shipped import MODELS_ROOT

    p = argparse.ArgumentParser(prog="python -m research.hallucination.planes", description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, required=True, help="a phantom tumour case folder")
    p.add_argument("--direction", default="t1_to_flair", choices=list(DIRECTIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t-intermediate", type=int, default=-1, help="fusion timestep (-1: the model's validated one)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    source = DIRECTIONS[args.direction][0]
    config = read_config(MODELS_ROOT / args.direction)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = run_job(args.case / f"{args.case.name}_{source}.nii.gz", tmp,
                          JobOptions(direction=args.direction, seed=args.seed, local_diffusion="on", risk_map=False,
                                     t_intermediate=args.t_intermediate),
                          progress=False)
        fusion = config.fusion_step(args.t_intermediate)
        title = f"{args.case.name}, {args.direction}: DDIM-{config.steps}, fusion at t = {fusion}, seed {args.seed}"
        png = save_png(args.out / f"planes_{args.direction}_{args.case.name}_t{fusion}.png",
                       planes_figure(args.case, args.direction, outputs, title))
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
