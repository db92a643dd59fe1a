"""How high can translation PSNR go on the phantom? The Rician-noise ceiling.

The phantom's target images carry Rician noise (SNR 15-40) that no translator can predict
from the source image. For every case of a split this script regenerates the case from its
seed, normalises the noisy target as the pipeline does (``slices.normalise``) and puts the noise-free target on the same scale: the PSNR between the two over
the brain is what a perfect noise-free prediction would score. It is an upper bound: the
per-subject contrast jitter, protocol jitter and sequence-specific bias field cannot be
predicted either and lower the reachable PSNR further.

    python benchmarks/translation_ceiling.py --data data/phantom --split test --kind healthy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from localdiffusion.phantom.generate import generate_case
from localdiffusion.slices import normalise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/phantom")
    p.add_argument("--split", default="test")
    p.add_argument("--kind", default="healthy")
    args = p.parse_args()
    entries = [e for e in json.loads((Path(args.data) / "manifest.json").read_text())["cases"]
               if e["split"] == args.split and e["kind"] == args.kind]
    rows = {m: [] for m in ("flair", "t1")}
    for entry in entries:
        case = generate_case(entry["case_seed"], tumour=entry["kind"] == "tumour", spacing=entry.get("spacing_mm", 2.0))
        mask = case.brain_mask > 0
        stored = nib.load(str(Path(args.data) / entry["case_id"] / f"{entry['case_id']}_flair.nii.gz"))
        if not np.array_equal(np.asarray(stored.dataobj), case.images["flair"]):
            raise SystemExit(f"{entry['case_id']}: regenerated case differs from the stored one (other phantom version?)")
        for m in rows:
            noisy, scale = normalise(case.images[m].astype(np.float32), mask, modality=m)
            clean = np.clip(case.noise_free[m] / scale, 0.0, 1.0)
            mse = float(((clean - noisy)[mask] ** 2).mean())
            rows[m].append(10 * np.log10(1.0 / mse))
    for m, values in rows.items():
        print(f"{m}: {len(values)} {args.kind} {args.split} cases, noise-only PSNR ceiling "
              f"{np.mean(values):.2f} ± {np.std(values):.2f} dB (min {np.min(values):.2f}, max {np.max(values):.2f})")


if __name__ == "__main__":
    main()
