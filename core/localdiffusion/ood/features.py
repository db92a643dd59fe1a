"""PatchCore feature extractor: a timm backbone's mid-level features as patch descriptors.

Slices (B, 1, H, W) in [0, 1] are upsampled by ``input_scale``, repeated to 3 channels and
ImageNet-normalised; features of two stages (default layer2 and layer3) are locally
averaged (3 x 3), the deeper one upsampled to the shallower grid, and concatenated. An
optional fixed random projection (seeded) reduces the dimension.

Backbone weights (``weights``):

* ``"random"``: random init with ``zero_init_last=False`` (timm otherwise zeroes the last
  BatchNorm of every residual block), BatchNorm statistics recalibrated on healthy slices;
* ``"imagenet"``: timm's pretrained weights (needs the internet or timm's cache);
* a path to a local ``state_dict`` file (e.g. ImageNet weights copied by hand).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from localdiffusion.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def aggregate(feats: list[torch.Tensor], projection: torch.Tensor | None = None) -> torch.Tensor:
    """3 x 3 local averaging, deeper stages upsampled to the first stage's grid, concatenated."""
    feats = [F.avg_pool2d(f.float(), 3, stride=1, padding=1) for f in feats]
    size = feats[0].shape[-2:]
    feats = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
    out = torch.cat(feats, dim=1)
    if projection is not None:
        out = torch.einsum("bchw,cd->bdhw", out, projection)
    return out


class FeatureExtractor(torch.nn.Module):
    """``extractor(slices) -> (B, D, h, w)`` patch features."""

    def __init__(self, backbone: str = "wide_resnet50_2", layers: tuple[str, ...] = ("layer2", "layer3"),
                 weights: str = "random", input_scale: float = 2.0, projection_dim: int | None = None, seed: int = 0):
        super().__init__()
        self.backbone_name, self.layers, self.weights = backbone, tuple(layers), str(weights)
        self.input_scale = float(input_scale)
        pretrained = self.weights == "imagenet"
        try:
            probe = timm.create_model(backbone, pretrained=False, features_only=True)
        except Exception as exc:
            raise InputError(f"unknown timm backbone {backbone!r} ({exc})") from exc
        names = probe.feature_info.module_name()
        missing = [layer for layer in layers if layer not in names]
        if missing:
            raise InputError(f"backbone {backbone!r} has no feature stages {missing}; available: {names}")
        indices = tuple(names.index(layer) for layer in layers)
        kwargs = {"zero_init_last": False} if "resnet" in backbone else {}
        torch.manual_seed(seed)
        self.model = timm.create_model(backbone, pretrained=pretrained, features_only=True, out_indices=indices, **kwargs)
        if self.weights not in ("random", "imagenet"):
            self._load_local(Path(self.weights))
        channels = sum(self.model.feature_info.channels())
        self.feature_dim = projection_dim or channels
        projection = None
        if projection_dim:
            g = torch.Generator().manual_seed(seed)
            projection = torch.randn(channels, projection_dim, generator=g) / projection_dim**0.5
        self.register_buffer("projection", projection)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()

    def _load_local(self, path: Path) -> None:
        if not path.exists():
            raise InputError(f"{path}: backbone weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: unreadable backbone weights ({exc})") from exc
        missing, _ = self.model.load_state_dict(state, strict=False)
        if missing:
            raise InputError(f"{path}: weights do not fit backbone {self.backbone_name} (missing {missing[:3]} ...)")

    def _prepare(self, slices: torch.Tensor) -> torch.Tensor:
        x = slices.float()
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        return (x.repeat(1, 3, 1, 1) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        with torch.autocast(slices.device.type, dtype=torch.bfloat16, enabled=slices.device.type == "cpu"):
            feats = self.model(self._prepare(slices).contiguous(memory_format=torch.channels_last))
        return aggregate(feats, self.projection)

    @torch.no_grad()
    def recalibrate_batchnorm(self, slices: np.ndarray, batch_size: int = 32) -> None:
        """Re-estimate BatchNorm running statistics on healthy slices (N, H, W) in [0, 1]."""
        bns = [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over all batches
        self.model.train()
        for start in range(0, len(slices), batch_size):
            self.model(self._prepare(torch.as_tensor(slices[start:start + batch_size, None])))
        self.model.eval()

    def describe(self) -> dict:
        return {"backbone": self.backbone_name, "layers": list(self.layers), "weights": self.weights,
                "input_scale": self.input_scale, "feature_dim": int(self.feature_dim),
                "projection_dim": None if self.projection is None else int(self.projection.shape[1])}


class DiffusionEncoderExtractor(torch.nn.Module):
    """Patch features from the trained diffusion U-Net's encoder (an offline option).

    The slice is the U-Net's *condition* channel; the noisy-target channel is 0 (its mean
    at t = T - 1) and the time embedding is that of t = T - 1, so the encoder describes the
    condition only. Features: outputs of down blocks ``levels`` (default 1 and 2: both at
    stride 4 for the default 3-level U-Net).
    """

    def __init__(self, model_dir: str | Path, levels: tuple[int, ...] = (1, 2)):
        super().__init__()
        from localdiffusion.network.denoiser import load_denoiser

        self.model_dir = str(model_dir)
        self.denoiser = load_denoiser(model_dir, autocast=False)
        self.levels = tuple(levels)
        net = self.denoiser.network
        self.input_scale = 1.0
        self.feature_dim = sum(net.block_out_channels[lvl] for lvl in self.levels)
        self.weights = "diffusion"
        self.backbone_name = f"diffusion-encoder:{Path(model_dir).name}"
        self.layers = tuple(f"down{lvl}" for lvl in self.levels)
        self.eval()

    @torch.no_grad()
    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        net = self.denoiser.network
        t = torch.full((slices.shape[0],), self.denoiser.config.num_train_timesteps - 1)
        cond = slices.float() * 2.0 - 1.0
        x = torch.cat([torch.zeros_like(cond), cond], 1)
        with torch.autocast(slices.device.type, dtype=torch.bfloat16, enabled=slices.device.type == "cpu"):
            emb = net.time_embed(get_timestep_embedding(t, net.block_out_channels[0]).to(x.dtype))
            h = net.conv_in(x)
            feats = []
            for level, block in enumerate(net.down_blocks):
                h, _ = block(hidden_states=h, temb=emb, context=None)
                if level in self.levels:
                    feats.append(h)
                if level >= max(self.levels):
                    break
        return aggregate(feats)

    def recalibrate_batchnorm(self, slices, batch_size: int = 32) -> None:  # GroupNorm: nothing to do
        return None

    def describe(self) -> dict:
        return {"backbone": self.backbone_name, "layers": list(self.layers), "weights": "diffusion",
                "model_dir": Path(self.model_dir).name, "input_scale": 1.0, "feature_dim": int(self.feature_dim)}


#: with ImageNet (or a local weights file): the PatchCore paper's backbone and stages
PRETRAINED_DEFAULT = ("wide_resnet50_2", ("layer2", "layer3"))
#: offline (random init, BatchNorm recalibrated): chosen by pixel AUPRC on the phantom's
#: tumour validation split among the options in research/RECORD.md
OFFLINE_DEFAULT = ("resnet18", ("layer1", "layer2"))


def make_extractor(backbone: str | None = None, weights: str = "random", *, layers=None,
                   input_scale: float = 2.0, projection_dim: int | None = None, seed: int = 0):
    """Feature extractor; ``weights='diffusion:<model dir>'`` selects the diffusion U-Net encoder.

    ``backbone``/``layers`` default to :data:`OFFLINE_DEFAULT` for random weights and to
    :data:`PRETRAINED_DEFAULT` for ``imagenet`` or a weights file.
    """
    if weights.startswith("diffusion:"):
        return DiffusionEncoderExtractor(weights.split(":", 1)[1])
    default_backbone, default_layers = OFFLINE_DEFAULT if weights == "random" else PRETRAINED_DEFAULT
    return FeatureExtractor(backbone or default_backbone, tuple(layers or default_layers), weights=weights,
                            input_scale=input_scale, projection_dim=projection_dim, seed=seed)
