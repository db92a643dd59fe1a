"""How high can translation PSNR and SSIM go on the phantom? Noise and protocol ceilings.

The phantom's target images carry Rician noise (SNR 15-40) that no translator can predict
from the source image. For every case of a split this script regenerates the case from its
seed, normalises the noisy target as the pipeline does (``slices.normalise``) and puts the
noise-free target on the same scale: the PSNR and SSIM between the two over the brain
(``evaluate.volume_scores``: on [0, 1] and with the true volume's 99.5th percentile as data
range, like ``localdiffusion evaluate``; here on the phantom's own 2 mm grid) are what a
perfect noise-free prediction would score.

The *protocol ceiling* adds the target sequence's timings (TR, TE, TI drawn per subject
inside clinical ranges, independently of the source's): the case is regenerated ``--draws``
times with only the target's timings redrawn (anatomy, tissue relaxation times, source
scan, contrast jitter, bias fields and gain exactly as in the stored case), each noise-free
target normalised by its own statistic, and their mean - the best prediction for PSNR of
an oracle that knows everything but the target's timings - is scored against the scan.
Both are upper bounds: the oracle still knows the contrast jitter and the sequence-specific
bias field, which no translator can see either. For PSNR the protocol oracle is (up to the
finite number of draws) the best possible prediction; SSIM is no expected squared error and
rewards a prediction with more local contrast than the truth when the truth is noisy, so the
noise-only oracle is also scored sharpened (``--sharpen``: clean + (g - 1)(clean - blur),
blur = SSIM's own Gaussian window, sigma 1.5 pixels in-plane) to see how far that goes.

    python -m research.ceiling.translation_ceiling --data data/phantom --split test --kind healthy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from localdiffusion.metrics import volume_scores
from localdiffusion.phantom import generate
from localdiffusion.phantom.generate import generate_case
from localdiffusion.volume.grid import normalise

KEYS = ("psnr", "ssim", "psnr_range", "ssim_range")
TARGETS = ("flair", "t1")


def with_target_timings(entry: dict, timing_seed: list[int]) -> generate.PhantomCase:
    """The case of ``entry`` regenerated with every target's sequence timings drawn from ``timing_seed``."""
    real = generate.draw_protocol

    def redrawn(rng, t1_sequence="mprage"):
        protocol = real(rng, t1_sequence)  # consumes the case's own draws: everything after stays identical
        other = real(np.random.default_rng(timing_seed), t1_sequence)
        return {m: other[m] if m in TARGETS else s for m, s in protocol.items()}

    generate.draw_protocol = redrawn
    try:
        return generate_case(entry["case_seed"], tumour=entry["kind"] == "tumour", spacing=entry.get("spacing_mm", 2.0))
    finally:
        generate.draw_protocol = real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/phantom")
    p.add_argument("--split", default="test")
    p.add_argument("--kind", default="healthy")
    p.add_argument("--draws", type=int, default=32, help="target timings drawn per case for the protocol ceiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sharpen", type=float, nargs="*", default=[1.1, 1.25, 1.5],
                   help="local-contrast gains g of the sharpened noise-only oracle")
    args = p.parse_args()
    entries = [e for e in json.loads((Path(args.data) / "manifest.json").read_text())["cases"]
               if e["split"] == args.split and e["kind"] == args.kind]
    ceilings = ("noise-only", "protocol", *(f"noise-only sharpened x{g}" for g in args.sharpen))
    rows = {(m, c): {k: [] for k in KEYS} for m in TARGETS for c in ceilings}
    for entry in entries:
        case = generate_case(entry["case_seed"], tumour=entry["kind"] == "tumour", spacing=entry.get("spacing_mm", 2.0))
        mask = case.brain_mask > 0
        stored = nib.load(str(Path(args.data) / entry["case_id"] / f"{entry['case_id']}_flair.nii.gz"))
        if not np.array_equal(np.asarray(stored.dataobj), case.images["flair"]):
            raise SystemExit(f"{entry['case_id']}: regenerated case differs from the stored one (other phantom version?)")
        alternatives = [with_target_timings(entry, [args.seed, entry["case_seed"], d]) for d in range(args.draws)]
        if not all(np.array_equal(a.images["t2"], case.images["t2"]) for a in alternatives):  # untouched contrast
            raise SystemExit(f"{entry['case_id']}: redrawing the timings changed more than the target contrasts")
        for m in TARGETS:
            noisy, scale = normalise(case.images[m].astype(np.float32), mask, modality=m)
            clean = np.clip(case.noise_free[m] / scale, 0.0, 1.0)
            detail = clean - ndimage.gaussian_filter(clean, (1.5, 1.5, 0.0), truncate=3.5)
            predictions = {"noise-only": clean,
                           "protocol": np.mean([normalise(a.noise_free[m], mask, modality=m)[0] for a in alternatives], 0),
                           **{f"noise-only sharpened x{g}": np.where(mask, np.clip(clean + (g - 1.0) * detail, 0, 1), 0)
                              for g in args.sharpen}}
            for c, prediction in predictions.items():
                scores = volume_scores(prediction, noisy, mask)
                for k in KEYS:
                    rows[m, c][k].append(scores[k])
    for (m, c), values in rows.items():
        figures = ", ".join(f"{k} {np.mean(v):.3f} ± {np.std(v):.3f} (min {np.min(v):.3f})" for k, v in values.items())
        print(f"{m}: {len(values['psnr'])} {args.kind} {args.split} cases, {c} ceiling: {figures}")


if __name__ == "__main__":
    main()
