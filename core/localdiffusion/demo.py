"""``make demo``: the main job on the embedded default data.

Generates a phantom glioma case from nilearn's MNI152 template (test-split seed range)
and writes its preview montage; once shipped weights exist, later stages extend it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .phantom.dataset import write_cohort


def run_demo(out: str | Path, seed: int = 0) -> Iterator[str]:
    out = Path(out)
    entries = write_cohort(out / "phantom", 0, 1, seed, split="test", preview=True)
    case_id = entries[0]["case_id"]
    case_dir = out / "phantom" / case_id
    yield f"phantom case: {case_dir} ({entries[0]['tumour_ml']} ml tumour, {len(entries[0]['lesions'])} lesion(s))"
    yield f"preview: {case_dir / (case_id + '_preview.png')}"
