"""What the robust OOD map adds to a run (research/RECORD.md section 11d), and the input gate's coil-field
check (section 9f): on one input, in one process, the bank's OOD map, the robust OOD map
(``ood_<source>_robust.json``), the gate's measurement (``InputGate.measure``: the N4 field and the depth
correlation) and one plain DDIM-25 translation, timed with ``time.perf_counter`` (all but the translation
``--repeats`` times each).

    make demo   # writes outputs/demo/phantom/ld0_test_t0000/ld0_test_t0000_t1.nii.gz
    python -m research.speed.robust_ood_cost --input outputs/demo/phantom/ld0_test_t0000/ld0_test_t0000_t1.nii.gz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from localdiffusion.detectors.input_gate import GATE_FILE, InputGate
from localdiffusion.jobs.inputs import prepare_input
from localdiffusion.jobs.run import model_paths
from localdiffusion.network.denoiser import load_denoiser
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.ood.volume import probability_volume
from localdiffusion.options import DIRECTIONS
from localdiffusion.shipped import MODELS_ROOT
from localdiffusion.volume.batching import batch_sampler, translate_prepared


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--direction", default="t1_to_flair", choices=list(DIRECTIONS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = DIRECTIONS[args.direction][0]
    paths = model_paths(MODELS_ROOT, args.direction)
    denoiser = load_denoiser(paths["diffusion"], "cpu")
    prepared = prepare_input(args.input, source, denoiser.config.spacing_mm, denoiser.config.in_plane)
    bank = PatchCore.load(paths["ood"], modality=source)
    robust = RobustCalibration.load(paths["robust"])
    gate = InputGate.load(MODELS_ROOT / GATE_FILE)

    def timed(work) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    seconds = {"bank OOD map": [timed(lambda: probability_volume(bank, prepared)) for _ in range(args.repeats)],
               "robust OOD map": [timed(lambda: robust.probability(bank, prepared.images[source], prepared.brain))
                                  for _ in range(args.repeats)],
               "input gate's measurement (coil field, depth correlation)": [
                   timed(lambda: gate.measure(source, prepared.images[source], prepared.brain, prepared.grid.spacing))
                   for _ in range(args.repeats)],
               "one DDIM-25 translation": [timed(lambda: translate_prepared(
                   denoiser, prepared, sample_batch=batch_sampler("ddim", 25), progress=False))]}
    for name, values in seconds.items():
        print(f"{name}: {' '.join(f'{v:.1f}' for v in values)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
