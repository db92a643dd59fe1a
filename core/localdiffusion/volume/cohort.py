"""Slice sets: every brain slice of a cohort split, on the working grid, in memory.

A phantom cohort's split comes from its ``manifest.json``; any other folder of cases
(BraTS, MSD) is split 70/15/15 by a hash of the case id. Slice sets are cached as
``.npz`` under ``<root>/.cache/`` (keyed by split, modalities and grid).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.data.readers import list_cases, read_case
from localdiffusion.errors import InputError
from localdiffusion.volume.grid import DEFAULT_IN_PLANE, DEFAULT_SPACING_MM, prepare_case

CACHE_VERSION = 3  # 3: normalisation by contrast


@dataclass
class SliceSet:
    """Axial slices (N, H, W): normalised images per modality, brain mask, labels."""

    images: dict[str, np.ndarray]
    brain: np.ndarray
    seg: np.ndarray
    case_ids: np.ndarray
    z: np.ndarray

    def __len__(self) -> int:
        return len(self.z)

    def subset(self, index) -> "SliceSet":
        return SliceSet({m: v[index] for m, v in self.images.items()}, self.brain[index], self.seg[index],
                        self.case_ids[index], self.z[index])

    def healthy(self) -> "SliceSet":
        return self.subset(~self.seg.reshape(len(self), -1).any(1))

    def neighbours(self, offsets: Sequence[int], among: "SliceSet | None" = None) -> np.ndarray:
        """(N, len(offsets)) index into ``among`` (default: this set) of slice z + offset of the same
        case, -1 where that slice is not there (outside the brain slices: a zero condition)."""
        among = self if among is None else among
        where = {(c, int(z)): i for i, (c, z) in enumerate(zip(among.case_ids, among.z))}
        return np.array([[where.get((c, int(z) + o), -1) for o in offsets] for c, z in zip(self.case_ids, self.z)],
                        np.int64).reshape(len(self), len(offsets))

    def stacked(self, modality: str, offsets: Sequence[int], among: "SliceSet | None" = None) -> np.ndarray:
        """(N, len(offsets), H, W): each slice with its neighbours (zeros where absent), e.g. 2.5D conditions."""
        among = self if among is None else among
        index = self.neighbours(offsets, among)
        images = among.images[modality]
        out = np.zeros((len(self), len(offsets)) + images.shape[1:], images.dtype)
        present = index >= 0
        out[present] = images[index[present]]
        return out


def split_of(case_id: str) -> str:
    """Hash split for cohorts without a manifest: 70% train, 15% val, 15% test."""
    bucket = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else ("val" if bucket < 85 else "test")


def has_manifest(root: str | Path) -> bool:
    return (Path(root) / "manifest.json").exists()


def cases_in_split(root: str | Path, split: str, kind: str | None = None) -> list[Path]:
    """Case paths of ``split`` (and ``kind``: healthy/tumour, phantom manifests only)."""
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.exists():
        entries = json.loads(manifest.read_text(encoding="utf-8"))["cases"]
        return [root / e["case_id"] for e in entries if e["split"] == split and (kind is None or e["kind"] == kind)]
    if kind is not None:
        raise InputError(f"{root}: no manifest.json, cannot select {kind} cases")
    return [p for p in list_cases(root) if split_of(p.name.split(".")[0]) == split]


def load_slice_set(root: str | Path, split: str, modalities: Sequence[str] = ("t1", "flair"), *,
                   kind: str | None = None, spacing: float = DEFAULT_SPACING_MM,
                   in_plane: tuple[int, int] = DEFAULT_IN_PLANE, cache: bool = True) -> SliceSet:
    """All brain slices of the cases in ``split`` (optionally only ``kind``)."""
    cases = cases_in_split(root, split, kind)
    if not cases:
        raise InputError(f"{root}: no cases in split {split!r}" + (f" of kind {kind!r}" if kind else ""))
    key = hashlib.sha256(json.dumps([CACHE_VERSION, [c.name for c in cases], list(modalities), spacing,
                                     list(in_plane)]).encode()).hexdigest()[:16]
    cache_path = Path(root) / ".cache" / f"slices_{split}_{kind or 'all'}_{key}.npz"
    if cache and cache_path.exists():
        with np.load(cache_path) as data:
            return SliceSet({m: data[f"img_{m}"] for m in modalities}, data["brain"], data["seg"],
                            data["case_ids"], data["z"])
    parts = {m: [] for m in modalities}
    brain, seg, ids, zs = [], [], [], []
    for path in tqdm(cases, desc=f"slices {split}", unit="case"):
        prepared = prepare_case(read_case(path, modalities), spacing, in_plane)
        keep = prepared.brain_slices()
        for m in modalities:
            parts[m].append(np.moveaxis(prepared.images[m][:, :, keep], 2, 0))
        brain.append(np.moveaxis(prepared.brain[:, :, keep], 2, 0))
        labels = prepared.seg if prepared.seg is not None else np.zeros(prepared.brain.shape, np.uint8)
        seg.append(np.moveaxis(labels[:, :, keep], 2, 0))
        ids += [prepared.case_id] * len(keep)
        zs.append(keep)
    result = SliceSet({m: np.concatenate(v) for m, v in parts.items()}, np.concatenate(brain), np.concatenate(seg),
                      np.array(ids), np.concatenate(zs))
    if cache:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, brain=result.brain, seg=result.seg, case_ids=result.case_ids, z=result.z,
                         **{f"img_{m}": v for m, v in result.images.items()})
    return result
