"""Benchmark metrics: image quality by region, tumour Dice, and the claimed mechanism.

Per (row, case, seed), pooled over the case's evaluated slices (working grid, [0, 1] scale):

* ``psnr_brain``/``ssim_brain``, ``psnr_ind`` (brain minus tumour), ``psnr_ood`` (tumour label):
  means over the evaluated slices;
* ``tumour_dice``: the target-modality U-Net on the translation against the label;
  ``shape_dice``: the same with a 2-pixel band on both sides of the label's edge left out, so
  that an outline painted at the mask edge cannot score as lesion;
* the mechanism, against the *local healthy mapping* L (:mod:`~research.bench.reference`):
  ``local_error`` = mean |pred - L(source)| over tumour voxels; a tumour voxel is *healed*
  when the translation is closer to the mean translated value of the surrounding healthy
  tissue (brain within 5 pixels outside the label) than to L(source): ``healing_rate``
  overall and per label (``healing_necrosis``, ``healing_oedema``, ``healing_enhancing``);
* per-label mean intensity of the translation (``mean_<label>``) beside the truth's
  (``truth_mean_<label>``); ``edge_mean``: mean intensity of the 2-pixel band just inside the
  label (the band a Local Diffusion OOD branch may render as brain surface), ``truth_edge_mean``;
* around the product's mask (the hard branching mask ``run`` uses, given as ``halo_mask``), the same
  region for every row of a case: ``halo_error`` = mean |pred - truth| over healthy brain inside the
  mask (brain, mask, no tumour label), the tissue Local Diffusion must not harm; ``mask_edge_excess`` =
  mean in-plane gradient magnitude of the translation minus the truth's on the 2-pixel band straddling
  the mask's edge (healthy brain only): positive where a step is painted along the mask's outline.

:func:`paired_bootstrap` gives the mean paired difference between two rows over cases with a
95% percentile bootstrap interval (cases resampled; seeds averaged within a case first).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from localdiffusion.metrics import axial_stack, psnr, ssim

#: the table's columns, in order
COLUMNS = ["psnr_brain", "ssim_brain", "psnr_ind", "psnr_ood", "tumour_dice", "shape_dice", "healing_rate",
           "local_error", "edge_mean", "seconds_per_slice"]
#: BraTS label -> name
LABELS = {1: "necrosis", 2: "oedema", 4: "enhancing"}
#: differences against the baseline reported with bootstrap intervals
COMPARED = ["healing_rate", "local_error", "tumour_dice", "shape_dice", "psnr_ood", "psnr_brain", "edge_mean",
            "psnr_ind", "halo_error", "mask_edge_excess"]
CONTEXT_PX = 5  # surrounding healthy tissue: brain within this many pixels outside the label
EDGE_PX = 2  # the band at the mask edge left out of shape_dice (both sides) and measured by edge_mean (inside)


@torch.no_grad()
def row_metrics(pred: np.ndarray, truth: np.ndarray, brain: np.ndarray, labels: np.ndarray, ks: np.ndarray,
                segmenter, local: np.ndarray | None = None, halo_mask: np.ndarray | None = None) -> dict:
    """Metrics of one translated working-grid volume on its evaluated slices ``ks``; ``labels``
    BraTS labels on the working grid; ``local`` the local healthy mapping L(source) (X, Y, Z);
    ``halo_mask`` the product's branching mask (X, Y, Z), for ``halo_error`` and ``mask_edge_excess``."""
    tumour = labels > 0
    p, t = axial_stack(pred, ks), axial_stack(truth, ks)
    b, tu = axial_stack(brain, ks) > 0, axial_stack(tumour, ks) > 0
    out = {}
    for name, region in (("brain", b), ("ind", b & ~tu), ("ood", tu)):
        keep = region.flatten(1).any(1)
        out[f"psnr_{name}"] = float(psnr(p[keep], t[keep], region[keep]).mean())
        if name == "brain":
            out[f"ssim_{name}"] = float(ssim(p[keep], t[keep], region[keep]).mean())
    seg = segmenter.tumour(p)[:, None].numpy()
    tu_np = tu.numpy()
    band = np.stack([_band(tu_np[i, 0], outside=True) for i in range(len(ks))])[:, None]
    out["tumour_dice"] = _dice(seg, tu_np)
    out["shape_dice"] = _dice(seg & ~band, tu_np & ~band)
    out.update(_mechanism(pred, truth, brain, labels, ks, local))
    if halo_mask is not None:  # without the product's mask (no robust calibration) the columns are left out
        out.update(mask_harm(pred, truth, brain, labels, ks, halo_mask))
    return out


def mask_harm(pred, truth, brain, labels, ks, mask) -> dict:
    """``halo_error`` and ``mask_edge_excess`` (module docstring) on slices ``ks``; NaN where the
    mask leaves no healthy brain (or no mask is given)."""
    errors, excess = [], []
    for k in ([] if mask is None else ks):
        healthy = (brain[:, :, k] > 0) & (labels[:, :, k] == 0)
        m = mask[:, :, k] > 0
        errors.append(np.abs(pred[:, :, k] - truth[:, :, k])[m & healthy])
        band = (ndimage.binary_dilation(m, iterations=1) & ~ndimage.binary_erosion(m, iterations=1)) & healthy
        if band.any():
            grad = lambda image: np.hypot(*np.gradient(image.astype(np.float64)))  # noqa: E731
            excess.append((grad(pred[:, :, k]) - grad(truth[:, :, k]))[band])
    mean = lambda parts: float(np.concatenate(parts).mean()) if parts and sum(map(len, parts)) else float("nan")  # noqa: E731
    return {"halo_error": mean(errors), "mask_edge_excess": mean(excess)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return float(2 * (a & b).sum() / total) if total else 1.0


def _band(mask: np.ndarray, outside: bool) -> np.ndarray:
    """The EDGE_PX band just inside ``mask`` (and just outside it when ``outside``)."""
    inner = mask & ~ndimage.binary_erosion(mask, iterations=EDGE_PX)
    return inner | (ndimage.binary_dilation(mask, iterations=EDGE_PX) & ~mask) if outside else inner


def _mechanism(pred, truth, brain, labels, ks, local) -> dict:
    healed, errors, edge, truth_edge = [], [], [], []
    per_label = {name: {"healed": [], "pred": [], "truth": []} for name in LABELS.values()}
    for k in ks:
        lab, p, t = labels[:, :, k], pred[:, :, k], truth[:, :, k]
        tum = lab > 0
        if not tum.any():
            continue
        inner = _band(tum, outside=False)
        edge.append(p[inner]), truth_edge.append(t[inner])
        for value, name in LABELS.items():
            per_label[name]["pred"].append(p[lab == value]), per_label[name]["truth"].append(t[lab == value])
        if local is None:
            continue
        ring = ndimage.binary_dilation(tum, iterations=CONTEXT_PX) & ~tum & brain[:, :, k]
        if not ring.any():
            continue
        context, own = p[ring].mean(), local[:, :, k]
        is_healed = np.abs(p - context) < np.abs(p - own)
        healed.append(is_healed[tum]), errors.append(np.abs(p - own)[tum])
        for value, name in LABELS.items():
            per_label[name]["healed"].append(is_healed[lab == value])
    mean = lambda parts: float(np.concatenate(parts).mean()) if parts and sum(map(len, parts)) else float("nan")  # noqa: E731
    out = {"edge_mean": mean(edge), "truth_edge_mean": mean(truth_edge), "healing_rate": mean(healed),
           "local_error": mean(errors)}
    for name, parts in per_label.items():
        out[f"healing_{name}"] = mean(parts["healed"])
        out[f"mean_{name}"], out[f"truth_mean_{name}"] = mean(parts["pred"]), mean(parts["truth"])
    return out


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over the cases both have (NaNs dropped), with a 95% percentile bootstrap
    interval over cases; ``claim`` is True only when the interval excludes 0."""
    cases = sorted(c for c in a if c in b and np.isfinite(a[c]) and np.isfinite(b[c]))
    diff = np.array([a[c] - b[c] for c in cases], np.float64)
    if len(diff) < 2:
        return {"mean": float(diff.mean()) if len(diff) else float("nan"), "low": float("nan"),
                "high": float("nan"), "cases": len(diff), "claim": False}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "cases": len(diff),
            "claim": bool(low > 0 or high < 0)}
