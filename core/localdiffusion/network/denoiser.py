"""The conditional denoiser: MONAI ``DiffusionModelUNet`` (2D) + its configuration.

Channel order (used everywhere): the network input is ``cat([x_t, condition], dim=1)``,
the noisy target first and the condition second, as in MONAI's ``DiffusionInferer``
"concat" mode. Images are in the model scale [-1, 1] (= 2 * normalised - 1).

A model trained with the VSM objective (``learned_variance``) has a second output channel:
the log-variance fraction of each reverse step, between the posterior variance beta-tilde
(fraction 0) and the step's beta (fraction 1) as in improved DDPM's "learned range";
:meth:`Denoiser.predict` returns it beside x0. Plain models have one output channel.
A 2.5D model (``condition_slices`` = 2r + 1 > 1) sees the source slice and its r neighbours
on each side as condition channels, ordered by distance: [k, k-1, k+1, k-2, k+2, ...]
(:func:`condition_offsets`); neighbours outside the volume are zero. The centre slice comes
first so that a single-slice model widens into a 2.5D one by appending zero-weight inputs.
Weights of a narrower model are widened for fine-tuning by :func:`adapt_state_dict`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from monai.networks.nets import DiffusionModelUNet

from localdiffusion.engine.schedule import DEFAULT_TIMESTEPS, NoiseSchedule
from localdiffusion.errors import InputError
from localdiffusion.network.device import autocast_dtype
from localdiffusion.shipped import MODELS_ENV, direction_name

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


@dataclass
class DiffusionConfig:
    """Everything needed to rebuild the network and its schedule."""

    source: str = "t1"
    target: str = "flair"
    channels: tuple[int, ...] = (32, 64, 128)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 2
    num_head_channels: int = 32
    norm_num_groups: int = 16
    num_train_timesteps: int = DEFAULT_TIMESTEPS
    schedule: str = "sigmoid_beta"
    prediction_type: str = "sample"  # x0; "epsilon" and "v_prediction" also supported
    use_flash_attention: bool = True  # torch SDPA kernels; no effect on the weights
    spacing_mm: float = 2.0
    in_plane: tuple[int, int] = (96, 112)
    learned_variance: bool = False  # VSM: a second output channel, the reverse step's log-variance fraction
    condition_slices: int = 1  # 2.5D: the source slice and (n - 1) / 2 neighbours on each side
    # how this model is sampled when the user does not say (chosen on validation, research/RECORD.md 8a/8b):
    noise_sigma_z: float = 0.0  # slice-correlated noise (volume/batching.py z_mixes); 0 = independent slices
    z_harmonise: float = 0.0  # sigma (slices) of the banding filter (volume/harmonise.py); 0 = off
    steps: int = 25  # DDIM steps of every pass (research/steps: the fewest no worse than DDIM-25 on validation)
    # Local Diffusion as the translation, and its fusion timestep (research/hallucination: on only where it was
    # no worse than the plain translation on validation)
    local_diffusion: bool = True
    t_intermediate: int = 0
    extra: dict = field(default_factory=dict)  # provenance, e.g. the training objective and its weights

    def __post_init__(self):
        self.channels = tuple(self.channels)
        self.attention_levels = tuple(self.attention_levels)
        self.in_plane = tuple(self.in_plane)
        if self.prediction_type not in ("sample", "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be sample, epsilon or v_prediction, got {self.prediction_type!r}")
        if len(self.channels) != len(self.attention_levels):
            raise ValueError("channels and attention_levels must have the same length")
        if self.condition_slices < 1 or self.condition_slices % 2 == 0:
            raise ValueError(f"condition_slices must be an odd number >= 1, got {self.condition_slices}")
        if self.noise_sigma_z < 0 or self.z_harmonise < 0:
            raise ValueError("noise_sigma_z and z_harmonise must be >= 0")
        numbers = {"num_train_timesteps": self.num_train_timesteps, "steps": self.steps,
                   "num_res_blocks": self.num_res_blocks, "spacing_mm": self.spacing_mm,
                   "noise_sigma_z": self.noise_sigma_z, "z_harmonise": self.z_harmonise}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not isinstance(self.local_diffusion, bool):
            raise ValueError(f"local_diffusion must be true or false, got {self.local_diffusion!r}")
        if isinstance(self.t_intermediate, bool) or not isinstance(self.t_intermediate, int) or \
                not 0 <= self.t_intermediate < self.num_train_timesteps:
            raise ValueError(f"t_intermediate must be an integer in [0, num_train_timesteps), got {self.t_intermediate!r}")
        if self.num_train_timesteps < 2 or self.steps < 1:  # steps beyond the timesteps: refused when sampling
            raise ValueError(f"num_train_timesteps must be >= 2 and steps >= 1, got {self.num_train_timesteps} and "
                             f"{self.steps}")
        if self.spacing_mm <= 0 or any(int(v) <= 0 or int(v) % 8 for v in self.in_plane):
            raise ValueError(f"spacing_mm must be > 0 and in_plane sizes positive multiples of 8, got "
                             f"{self.spacing_mm} and {self.in_plane}")

    def fusion_step(self, value: int) -> int:
        """Local Diffusion's fusion timestep: ``value``, or this model's validated one when it is negative."""
        return self.t_intermediate if value < 0 else int(value)

    def uses_local_diffusion(self, choice: str) -> bool:
        """Whether the translation is Local Diffusion's: ``choice`` "on"/"off", or "model": this model's."""
        return self.local_diffusion if choice == "model" else choice == "on"

    def sampling(self, name: str, value: float) -> float:
        """A z-sampling setting (``noise_sigma_z``, ``z_harmonise``): ``value``, or this model's own when it is
        negative (the options' default -1: "the model's validated value")."""
        return float(getattr(self, name)) if value < 0 else float(value)

    def sampling_steps(self, value: int | None) -> int | None:
        """The step count to sample with: ``value``, or this model's validated one when it is 0 (the
        options' default: "the model's"); None stays None (every training timestep)."""
        return self.steps if value == 0 else value

    @property
    def direction(self) -> str:
        """``<source>_to_<target>``, the direction's name (:func:`~localdiffusion.shipped.direction_name`)."""
        return direction_name(self.source, self.target)

    @property
    def condition_offsets(self) -> tuple[int, ...]:
        return condition_offsets(self.condition_slices)

    @property
    def min_size(self) -> int:
        """Smallest in-plane size the U-Net accepts (it halves len(channels) - 1 times)."""
        return 2 ** (len(self.channels) - 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DiffusionConfig":
        return cls(**json.loads(text))


def condition_offsets(condition_slices: int) -> tuple[int, ...]:
    """Slice offsets of the condition channels: (0, -1, 1, -2, 2, ...)."""
    r = condition_slices // 2
    return (0,) + tuple(o for d in range(1, r + 1) for o in (-d, d))


def build_network(config: DiffusionConfig) -> DiffusionModelUNet:
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=1 + config.condition_slices, out_channels=2 if config.learned_variance else 1, channels=config.channels,
        attention_levels=config.attention_levels, num_res_blocks=config.num_res_blocks,
        num_head_channels=config.num_head_channels, norm_num_groups=config.norm_num_groups,
        use_flash_attention=config.use_flash_attention,
    )


class Prediction(NamedTuple):
    """What the network says about x_t: x0_hat (B, 1, H, W) in [-1, 1] and, for a model with a
    learned variance, the log-variance fraction (B, 1, H, W) in [0, 1] (None otherwise)."""

    x0: torch.Tensor
    fraction: torch.Tensor | None = None


def variance_fraction(output: torch.Tensor) -> torch.Tensor:
    """The log-variance fraction in [0, 1] from a learned-variance network's raw output (its second channel)."""
    return torch.sigmoid(output[:, 1:2])


def _adapt_tensor(name: str, value: torch.Tensor, wanted: torch.Size) -> torch.Tensor:
    """Zero-pad ``value`` to ``wanted`` along the channel axes that grew (new channels start at 0)."""
    if value.shape == wanted:
        return value
    if value.dim() != len(wanted) or any(a > b for a, b in zip(value.shape, wanted)):
        raise ValueError(f"{name}: cannot adapt {tuple(value.shape)} to {tuple(wanted)}")
    out = torch.zeros(wanted, dtype=value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def adapt_state_dict(state: dict, network: torch.nn.Module) -> dict:
    """Weights of a model with fewer input/output channels, widened to fit ``network``.

    New output channels (the learned-variance head) start at 0 (fraction 0.5 under the
    sigmoid); new input channels start with zero weights, so the widened network computes
    exactly what the old one did until training moves them."""
    wanted = network.state_dict()
    if set(state) != set(wanted):
        raise ValueError("the two networks have different layers")
    return {k: _adapt_tensor(k, v, wanted[k].shape) for k, v in state.items()}


class Denoiser(torch.nn.Module):
    """Wraps the U-Net: ``denoiser(x_t, condition, t) -> x0_hat``, all (B, 1, H, W) in [-1, 1].

    ``t`` is an int or a (B,) tensor. Handles the prediction type, channels_last and
    autocast (bf16 on CPU and bf16-capable GPUs, else fp16) so callers only see x0 predictions in fp32.
    """

    def __init__(self, config: DiffusionConfig, network: torch.nn.Module | None = None, autocast: bool = True):
        super().__init__()
        self.config = config
        self.network = network if network is not None else build_network(config)
        self.schedule = NoiseSchedule(config.num_train_timesteps, config.schedule)
        self.autocast = autocast

    def forward(self, x_t: torch.Tensor, condition: torch.Tensor, t) -> torch.Tensor:
        return self.predict(x_t, condition, t).x0

    def predict(self, x_t: torch.Tensor, condition: torch.Tensor, t) -> Prediction:
        if x_t.shape[-1] % self.config.min_size or x_t.shape[-2] % self.config.min_size:
            raise InputError(f"slice size {tuple(x_t.shape[-2:])} must be divisible by {self.config.min_size}")
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        inputs = torch.cat([x_t, condition], dim=1).contiguous(memory_format=torch.channels_last)
        device_type = x_t.device.type
        with torch.autocast(device_type, dtype=autocast_dtype(device_type), enabled=self.autocast):
            output = self.network(inputs, timesteps=t).float()
        x0 = self.schedule.x0_from_output(output[:, :1], x_t, t, self.config.prediction_type)
        return Prediction(x0, variance_fraction(output) if self.config.learned_variance else None)


def save_model(folder: str | Path, config: DiffusionConfig, state_dict: dict) -> Path:
    from localdiffusion.data.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        torch.save(state_dict, tmp)
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(config.to_json(), encoding="utf-8")
    return folder


def read_config(folder: str | Path) -> DiffusionConfig:
    """A model folder's ``config.json`` without its weights; an :class:`InputError` naming the file otherwise."""
    config_path = Path(folder) / CONFIG_FILE
    if not config_path.exists():
        raise InputError(f"{config_path}: model configuration not found (is --model a trained model folder? "
                         f"--models or ${MODELS_ENV} name a folder holding <direction>/config.json)")
    try:
        return DiffusionConfig.from_json(config_path.read_text(encoding="utf-8"))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{config_path}: invalid model configuration ({exc})") from exc


def load_denoiser(folder: str | Path, device: str | torch.device = "cpu", autocast: bool = True) -> Denoiser:
    """Load ``config.json`` + ``model.pt``; clear errors for missing or mismatched weights."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.exists():
        raise InputError(f"{config_path}: model configuration not found (is --model a trained model folder? "
                         f"--models or ${MODELS_ENV} name a folder holding <direction>/config.json)")
    if not weights_path.exists():
        raise InputError(f"{weights_path}: model weights not found")
    config = read_config(folder)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{weights_path}: corrupt weights file (not a tensor state dict: "
                         f"{exc.__class__.__name__})") from exc
    denoiser = Denoiser(config, autocast=autocast)
    try:
        denoiser.network.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{weights_path}: weights do not match {config_path} ({str(exc).splitlines()[0]})") from exc
    denoiser.network.to(memory_format=torch.channels_last)
    return denoiser.to(device).eval()
