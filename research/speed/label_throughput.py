"""MONAI Label throughput: translation requests per minute, and the server's overhead.

Starts ``monailabel start_server`` on 127.0.0.1 with the shipped models, sends ``--requests``
``local_diffusion`` requests for one 2 mm phantom T1 volume one after another (DDIM-25, no
extra outputs), and times the same job called directly (:func:`localdiffusion.jobs.run.run_job`)
as many times in this process. Overhead = server time / direct time - 1 (target <= 10%).

    python -m research.speed.label_throughput --input data/phantom/ld0_test_t0002/ld0_test_t0002_t1.nii.gz
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import requests

from research.bench.label_server import local_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()

    from localdiffusion.jobs.run import JobOptions, run_job

    direct = []
    for seed in range(args.requests):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            run_job(args.input, out, JobOptions(steps=args.steps, seed=seed, baseline=False), progress=False)
            direct.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as work, local_server(Path(work, "studies"), Path(work, "server.log")) as url:
        served = []
        for seed in range(args.requests):
            with open(args.input, "rb") as fh:
                t0 = time.perf_counter()
                answer = requests.post(f"{url}/infer/local_diffusion", params={"output": "image"}, timeout=3600,
                                       files={"file": (Path(args.input).name, fh)},
                                       data={"params": json.dumps({"steps": args.steps, "seed": seed})})
                served.append(time.perf_counter() - t0)
            answer.raise_for_status()
    d, s = sum(direct) / len(direct), sum(served) / len(served)
    print(json.dumps({"input": args.input, "requests": args.requests, "steps": args.steps,
                      "direct_seconds": direct, "server_seconds": served,
                      "requests_per_minute": 60.0 / s, "server_overhead": s / d - 1.0}, indent=1))


if __name__ == "__main__":
    main()
