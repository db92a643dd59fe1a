"""PatchCore OOD detector: feature extractor + memory bank + anomaly-map generator.

Fit on healthy training slices, calibrate on healthy validation slices, then map OOD
probabilities for new slices. Slices are (N, H, W) in [0, 1] on the working grid; brain
masks (N, H, W) bool. Patches whose cell is less than 25% brain are not stored and do not
count for image scores.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from localdiffusion.data.io import atomic_path
from localdiffusion.errors import InputError
from localdiffusion.ood.anomaly_map import Calibration, anomaly_map, image_score
from localdiffusion.ood.features import DiffusionEncoderExtractor, FeatureExtractor
from localdiffusion.ood.memory_bank import MemoryBank, greedy_coreset
from localdiffusion.options import HEALTHY_FPR

BANK_FORMAT = "localdiffusion.patchcore/1"


@dataclass
class SliceScores:
    pixel: np.ndarray  # (N, H, W) raw pixel scores (0 outside the brain)
    image: np.ndarray  # (N,) raw image scores


def _patch_brain(brain: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    cover = F.adaptive_avg_pool2d(torch.as_tensor(brain, dtype=torch.float32)[:, None], size)[:, 0]
    return (cover >= 0.25).numpy()


class PatchCore:
    def __init__(self, extractor, bank: MemoryBank, meta: dict, pixel_calibration: Calibration | None = None,
                 image_calibration: Calibration | None = None):
        self.extractor, self.bank, self.meta = extractor, bank, meta
        self.pixel_calibration, self.image_calibration = pixel_calibration, image_calibration
        self.path: Path | None = None  # the file it was loaded from (named in errors)

    @property
    def device(self) -> torch.device:
        return next(self.extractor.parameters()).device

    def to(self, device: str | torch.device) -> "PatchCore":
        """Run the feature extractor on ``device`` (the nearest-neighbour search stays in faiss on the CPU)."""
        self.extractor.to(device)
        return self

    # ------------------------------------------------------------------ fitting
    @classmethod
    @torch.no_grad()
    def fit(cls, extractor, slices: np.ndarray, brain: np.ndarray, *, modality: str, bank_size: int = 8000,
            max_candidates: int = 80_000, seed: int = 0, batch_size: int = 32, progress: bool = True,
            grid: dict | None = None) -> "PatchCore":
        """Build the memory bank from healthy slices (BatchNorm recalibrated first if random)."""
        if len(slices) == 0:
            raise InputError("no healthy slices to build the memory bank from")
        if getattr(extractor, "weights", "") == "random":
            extractor.recalibrate_batchnorm(slices)
        feats = []
        for start in tqdm(range(0, len(slices), batch_size), desc="bank features", disable=not progress):
            f = extractor(torch.as_tensor(slices[start:start + batch_size, None],
                                          device=next(extractor.parameters()).device)).float().cpu()
            keep = _patch_brain(brain[start:start + batch_size], f.shape[-2:])
            feats.append(f.permute(0, 2, 3, 1).numpy()[keep])
        candidates = np.concatenate(feats)
        rng = np.random.default_rng(seed)
        if len(candidates) > max_candidates:
            candidates = candidates[rng.choice(len(candidates), max_candidates, replace=False)]
        picked, _ = greedy_coreset(candidates, bank_size, seed=seed, progress=progress)
        meta = {"format": BANK_FORMAT, "modality": modality, "extractor": extractor.describe(),
                "bank_size": int(len(picked)), "candidates": int(len(candidates)), "seed": seed,
                "slice_size": list(slices.shape[1:]), **(grid or {})}
        return cls(extractor, MemoryBank(candidates[picked]), meta)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, slices: np.ndarray, brain: np.ndarray, batch_size: int = 32, image: bool = True) -> SliceScores:
        """Raw pixel maps and image scores for (N, H, W) slices (``image=False``: pixel maps only,
        the image scores are NaN; they cost a second search per patch)."""
        if tuple(slices.shape[1:]) != tuple(self.meta["slice_size"]):
            raise InputError(f"slice size {tuple(slices.shape[1:])} does not match the bank's "
                             f"{tuple(self.meta['slice_size'])}")
        pixel, images = [], []
        for start in range(0, len(slices), batch_size):
            part, part_brain = slices[start:start + batch_size], brain[start:start + batch_size]
            f = self.extractor(torch.as_tensor(part[:, None], dtype=torch.float32, device=self.device)).float().cpu()
            b, d, h, w = f.shape
            flat = f.permute(0, 2, 3, 1).reshape(-1, d).numpy()
            dist, idx = self.bank.search(flat)
            dist, idx = dist[:, 0].reshape(b, h * w), idx[:, 0].reshape(b, h * w)
            valid = _patch_brain(part_brain, (h, w)).reshape(b, h * w)
            pixel.append(anomaly_map(dist.reshape(b, h, w), part.shape[1:], part_brain))
            if image:
                feats = flat.reshape(b, h * w, d)
                images += [image_score(feats[i], dist[i], idx[i], self.bank, valid[i]) for i in range(b)]
            else:
                images += [np.nan] * b
        return SliceScores(np.concatenate(pixel), np.asarray(images, np.float32))

    def calibrate(self, slices: np.ndarray, brain: np.ndarray, false_positive_rate: float = HEALTHY_FPR) -> None:
        """Fit the pixel and image calibrations on healthy validation slices."""
        scores = self.score(slices, brain)
        self.pixel_calibration = Calibration.fit(scores.pixel[brain], false_positive_rate)
        self.image_calibration = Calibration.fit(np.repeat(scores.image, 1 + 100 // max(len(scores.image), 1)),
                                                 false_positive_rate)
        self.meta["calibration"] = {"false_positive_rate": false_positive_rate, "healthy_val_slices": int(len(slices)),
                                    "healthy_val_voxels": int(brain.sum())}

    def probability(self, slices: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OOD probability maps (N, H, W) and slice probabilities (N,)."""
        self._require_calibration()
        scores = self.score(slices, brain)
        prob = self.pixel_calibration.probability(scores.pixel)
        return np.where(brain, prob, 0.0).astype(np.float32), self.image_calibration.probability(scores.image)

    def pixel_probability(self, slices: np.ndarray, brain: np.ndarray) -> np.ndarray:
        """Calibrated OOD probability maps of slices (no image scores are computed).

        Args:
            slices: (N, H, W) normalised slices of the bank's contrast.
            brain: (N, H, W) bool brain masks.
        Returns:
            (N, H, W) float32 in [0, 1].
        """
        self._require_calibration()
        prob = self.pixel_calibration.probability(self.score(slices, brain, image=False).pixel)
        return np.where(brain, prob, 0.0).astype(np.float32)

    def _require_calibration(self) -> None:
        """The bank's own calibration maps the working grid's images as they are: refused for a bank built on
        intensity-standardised volumes, whose patches only the robust map (ood/robust.py) gives it."""
        name = self.path or "the bank"
        if self.pixel_calibration is None:
            raise InputError(f"{name}: the bank is not calibrated (run calibrate on healthy validation slices)")
        if self.meta.get("robust_input", {}).get("standardised"):
            raise InputError(f"{name}: built on intensity-standardised volumes for the acquisition-robust map "
                             f"(ood build --standardise-to); only that map can use it (ood map --robust)")

    @property
    def threshold(self) -> float:
        """Probability threshold of the binary mask (1 - calibrated false-positive rate)."""
        return self.pixel_calibration.probability_threshold

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        extractor_state = None
        if isinstance(self.extractor, FeatureExtractor):
            extractor_state = {k: v.half() if v.is_floating_point() else v for k, v in self.extractor.state_dict().items()}
        arrays = {"bank": torch.as_tensor(self.bank.features).half()}
        for name, cal in (("pixel", self.pixel_calibration), ("image", self.image_calibration)):
            if cal is not None:
                arrays.update({k: torch.as_tensor(v) for k, v in cal.as_arrays(name).items()})
        payload = {"meta": json.dumps(self.meta), "arrays": arrays, "extractor_state": extractor_state}
        buf = io.BytesIO()
        torch.save(payload, buf)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, modality: str | None = None, backbone: str | None = None,
             model_root: str | Path | None = None) -> "PatchCore":
        """Load a bank; ``modality`` and ``backbone`` (if given) must match the bank's."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: OOD bank not found")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(payload["meta"])
            arrays = {k: v.numpy() for k, v in payload["arrays"].items()}
        except Exception as exc:
            raise InputError(f"{path}: corrupt or unreadable OOD bank ({exc.__class__.__name__})") from exc
        if meta.get("format") != BANK_FORMAT:
            raise InputError(f"{path}: not a localdiffusion PatchCore bank (format {meta.get('format')!r})")
        if modality is not None and meta["modality"] != modality:
            raise InputError(f"{path}: bank was built for modality {meta['modality']!r}, not {modality!r}")
        desc = meta["extractor"]
        if backbone is not None and desc["backbone"] != backbone:
            raise InputError(f"{path}: bank was built with backbone {desc['backbone']!r}, not {backbone!r}")
        if desc["weights"] == "diffusion":
            root = Path(model_root) if model_root else path.parent
            extractor = DiffusionEncoderExtractor(root / desc["model_dir"], tuple(int(l[4:]) for l in desc["layers"]))
        else:
            extractor = FeatureExtractor(desc["backbone"], tuple(desc["layers"]), weights="random",
                                         input_scale=desc["input_scale"],
                                         projection_dim=desc.get("projection_dim"))
            state = {k: v.float() if v.is_floating_point() else v for k, v in payload["extractor_state"].items()}
            try:
                extractor.load_state_dict(state)
            except RuntimeError as exc:
                raise InputError(f"{path}: backbone weights do not match {desc['backbone']}") from exc
            extractor.weights = desc["weights"]
        cal = lambda name: Calibration.from_arrays(arrays, name) if f"{name}_quantiles" in arrays else None  # noqa: E731
        try:
            pixel, image = cal("pixel"), cal("image")
        except ValueError as exc:
            raise InputError(f"{path}: corrupt OOD bank calibration ({exc})") from None
        model = cls(extractor, MemoryBank(arrays["bank"].astype(np.float32)), meta, pixel, image)
        model.path = path
        return model
