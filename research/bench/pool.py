"""One cohort made of several phantom cohorts, so that the benchmark pairs and bootstraps over all their cases at
once (the lesion families' cohorts share case ids across T1 kinds)::

    python -m research.bench.pool --cohorts data/families_mprage/glioma data/families_spin_echo/glioma \\
        --split val --out data/pool_val

Every case of ``--split`` is linked (files, not copies) under ``<cohort's parent>_<family>_<case id>``, and the
manifest lists it with that id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def pool(cohorts: list[Path], split: str, out: Path) -> list[str]:
    """Link the ``split`` cases of ``cohorts`` into ``out`` with unique ids; returns the ids."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for cohort in cohorts:
        manifest = json.loads((cohort / "manifest.json").read_text(encoding="utf-8"))
        for entry in manifest["cases"]:
            if entry["split"] != split:
                continue
            old = entry["case_id"]
            new = f"{cohort.parent.name}_{cohort.name}_{old}"
            folder = out / new
            folder.mkdir(exist_ok=True)
            for file in (cohort / old).iterdir():
                link = folder / file.name.replace(old, new, 1)
                if not link.exists():
                    link.symlink_to(file.resolve())
            entries.append({**entry, "case_id": new})
    (out / "manifest.json").write_text(json.dumps({"generator": "research.bench.pool", "cases": entries}, indent=1),
                                       encoding="utf-8")
    return [e["case_id"] for e in entries]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.bench.pool", description=__doc__.splitlines()[0])
    p.add_argument("--cohorts", nargs="+", type=Path, required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    ids = pool(args.cohorts, args.split, args.out)
    print(f"{args.out}: {len(ids)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
