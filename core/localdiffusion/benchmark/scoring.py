"""Benchmark metrics: per-row image and tumour metrics, and hallucination-detection scores.

Row metrics (per case and seed, on the evaluated slices): PSNR/SSIM over the whole brain,
the IND region (brain minus tumour) and the OOD region (tumour label), each the mean over
the evaluated slices; tumour Dice of the target-modality segmentation U-Net on the
translation against the label (pooled over the case's evaluated slices); misdiagnosis rate
(evaluated slices where the U-Net finds no tumour pixel inside the true tumour).

Hallucination detection (defined before measuring): a slice is *hallucinated* when the
tumour Dice between the segmentation U-Net on the translation and the same U-Net on the true
target is below :data:`HALLUCINATION_DICE`. Slice scores: the mean over brain voxels of every
registered detector map (:mod:`~localdiffusion.detectors.maps`) and of the calibrated risk;
their AUROC for hallucinated slices. With RODS: its detected, corrected and new-hallucination rates.
"""

from __future__ import annotations

import numpy as np
import torch

from localdiffusion.detectors.maps import DETECTORS
from localdiffusion.detectors.risk import risk_volume
from localdiffusion.metrics import axial_stack, psnr, ssim

COLUMNS = ["psnr_brain", "ssim_brain", "psnr_ind", "ssim_ind", "psnr_ood", "ssim_ood", "tumour_dice",
           "misdiagnosis_rate", "seconds_per_slice"]

HALLUCINATION_DICE = 0.5  # slice hallucinated: Dice(U-Net on translation, U-Net on truth) below this


@torch.no_grad()
def row_metrics(pred: np.ndarray, truth: np.ndarray, brain: np.ndarray, tumour: np.ndarray, ks: np.ndarray,
                segmenter) -> dict:
    """Metrics of one translated working-grid volume on its evaluated slices ``ks``."""
    p, t = axial_stack(pred, ks), axial_stack(truth, ks)
    b, tu = axial_stack(brain, ks) > 0, axial_stack(tumour, ks) > 0
    out = {}
    for name, region in (("brain", b), ("ind", b & ~tu), ("ood", tu)):
        keep = region.flatten(1).any(1)
        out[f"psnr_{name}"] = float(psnr(p[keep], t[keep], region[keep]).mean())
        out[f"ssim_{name}"] = float(ssim(p[keep], t[keep], region[keep]).mean())
    seg = segmenter.tumour(p)[:, None]
    inter = (seg & tu).flatten(1).sum(1).float()
    out["tumour_dice"] = float(2 * inter.sum() / (seg.sum() + tu.sum()).clamp_min(1))
    out["misdiagnosis_rate"] = float((inter == 0).float().mean())
    return out


@torch.no_grad()
def slice_dice(segmenter, pred: np.ndarray, truth: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Per slice: tumour Dice between the U-Net on ``pred`` and on ``truth`` (1 when both are empty)."""
    a, b = segmenter.tumour(axial_stack(pred, ks)), segmenter.tumour(axial_stack(truth, ks))
    inter, total = (a & b).flatten(1).sum(1).float(), (a.flatten(1).sum(1) + b.flatten(1).sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).numpy()


def detection_summary(records: list[dict]) -> dict:
    """AUROC of the slice scores for hallucinated slices, and RODS's detection/correction rates."""
    from sklearn.metrics import roc_auc_score

    if not records:
        return {}
    label = np.array([r["hallucinated"] for r in records])
    out = {"slices": len(records), "hallucinated": int(label.sum()), "definition":
           f"Dice(U-Net on translation, U-Net on true target) < {HALLUCINATION_DICE}"}
    for score in [*DETECTORS, "risk"]:
        if score not in records[0]:
            continue
        values = np.array([r[score] for r in records])
        out[f"auroc_{score}"] = float(roc_auc_score(label, values)) if 0 < label.sum() < len(label) else None
    if "rods_flagged" in records[0]:
        flagged = np.array([r["rods_flagged"] for r in records])
        after = np.array([r["rods_hallucinated"] for r in records])
        n_h, n_ok = max(int(label.sum()), 1), max(int((~label).sum()), 1)
        out["rods_detected_pct"] = 100.0 * float((flagged & label).sum()) / n_h
        out["rods_corrected_pct"] = 100.0 * float((label & ~after).sum()) / n_h
        out["rods_new_hallucination_pct"] = 100.0 * float((~label & after).sum()) / n_ok
        out["rods_flagged_pct"] = 100.0 * float(flagged.mean())
    return out


def detection_records(recorders: dict, ood_probability: np.ndarray, prepared, ks: np.ndarray, target: str,
                      segmenter, risk_calibration, seed: int) -> list[dict]:
    """Per evaluated slice: hallucinated or not, and the detectors' slice scores.

    ``recorders``: row name -> (filled VolumeRecorder, prediction) for "DDIM-25" and
    optionally "DDIM-25 + RODS".
    """
    truth = prepared.images[target]
    plain, plain_pred = recorders["DDIM-25"]
    maps = plain.volumes({"ood": ood_probability})
    scores = {**maps, "risk": risk_volume(risk_calibration, maps, prepared.brain)}
    dice = slice_dice(segmenter, plain_pred, truth, ks)
    rods, rods_pred = recorders.get("DDIM-25 + RODS", (None, None))
    rods_dice = slice_dice(segmenter, rods_pred, truth, ks) if rods is not None else None
    out = []
    for i, k in enumerate(ks):
        brain = prepared.brain[:, :, k]
        record = {"case_id": prepared.case_id, "seed": seed, "z": int(k), "dice_vs_true": float(dice[i]),
                  "hallucinated": bool(dice[i] < HALLUCINATION_DICE),
                  **{name: float(volume[:, :, k][brain].mean()) for name, volume in scores.items()}}
        if rods is not None:
            record.update(rods_flagged=bool(rods.slice_values("rods_flagged")[k]),
                          rods_hallucinated=bool(rods_dice[i] < HALLUCINATION_DICE),
                          rods_curvature=float(rods.slice_values("curvature")[k]))
        out.append(record)
    return out
