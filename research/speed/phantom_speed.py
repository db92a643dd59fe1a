"""Wall time to generate one phantom case (benchmark, not a test).

    python -m research.speed.phantom_speed [--spacing 2] [--cases 5]

Reports the mean and maximum seconds per case (generation only, and with writing NIfTI),
after one warm-up case that loads the nilearn template.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from localdiffusion.phantom.dataset import write_case
from localdiffusion.phantom.generate import generate_case


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--cases", type=int, default=5)
    args = parser.parse_args()
    generate_case(0, tumour=True, spacing=args.spacing)  # warm-up: template loading and caches
    gen, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            t0 = time.perf_counter()
            generate_case(200_000_000 + i, tumour=bool(i % 2), spacing=args.spacing)
            gen.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            entry = {"case_id": f"bench{i}", "split": "test", "kind": "tumour" if i % 2 else "healthy",
                     "case_seed": 200_000_000 + i}
            write_case(Path(tmp), entry, args.spacing, "mprage", preview=False)
            full.append(time.perf_counter() - t0)
    print(f"spacing {args.spacing} mm, {args.cases} cases: generate mean {sum(gen)/len(gen):.2f} s "
          f"(max {max(gen):.2f} s); generate + write NIfTI mean {sum(full)/len(full):.2f} s (max {max(full):.2f} s)")


if __name__ == "__main__":
    main()
