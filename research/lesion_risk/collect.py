"""Run the product's main job on lesion-family cases and keep what the lesion yardstick and the candidate risk
maps need (generated data, outside git)::

    python -m research.lesion_risk.collect --cohorts data/families_mprage data/families_spin_echo --split val \
        --families glioma metastasis ms --direction t1_to_flair --cache data/lesion_risk
    python -m research.lesion_risk.collect --cohorts data/families_mprage --split val \
        --families glioma metastasis ms --direction flair_to_t1 --cache data/lesion_risk

FLAIR -> T1 is run on the MPRAGE-like cohort only: the model writes an MPRAGE-like T1, so a spin-echo T1 is
no truth for it. One compressed .npz per case under ``<cache>/<direction>/``, on the job's working grid: the
truth and the lesion labels resampled to it, the Local Diffusion and baseline translations, the written (location-aware) OOD
map ``ood``, the risk map, each detector's map as the risk's CDFs read it
(``detector_<name>``) and the brain, all at the default settings (``localdiffusion run`` with the shipped
models). A case already in the cache is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from localdiffusion.data.io import atomic_path, load_volume
from localdiffusion.jobs.run import JobOptions, compute_job
from localdiffusion.network.device import use_threads
from localdiffusion.options import DIRECTIONS
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import resample


def collect_case(case: Path, direction: str, out: Path) -> float:
    """Run one case and write its record on the job's working grid (2 mm: where the translation is sampled and
    the risk computed); returns the job's seconds."""
    source, target = DIRECTIONS[direction]
    started = time.time()
    # a scan the input gate would refuse is translated anyway (force), and its warnings are kept
    result = compute_job(case / f"{case.name}_{source}.nii.gz", JobOptions(direction=direction, force=True),
                         progress=False)
    seconds = time.time() - started
    truth, affine = load_volume(case / f"{case.name}_{target}.nii.gz")
    seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)  # a healthy case's is all zeros
    working = result.working
    shape = working["brain"].shape
    arrays = {"truth": resample(truth, affine, result.working_affine, shape, order=1),
              "seg": resample(seg, affine, result.working_affine, shape, order=0).astype(np.uint8),
              **working}
    arrays = {k: np.asarray(v).astype(np.uint8 if np.asarray(v).dtype in (bool, np.uint8) else np.float32)
              for k, v in arrays.items()}
    meta = {"case": case.name, "direction": direction, "steps": result.steps, "seconds": seconds,
            "spacing_mm": float(result.working_affine[0, 0]), "warnings": result.warnings}
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, meta=json.dumps(meta), affine=result.working_affine, **arrays)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.collect", description=__doc__.splitlines()[0])
    p.add_argument("--cohorts", nargs="+", type=Path, required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--families", nargs="+", required=True)
    p.add_argument("--direction", required=True, choices=list(DIRECTIONS))
    p.add_argument("--cache", type=Path, default=Path("data/lesion_risk"))
    p.add_argument("--max-tumour", type=int, default=None, help="only the first N tumour cases of each family")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    use_threads(args.threads)
    for root in args.cohorts:
        for family in args.families:
            cases = cases_in_split(root / family, args.split)
            if args.max_tumour is not None:
                tumour = [c for c in cases if "_t0" in c.name][:args.max_tumour]
                cases = [c for c in cases if "_t0" not in c.name] + tumour
            for case in cases:
                out = args.cache / args.direction / f"{root.name}_{case.name}.npz"
                if out.exists():
                    continue
                seconds = collect_case(case, args.direction, out)
                print(f"{out}: {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
