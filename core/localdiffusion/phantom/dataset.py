"""Write a phantom cohort in the BraTS 2021 layout with a manifest and previews.

Splits use fixed, disjoint seed ranges: a case's seed is
``FAMILY_BASE[family] + SPLIT_BASE[split] + KIND_BASE[kind] + 10_000 * seed + index``, so train,
validation and test subjects, and the subjects of different lesion families, can never coincide,
and a larger cohort with the same ``seed`` extends a smaller one case by case.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
from pathlib import Path

import numpy as np
from tqdm import tqdm

from localdiffusion.data.io import atomic_path, orient_plane, save_png, save_volume
from localdiffusion.errors import InputError
from localdiffusion.phantom.families import FAMILIES, check_family
from localdiffusion.phantom.generate import GRIDS, PHANTOM_MODALITIES, PhantomCase, generate_case
from localdiffusion.phantom.physics import ACQUISITION_SHIFTS, Acquisition

SPLITS = ("train", "val", "test")
SPLIT_BASE = {"train": 0, "val": 100_000_000, "test": 200_000_000}
KIND_BASE = {"healthy": 0, "tumour": 50_000_000}
FAMILY_BASE = {family: 1_000_000_000 * i for i, family in enumerate(FAMILIES)}
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
MAX_SEED = 5000
MAX_CASES = 10_000
MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"


def case_seed(seed: int, split: str, kind: str, index: int, family: str = "training") -> int:
    if not 0 <= seed < MAX_SEED:
        raise InputError(f"--seed must be in [0, {MAX_SEED}), got {seed}")
    if not 0 <= index < MAX_CASES:
        raise InputError(f"at most {MAX_CASES} cases per split and kind")
    return FAMILY_BASE[check_family(family)] + SPLIT_BASE[split] + KIND_BASE[kind] + 10_000 * seed + index


def split_counts(n: int, split: str = "all") -> dict[str, int]:
    """Cases per split: 70/15/15 (validation and test first get one case each when n >= 3)."""
    if split != "all":
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}")
        return {s: (n if s == split else 0) for s in SPLITS}
    val = int(round(n * SPLIT_FRACTIONS["val"]))
    test = int(round(n * SPLIT_FRACTIONS["test"]))
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "val": val, "test": test}


def plan_cohort(n_healthy: int, n_tumour: int, seed: int, split: str = "all", family: str = "training") -> list[dict]:
    plan = []
    prefix = f"ld{seed}_" if family == "training" else f"ld{seed}_{family}_"
    for kind, n in (("healthy", n_healthy), ("tumour", n_tumour)):
        for s, count in split_counts(n, split).items():
            for index in range(count):
                entry = {"case_id": f"{prefix}{s}_{kind[0]}{index:04d}", "split": s, "kind": kind,
                         "case_seed": case_seed(seed, s, kind, index, family)}
                plan.append(entry if family == "training" else {**entry, "family": family})
    return plan


def write_case(out: Path, entry: dict, spacing: float, acquisition: Acquisition, preview: bool,
               grid: str = "template") -> dict:
    """Generate and write one case; returns its manifest entry."""
    case = generate_case(entry["case_seed"], tumour=entry["kind"] == "tumour", spacing=spacing, acquisition=acquisition,
                         family=entry.get("family", "training"), grid=grid)
    folder = out / entry["case_id"]
    name = entry["case_id"]
    for modality in PHANTOM_MODALITIES:
        save_volume(folder / f"{name}_{modality}.nii.gz", case.images[modality], case.affine, dtype=np.int16)
    save_volume(folder / f"{name}_seg.nii.gz", case.seg, case.affine)
    save_volume(folder / f"{name}_mask.nii.gz", case.brain_mask, case.affine)
    if preview:
        save_png(folder / f"{name}_preview.png", preview_figure(case, name))
    return {**entry, **case.params, "shape": list(case.seg.shape)}


def _write_case_star(args) -> dict:
    return write_case(*args)


def acquisition_settings(acquisition: str = "training", t1_sequence: str = "mprage") -> Acquisition:
    """The scanner settings a cohort is written with: the named entry of
    :data:`~localdiffusion.phantom.physics.ACQUISITION_SHIFTS`, its T1 sequence replaced by ``t1_sequence`` unless
    that is ``mprage``; InputError for an unknown name."""
    if acquisition not in ACQUISITION_SHIFTS:
        raise InputError(f"unknown acquisition {acquisition!r}; choose from {sorted(ACQUISITION_SHIFTS)}")
    settings = ACQUISITION_SHIFTS[acquisition]
    return settings if t1_sequence == "mprage" else dataclasses.replace(settings, t1_sequence=t1_sequence)


def write_cohort(out: str | Path, n_healthy: int, n_tumour: int, seed: int = 0, *, spacing: float = 2.0,
                 split: str = "all", preview: bool = False, workers: int = 1, t1_sequence: str = "mprage",
                 acquisition: str = "training", family: str = "training", grid: str = "template",
                 skip_existing: bool = False) -> list[dict]:
    """Generate a cohort under ``out``; writes ``manifest.json`` and ``manifest.csv`` last.

    ``acquisition``: a name of :data:`~localdiffusion.phantom.physics.ACQUISITION_SHIFTS` (the same
    subjects as the training distribution's, scanned differently); ``t1_sequence`` overrides its T1.
    ``family``: the lesion family (:mod:`~localdiffusion.phantom.families`; its own subjects);
    ``grid``: ``template`` or ``brats`` (240 x 240 x 155 at 1 mm; needs ``spacing`` 1);
    ``skip_existing``: cases already in the folder's manifest are kept as they are, not generated again (more
    subjects added to a cohort)."""
    check_family(family)
    if grid not in GRIDS:
        raise InputError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
    if grid == "brats" and spacing != 1.0:
        raise InputError(f"the BraTS grid is 1 mm: pass --spacing 1 (got {spacing})")
    settings = acquisition_settings(acquisition, t1_sequence)
    if n_healthy < 0 or n_tumour < 0 or n_healthy + n_tumour == 0:
        raise InputError("need at least one case (--healthy and --tumour must be >= 0, not both 0)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_cohort(n_healthy, n_tumour, seed, split, family)
    if skip_existing:
        existing = _manifest_ids(out)
        plan = [e for e in plan if e["case_id"] not in existing]
    jobs = [(out, entry, spacing, settings, preview, grid) for entry in plan]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            entries = list(tqdm(pool.imap(_write_case_star, jobs), total=len(jobs), desc="phantom", unit="case"))
    else:
        entries = [write_case(*job) for job in tqdm(jobs, desc="phantom", unit="case")]
    entries = merge_manifest(out, entries)
    with atomic_path(out / MANIFEST_JSON) as tmp:
        tmp.write_text(json.dumps({"generator": "localdiffusion.phantom", "cases": entries}, indent=1), encoding="utf-8")
    with atomic_path(out / MANIFEST_CSV) as tmp:
        tmp.write_text(_manifest_csv(entries), encoding="utf-8")
    return entries


def _manifest_ids(out: Path) -> set[str]:
    path = out / MANIFEST_JSON
    return {e["case_id"] for e in json.loads(path.read_text(encoding="utf-8"))["cases"]} if path.exists() else set()


def merge_manifest(out: Path, entries: list[dict]) -> list[dict]:
    """Keep entries of an existing manifest for cases not regenerated now."""
    path = out / MANIFEST_JSON
    if not path.exists():
        return entries
    new_ids = {e["case_id"] for e in entries}
    old = [e for e in json.loads(path.read_text(encoding="utf-8"))["cases"] if e["case_id"] not in new_ids]
    return sorted(old + entries, key=lambda e: (e["kind"], SPLITS.index(e["split"]), e["case_id"]))


def _manifest_csv(entries: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["case_id", "split", "kind", "case_seed", "spacing_mm", "n_lesions", "tumour_ml",
              "snr_t1", "snr_flair", "snr_t2"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for e in entries:
        writer.writerow({"case_id": e["case_id"], "split": e["split"], "kind": e["kind"], "case_seed": e["case_seed"],
                         "spacing_mm": e["spacing_mm"], "n_lesions": len(e["lesions"]), "tumour_ml": e["tumour_ml"],
                         **{f"snr_{m}": e["snr"][m] for m in PHANTOM_MODALITIES}})
    return buf.getvalue()


def preview_figure(case: PhantomCase, title: str):
    """Montage: T1, FLAIR, T2 and a label overlay; axial and coronal through the lesion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    seg = case.seg
    if seg.any():
        z = int(np.argmax((seg > 0).sum(axis=(0, 1))))
        y = int(np.argmax((seg[:, :, z] > 0).sum(0)))
    else:
        z, y = seg.shape[2] // 2, seg.shape[1] // 2
    cmap = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.8), (0.2, 1, 0.2, 0.5), (0, 0, 0, 0), (1, 1, 0.1, 0.8)])
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.5))
    planes = (("axial", lambda v: v[:, :, z], f"axial z={z}"), ("coronal", lambda v: v[:, y, :], f"coronal y={y}"))
    for row, (plane, cut, label) in enumerate(planes):  # the phantom's grids are RAS-ordered (orient_plane)
        for col, modality in enumerate(PHANTOM_MODALITIES):
            axes[row, col].imshow(cut(case.images[modality]).T, cmap="gray", origin="lower")
            axes[row, col].set_title(f"{modality.upper()} ({label})", fontsize=9)
        axes[row, 3].imshow(cut(case.images["flair"]).T, cmap="gray", origin="lower")
        axes[row, 3].imshow(cut(seg).T, cmap=cmap, vmin=0, vmax=4, origin="lower", interpolation="nearest")
        axes[row, 3].set_title("labels: 1 necrosis red, 2 oedema green, 4 enh. yellow", fontsize=8)
        for ax in axes[row]:
            orient_plane(ax, plane)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title)
    return fig
