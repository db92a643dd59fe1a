"""``make demo``: the main job on the embedded default data with the shipped weights.

1. Generate a phantom glioma case from nilearn's MNI152 template (test-split seed range)
   and its preview montage.
2. Translate its T1 to FLAIR with the shipped model (DDIM-25) and write the NIfTI plus a
   PNG: T1, translated FLAIR, true FLAIR, at the slice with the most tumour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from .io import InputError, save_png
from .phantom.dataset import write_cohort


def shipped_model_dir(source: str = "t1", target: str = "flair") -> Path:
    """``monai_bundle/models/<source>_to_<target>`` of this repository."""
    return Path(__file__).resolve().parents[2] / "monai_bundle" / "models" / f"{source}_to_{target}"


def run_demo(out: str | Path, seed: int = 0, steps: int = 25) -> Iterator[str]:
    from .translate import translate_file

    out = Path(out)
    entries = write_cohort(out / "phantom", 0, 1, seed, split="test", preview=True)
    case_id = entries[0]["case_id"]
    case_dir = out / "phantom" / case_id
    yield f"phantom case: {case_dir} ({entries[0]['tumour_ml']} ml tumour, {len(entries[0]['lesions'])} lesion(s))"
    yield f"preview: {case_dir / (case_id + '_preview.png')}"
    model = shipped_model_dir()
    if not (model / "model.pt").exists():
        raise InputError(f"{model}: shipped weights missing (the checkout is incomplete)")
    t1_path = case_dir / f"{case_id}_t1.nii.gz"
    synth_path = out / f"{case_id}_flair_synth.nii.gz"
    translation = translate_file(t1_path, synth_path, model, sampler="ddim", steps=steps, seed=seed)
    yield f"translated FLAIR: {synth_path}"
    png = save_png(out / "translation.png", translation_figure(case_dir, case_id, translation.output))
    yield f"figure: {png}"


def translation_figure(case_dir: Path, case_id: str, synth: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = lambda s: np.asarray(nib.load(str(case_dir / f"{case_id}_{s}.nii.gz")).dataobj, np.float32)  # noqa: E731
    t1, flair, seg = load("t1"), load("flair"), load("seg")
    z = int(np.argmax((seg > 0).sum(axis=(0, 1)))) if seg.any() else seg.shape[2] // 2
    scale = lambda v: v / max(np.percentile(v[v > 0], 99.5), 1e-6)  # noqa: E731
    panels = [("T1 (input)", scale(t1)), ("translated FLAIR (DDIM-25)", synth), ("true FLAIR", scale(flair))]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.4))
    for ax, (title, vol) in zip(axes, panels):
        ax.imshow(vol[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.contour(seg[:, :, z].T > 0, levels=[0.5], colors="r", linewidths=0.6, origin="lower")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{case_id}, axial slice {z} (red: true tumour outline)")
    return fig
