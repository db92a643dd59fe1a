"""What a run's outputs do in the lesion: label means over the healthy-brain median, risk flagged.

    python -m research.risk_map.demo_lesion --case outputs/demo/phantom/ld0_test_t0000 --outputs outputs/demo

Prints, for the true target, the baseline and the Local Diffusion translation, the mean of each
tumour label (1 necrosis, 2 oedema, 4 enhancing) divided by the healthy brain's median, and the
fraction of tumour and of healthy brain at or above the risk map's calibrated level. Healthy brain:
the case's brain (``_mask``, else the source's non-zero voxels) minus its tumour label.

With ``--yardstick data/lesion_risk`` it also runs the job on the case as the lesion study records it (its
working grid, ``research.lesion_risk.collect``) and prints each lesion under the study's yardstick, the
gross-error level taken from that cache's healthy validation cases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from localdiffusion.options import DIRECTIONS, FLAG_THRESHOLD
from localdiffusion.volume.grid import normalise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, required=True, help="a phantom case folder")
    p.add_argument("--outputs", type=Path, required=True, help="the folder `localdiffusion run` wrote into")
    p.add_argument("--direction", default="t1_to_flair", choices=list(DIRECTIONS))
    p.add_argument("--yardstick", type=Path, default=None, metavar="FIT_CACHE",
                   help="also score the case by the lesion yardstick (the lesion study's cache of validation cases)")
    args = p.parse_args()
    source, target = DIRECTIONS[args.direction]
    case = args.case / args.case.name
    load = lambda path: np.asarray(nib.load(str(path)).dataobj, np.float32)  # noqa: E731
    seg = load(f"{case}_seg.nii.gz")
    mask_file = Path(f"{case}_mask.nii.gz")
    brain = load(mask_file) > 0 if mask_file.exists() else load(f"{case}_{source}.nii.gz") > 0
    healthy = brain & (seg == 0)
    truth = load(f"{case}_{target}.nii.gz")
    stem = args.outputs / f"{args.case.name}_{source}"
    volumes = {"truth": normalise(truth, truth > 0, modality=target)[0]}
    # what the run wrote: Local Diffusion's translation and the baseline beside it, or the plain translation
    for name, suffix in (("baseline", "_baseline"), ("local diffusion", "_local_diffusion"), ("translation", "")):
        if Path(f"{stem}_{target}{suffix}.nii.gz").exists():
            volumes[name] = load(f"{stem}_{target}{suffix}.nii.gz")
    for name, volume in volumes.items():
        median = np.median(volume[healthy])
        ratios = {label: float(volume[seg == label].mean() / median) for label in (1, 2, 4) if (seg == label).any()}
        print(f"{name}: " + ", ".join(f"label {k} {v:.2f}" for k, v in ratios.items()))
    risk = load(f"{stem}_hallucination_risk.nii.gz")
    print(f"risk >= {FLAG_THRESHOLD:g}: tumour {(risk[seg > 0] >= FLAG_THRESHOLD).mean():.1%}, "
          f"healthy brain {(risk[healthy] >= FLAG_THRESHOLD).mean():.2%}")
    if args.yardstick is not None:
        yardstick(args.case, args.direction, args.yardstick, args.outputs / f"yardstick_{args.direction}.npz")


def yardstick(case: Path, direction: str, fit: Path, record: Path) -> None:
    """Each lesion of ``case`` under the lesion study's yardstick, on the job's working grid."""
    from research.lesion_risk.collect import collect_case
    from research.lesion_risk.score import gross_error_level, load_cache
    from research.lesion_risk.yardstick import gross_errors, judge_lesions

    level = gross_error_level([c for c in load_cache(fit / direction, "val") if c["healthy"]])
    collect_case(case, direction, record)
    with np.load(record) as data:
        c = {k: data[k] for k in ("local", "truth", "risk", "brain", "seg")}
        spacing = float(np.asarray(data["affine"])[0, 0])
    brain = c["brain"].astype(bool)
    gross = gross_errors(c["local"], c["truth"], brain, c["seg"], spacing, level)
    for i, lesion in enumerate(judge_lesions(gross, c["risk"] >= FLAG_THRESHOLD, c["seg"], spacing), 1):
        state = ("flagged" if lesion.flagged else "not flagged") if lesion.misrepresented else "not misrepresented"
        print(f"lesion {i} ({lesion.voxels * spacing ** 3 / 1000:.2f} ml, {lesion.voxels} voxels of {spacing:g} mm): "
              f"{lesion.errors} gross-error voxels, {lesion.errors_flagged} of them at risk >= {FLAG_THRESHOLD:g}: "
              f"{state}")


if __name__ == "__main__":
    main()
