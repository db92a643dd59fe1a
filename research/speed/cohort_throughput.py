"""Cohort throughput: cases per hour of ``localdiffusion run`` over a folder of volumes with 1 and
with N processes (``torchrun``; one per GPU on a GPU machine, CPU threads split between them
here), on whatever device the machine has (research/RECORD.md section 7).

    python -m research.speed.cohort_throughput --data <folder of T1 volumes> --processes 1 2 \\
        --out research/results/cohort_throughput.json

Each configuration writes into a fresh folder (nothing is skipped) with the default job (OOD
map, baseline and Local Diffusion, DDIM-25); the wall time includes start-up and model loading
of every process, as a user's run would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from localdiffusion.data.io import atomic_path


def run(data: Path, processes: int, out: Path, extra: list[str]) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // processes) if not torch.cuda.is_available() else 1
    cli = ["-m", "localdiffusion.cli", "run", "--input", str(data), "--out-dir", str(out), *extra]
    command = [sys.executable, *cli] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *cli]
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    seconds = time.monotonic() - start
    report = json.loads((out / "cohort_report.json").read_text(encoding="utf-8"))
    done = [row for row in report["cases"] if row["status"] == "done"]
    if proc.returncode != 0 or len(done) != len(report["cases"]):
        raise RuntimeError(f"{processes} process(es) failed:\n{proc.stderr[-3000:]}")
    return {"processes": processes, "threads_per_process": threads, "cases": len(done), "wall_seconds": seconds,
            "cases_per_hour": 3600 * len(done) / seconds,
            "mean_case_seconds": sum(row["seconds"] for row in done) / len(done)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of source-contrast volumes")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more `localdiffusion run` options, after --")
    args = parser.parse_args()
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    rows = []
    for processes in args.processes:
        out = Path(tempfile.mkdtemp(prefix=f"throughput_{processes}_"))
        try:
            rows.append(run(args.data, processes, out, args.extra))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(rows[-1], flush=True)
    result = {"command": " ".join(sys.argv), "device": device, "rows": rows}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("| processes | threads each | cases | wall s | cases/hour | mean s per case (inside a process) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['threads_per_process']} | {r['cases']} | {r['wall_seconds']:.0f} | "
              f"{r['cases_per_hour']:.1f} | {r['mean_case_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
