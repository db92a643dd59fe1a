"""How high can translation PSNR and SSIM go on the phantom? The Rician-noise ceiling.

The phantom's target images carry Rician noise (SNR 15-40) that no translator can predict
from the source image. For every case of a split this script regenerates the case from its
seed, normalises the noisy target as the pipeline does (``slices.normalise``) and puts the
noise-free target on the same scale: the PSNR and SSIM between the two over the brain
(``evaluate.volume_scores``: on [0, 1] and with the true volume's 99.5th percentile as data
range, like ``localdiffusion evaluate``; here on the phantom's own 2 mm grid) are what a
perfect noise-free prediction would score. It is an upper bound: the
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

from localdiffusion.evaluate import volume_scores
from localdiffusion.phantom.generate import generate_case
from localdiffusion.slices import normalise


KEYS = ("psnr", "ssim", "psnr_range", "ssim_range")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/phantom")
    p.add_argument("--split", default="test")
    p.add_argument("--kind", default="healthy")
    args = p.parse_args()
    entries = [e for e in json.loads((Path(args.data) / "manifest.json").read_text())["cases"]
               if e["split"] == args.split and e["kind"] == args.kind]
    rows = {m: {k: [] for k in KEYS} for m in ("flair", "t1")}
    for entry in entries:
        case = generate_case(entry["case_seed"], tumour=entry["kind"] == "tumour", spacing=entry.get("spacing_mm", 2.0))
        mask = case.brain_mask > 0
        stored = nib.load(str(Path(args.data) / entry["case_id"] / f"{entry['case_id']}_flair.nii.gz"))
        if not np.array_equal(np.asarray(stored.dataobj), case.images["flair"]):
            raise SystemExit(f"{entry['case_id']}: regenerated case differs from the stored one (other phantom version?)")
        for m in rows:
            noisy, scale = normalise(case.images[m].astype(np.float32), mask, modality=m)
            clean = np.clip(case.noise_free[m] / scale, 0.0, 1.0)
            scores = volume_scores(clean, noisy, mask)
            for k in KEYS:
                rows[m][k].append(scores[k])
    for m, values in rows.items():
        figures = ", ".join(f"{k} {np.mean(v):.3f} ± {np.std(v):.3f} (min {np.min(v):.3f})" for k, v in values.items())
        print(f"{m}: {len(values['psnr'])} {args.kind} {args.split} cases, noise-only ceiling: {figures}")


if __name__ == "__main__":
    main()
