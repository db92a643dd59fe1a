"""Diffusion speed on this machine (benchmark, not a test).

    python -m research.speed.diffusion_speed [--model monai_bundle/models/t1_to_flair] [--data data/phantom]

Reports ms per slice per network call (fp32 and bf16 autocast, channels_last, batch 8 and
16, whole 96 x 112 slices), seconds per 2 mm phantom volume (first tumour test case) for
DDIM-25, DDIM-50 and DDPM-100 - as translated (each slice on its brain crop) and, with
``--whole-slices-too``, on whole slices - and the peak resident memory of the process.
``effective_ms_per_slice_per_call`` is a volume's seconds over (brain slices x steps).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from localdiffusion.data.readers import read_case
from localdiffusion.network.denoiser import build_network, load_denoiser
from localdiffusion.shipped import shipped_model_dir
from localdiffusion.volume.batching import BRAIN_CROP_MARGIN, translate_prepared
from localdiffusion.volume.cohort import cases_in_split
from localdiffusion.volume.grid import prepare_case


def whole_slices(denoiser, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (x_t, condition) pairs of ``batch`` whole working-grid slices."""
    h, w = denoiser.config.in_plane
    return torch.randn(batch, 1, h, w), torch.randn(batch, 1, h, w)


@torch.no_grad()
def ms_per_slice(denoiser, batch: int, autocast: bool, repeats: int = 5) -> float:
    denoiser.autocast = autocast
    x, c = whole_slices(denoiser, batch)
    denoiser(x, c, 50)
    t0 = time.perf_counter()
    for _ in range(repeats):
        denoiser(x, c, 50)
    return 1000 * (time.perf_counter() - t0) / (repeats * batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=shipped_model_dir())
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--samplers", nargs="+", default=["ddim-25", "ddim-50", "ddpm-100"],
                        help="volume timings to run, e.g. ddim-25 ddpm-100 (none: skip)")
    parser.add_argument("--compare-attention", action="store_true",
                        help="also time MONAI's manual attention against torch SDPA (bf16, batch 8)")
    parser.add_argument("--whole-slices-too", action="store_true", help="also time volumes on whole slices")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's operator table (bf16, batch 8)")
    args = parser.parse_args()
    denoiser = load_denoiser(args.model)
    result = {"threads": torch.get_num_threads(), "model": str(args.model),
              "parameters_M": sum(p.numel() for p in denoiser.parameters()) / 1e6, "ms_per_slice_per_call": {}}
    for batch in (8, 16):
        for autocast in (False, True):
            key = f"{'bf16' if autocast else 'fp32'}_batch{batch}"
            result["ms_per_slice_per_call"][key] = round(ms_per_slice(denoiser, batch, autocast), 1)
            print(key, result["ms_per_slice_per_call"][key], "ms", flush=True)
    denoiser.autocast = True
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        x, c = whole_slices(denoiser, 8)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                denoiser(x, c, 50)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    if args.compare_attention:
        manual = load_denoiser(args.model)
        manual.config.use_flash_attention = False
        network = build_network(manual.config)
        network.load_state_dict(manual.network.state_dict())
        manual.network = network.to(memory_format=torch.channels_last).eval()
        result["attention_bf16_batch8_ms"] = {"sdpa": round(ms_per_slice(denoiser, 8, True), 1),
                                              "manual": round(ms_per_slice(manual, 8, True), 1)}
        print("attention", result["attention_bf16_batch8_ms"], flush=True)
    args.samplers = [] if args.samplers == ["none"] else args.samplers
    case_path = cases_in_split(args.data, "test", "tumour")[0]
    prepared = prepare_case(read_case(case_path, (denoiser.config.source,)), denoiser.config.spacing_mm,
                            denoiser.config.in_plane)
    slices = int(prepared.brain_slices().size)
    result["volume"] = {"case": case_path.name, "brain_slices": slices, "seconds": {},
                        "effective_ms_per_slice_per_call": {}}
    modes = {"brain crops": BRAIN_CROP_MARGIN, **({"whole slices": None} if args.whole_slices_too else {})}
    for sampler, steps in ((name.split("-")[0], int(name.split("-")[1])) for name in args.samplers):
        for mode, margin in modes.items():
            key = f"{sampler}-{steps}" + ("" if margin == BRAIN_CROP_MARGIN else f" ({mode})")
            t0 = time.perf_counter()
            translate_prepared(denoiser, prepared, sampler=sampler, steps=steps, batch_size=16, progress=False,
                               crop_margin=margin)
            seconds = time.perf_counter() - t0
            result["volume"]["seconds"][key] = round(seconds, 1)
            result["volume"]["effective_ms_per_slice_per_call"][key] = round(1000 * seconds / (slices * steps), 1)
            print(key, result["volume"]["seconds"][key], "s", flush=True)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
