"""What a run's outputs do in the lesion: label means over the healthy-brain median, risk flagged.

    python -m research.risk_map.demo_lesion --case outputs/demo/phantom/ld0_test_t0000 --outputs outputs/demo

Prints, for the true target, the baseline and the Local Diffusion translation, the mean of each
tumour label (1 necrosis, 2 oedema, 4 enhancing) divided by the healthy brain's median, and the
fraction of tumour and of healthy brain at or above the risk map's calibrated level. Healthy brain:
the case's brain (``_mask``, else the source's non-zero voxels) minus its tumour label.
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


if __name__ == "__main__":
    main()
