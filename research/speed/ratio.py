"""Two whole commands timed side by side: A and B run in turn (A B A B ...), ratio A/B pair by pair.

Pairing keeps the ratio meaningful when the machine's speed drifts. Each command runs through
``sh -c`` (so it may remove its output folder first); wall seconds from a monotonic clock, CPU
seconds (user + system) from the operating system's accounting of the finished children::

    python -m research.speed.ratio --pairs 2 \\
        --a "rm -rf OUT_A && localdiffusion run --input CASE_t1.nii.gz --out-dir OUT_A" \\
        --b "rm -rf OUT_B && localdiffusion translate --input CASE_t1.nii.gz --out OUT_B/flair.nii.gz --steps 25"
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def timed(command: str) -> dict:
    """Run ``command`` through ``sh -c``; its wall and CPU seconds (raises if it fails)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(["sh", "-c", command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.speed.ratio", description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="command A (the one measured)")
    p.add_argument("--b", required=True, help="command B (the yardstick)")
    p.add_argument("--pairs", type=int, default=3)
    args = p.parse_args(argv)
    runs = []
    for i in range(args.pairs):
        a, b = timed(args.a), timed(args.b)
        runs.append({"a": a, "b": b, "ratio_wall": a["wall"] / b["wall"], "ratio_cpu": a["cpu"] / b["cpu"]})
        print(f"pair {i + 1}: A {a['wall']:.1f} s wall, {a['cpu']:.1f} s cpu; B {b['wall']:.1f} s, {b['cpu']:.1f} s; "
              f"A/B wall {runs[-1]['ratio_wall']:.3f}", flush=True)
    median = lambda key, sub=None: float(np.median([r[key][sub] if sub else r[key] for r in runs]))  # noqa: E731
    summary = {"pairs": args.pairs, "a_wall": median("a", "wall"), "b_wall": median("b", "wall"),
               "a_cpu": median("a", "cpu"), "b_cpu": median("b", "cpu"), "ratio_wall": median("ratio_wall"),
               "ratio_cpu": median("ratio_cpu"),
               "ratio_wall_range": [min(r["ratio_wall"] for r in runs), max(r["ratio_wall"] for r in runs)]}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
