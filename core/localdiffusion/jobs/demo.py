"""``make demo``: the main job on the embedded default data with the shipped weights.

1. Generate a phantom glioma case from nilearn's MNI152 template (test-split seed range)
   and its preview montage.
2. Run the main job (:func:`~localdiffusion.jobs.run.run_job`) on its T1 with the shipped
   models and their validated settings: OOD map, the FLAIR translation (Local Diffusion's where the
   direction's model keeps it on, with the baseline beside it), risk map.
3. Write ``translation.png``: condition, OOD map, the translation(s), true FLAIR and
   the hallucination-risk map with its flagged regions outlined, in the axial, coronal and sagittal planes through the centre
   of the tumour (banding between independently sampled axial slices shows in the last two).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from localdiffusion.data.io import orient_plane, save_png
from localdiffusion.options import FLAG_THRESHOLD, HEALTHY_FPR, default
from localdiffusion.phantom.dataset import write_cohort
from localdiffusion.volume.grid import normalise


def run_demo(out: str | Path, seed: int = 0, steps: int = default("steps")) -> Iterator[str]:
    from localdiffusion.jobs.run import JobOptions, run_job
    from localdiffusion.network.denoiser import read_config
    from localdiffusion.shipped import shipped_model_dir

    out = Path(out)
    entries = write_cohort(out / "phantom", 0, 1, seed, split="test", preview=True)
    case_id = entries[0]["case_id"]
    case_dir = out / "phantom" / case_id
    yield f"phantom case: {case_dir} ({entries[0]['tumour_ml']} ml tumour, {len(entries[0]['lesions'])} lesion(s))"
    yield f"preview: {case_dir / (case_id + '_preview.png')}"
    outputs = run_job(case_dir / f"{case_id}_t1.nii.gz", out, JobOptions(steps=steps, seed=seed))
    for name, path in outputs.items():
        yield f"{name}: {path}"
    steps = read_config(shipped_model_dir()).sampling_steps(steps)
    png = save_png(out / "translation.png", comparison_figure(case_dir, case_id, outputs, steps))
    yield f"figure: {png}"


def comparison_figure(case_dir: Path, case_id: str, outputs: dict[str, Path], steps: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import json

    # every volume in RAS order (orient_plane's convention)
    load = lambda p: np.asarray(nib.as_closest_canonical(nib.load(str(p))).dataobj, np.float32)  # noqa: E731
    method = json.loads(Path(outputs["provenance"]).read_text(encoding="utf-8")).get("translation")
    t1, flair, seg = (load(case_dir / f"{case_id}_{s}.nii.gz") for s in ("t1", "flair", "seg"))
    z = int(np.argmax((seg > 0).sum(axis=(0, 1)))) if seg.any() else seg.shape[2] // 2
    scale = lambda v, m: normalise(v, v > 0, modality=m)[0]  # noqa: E731  the pipeline's own intensity scale
    ood = load(outputs["ood"])
    risk = load(outputs["risk"]) if "risk" in outputs else None
    translation = ("Local Diffusion FLAIR" if method == "local diffusion" else
                   f"FLAIR translation (DDIM-{steps};\nLocal Diffusion off for T1 -> FLAIR)")
    panels = [("T1 (condition)", scale(t1, "t1"), None), (f"OOD probability >= {FLAG_THRESHOLD:g} ({HEALTHY_FPR:.0%} healthy FPR)", scale(t1, "t1"), ood),
              *([(f"baseline FLAIR (DDIM-{steps})", load(outputs["baseline"]), None)] if "baseline" in outputs else []),
              (translation, load(outputs["local"]), None), ("true FLAIR", scale(flair, "flair"), None)]
    regions = load(outputs["risk_regions"]) if "risk_regions" in outputs else None
    if risk is not None:
        count = int(regions.max()) if regions is not None else 0
        panels.append((f"hallucination risk >= {FLAG_THRESHOLD:g}\n(yellow: {count} flagged region(s))",
                       load(outputs["local"]), risk))
    centre = [int(round(c.mean())) for c in np.nonzero(seg > 0)] if seg.any() else [n // 2 for n in seg.shape]
    centre[2] = z
    planes = {"axial": lambda v: v[:, :, centre[2]].T, "coronal": lambda v: v[:, centre[1], :].T,
              "sagittal": lambda v: v[centre[0], :, :].T}
    fig, axes = plt.subplots(3, len(panels), figsize=(3.4 * len(panels), 10.5), squeeze=False)
    for r, (plane, cut) in enumerate(planes.items()):
        for ax, (title, vol, overlay) in zip(axes[r], panels):
            ax.imshow(cut(vol), cmap="gray", origin="lower", vmin=0, vmax=1)
            if overlay is not None:
                shown = np.ma.masked_less(cut(overlay), FLAG_THRESHOLD)  # the calibrated threshold
                ax.imshow(shown, cmap="autumn", origin="lower", vmin=FLAG_THRESHOLD, vmax=1.0, alpha=0.8)
            ax.contour(cut(seg) > 0, levels=[0.5], colors="c", linewidths=0.6, origin="lower")
            if overlay is risk and risk is not None and regions is not None and (cut(regions) > 0).any():
                ax.contour(cut(regions) > 0, levels=[0.5], colors="yellow", linewidths=0.8, origin="lower")
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            orient_plane(ax, plane)  # as 3D Slicer shows it, the patient's sides lettered
            if ax is axes[r][0]:
                ax.set_ylabel(plane)
    fig.suptitle(f"{case_id}: axial slice {centre[2]}, coronal {centre[1]}, sagittal {centre[0]} "
                 "(cyan: true tumour outline; the patient's right on the left, as 3D Slicer shows it)")
    fig.tight_layout()
    return fig
