"""RODS robust sampling for the VP x0-parameterised model (implemented from the paper).

Holds the curvature estimators (:func:`curvature_index`, :func:`finite_difference_curvature`), the
wrapper's settings (:class:`RODSConfig`) and the wrapper itself (:class:`RODS`, which documents the method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch

from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.engine.updates import DDIM, UpdateRule

ESTIMATORS = ("autograd", "finite_difference")


@dataclass
class RODSConfig:
    rho: float = 0.02  # RMS per-pixel size of d, model scale [-1, 1]
    eps: float = 1.0  # curvature-index threshold (calibrate on healthy validation data)
    window: tuple[float, float] = (0.1, 0.5)
    mode: str = "cas"
    estimator: str = "autograd"
    stride: int = 2  # evaluate H on every stride-th step of the window (cost: research/RECORD.md 4c)

    def __post_init__(self):
        self.window = tuple(float(w) for w in self.window)
        if not self.rho >= 0:
            raise ValueError(f"rho must be >= 0, got {self.rho}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        lo, hi = self.window
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"window must satisfy 0 <= start < end <= 1, got {self.window}")
        if self.mode not in ("cas", "sas"):
            raise ValueError(f"mode must be 'cas' or 'sas', got {self.mode!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")

    def wrap(self, denoise, schedule: NoiseSchedule, timesteps: Sequence[int], update) -> "RODS":
        """The denoiser wrapper :func:`~localdiffusion.engine.assemble.sample_slices` expects."""
        return RODS(denoise, schedule, timesteps, self, update)

    @classmethod
    def from_dict(cls, payload: dict) -> "RODSConfig":
        """Settings stored in a calibration or benchmark JSON (files before 0.5 also stored the
        solver, which is now the sampler's own update rule)."""
        return cls(**{k: v for k, v in payload.items() if k != "solver"})

    def describe(self) -> str:
        every = {1: "every step", 2: "every 2nd step", 3: "every 3rd step"}.get(self.stride, f"every {self.stride}th step")
        return (f"{self.mode.upper()}, {self.estimator.replace('_', ' ')} H, rho {self.rho}, window "
                f"{self.window[0]:.0%}-{self.window[1]:.0%} of steps, {every}")


#: ``field(z) -> v(z)`` or ``(v(z), extra)``: ``extra`` (e.g. the x0 prediction at z) is handed back
#: for the points x and x + d, so the caller needs no extra network evaluation there
ScoreField = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, Any]"]


class Curvature(NamedTuple):
    """``h`` (B,) curvature index, ``d`` the perturbation (like x), the field's extras at x and x + d."""

    h: torch.Tensor
    d: torch.Tensor
    at_x: Any = None
    at_d: Any = None


def _evaluate(field: ScoreField, z: torch.Tensor) -> tuple[torch.Tensor, Any]:
    out = field(z)
    return out if isinstance(out, tuple) else (out, None)


def _per_slice_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / _per_slice_norm(x).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def _radius(x: torch.Tensor, rho: float) -> float:
    """Vector length of a perturbation with RMS ``rho`` per pixel."""
    return rho * x[0].numel() ** 0.5


def curvature_index(field: ScoreField, x: torch.Tensor, rho: float, mode: str = "cas") -> Curvature:
    """The exact curvature index ``H = || grad ||v(x + d)|| - grad ||v(x)|| ||`` by autograd (two
    forward + backward passes through the network).

    Args:
        field: the score field ``v`` (with the x0 predictions it computes).
        x: (B, C, H, W) state.
        rho: the perturbation's RMS size per pixel.
        mode: ``cas`` (``d`` along ``grad ||v||``) or ``sas`` (``d`` along ``v``).
    Returns:
        a :class:`Curvature`: per-slice ``H`` (B,), the perturbation and the x0 predictions at ``x``
        and ``x + d``.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        v, at_x = _evaluate(field, x_)
        g = torch.autograd.grad(_per_slice_norm(v).sum(), x_)[0]
        d = _radius(x, rho) * _unit(g if mode == "cas" else v.detach())
        y = (x.detach() + d).requires_grad_(True)
        v_y, at_d = _evaluate(field, y)
        g_y = torch.autograd.grad(_per_slice_norm(v_y).sum(), y)[0]
    return Curvature(_per_slice_norm(g_y - g).detach(), d.detach(), at_x, at_d)


def finite_difference_curvature(field: ScoreField, x: torch.Tensor, rho: float, mode: str = "cas") -> Curvature:
    """``H`` from forward differences of step ``rho`` (RMS per pixel) along the score.

    Assumes a symmetric Jacobian (a true score field). Field evaluations: SAS 3, CAS 4
    (x, x + r v/||v||, [x + d,] x + d + r v(x + d)/||v(x + d)||).
    """
    r = _radius(x, rho)
    v0, at_x = _evaluate(field, x)
    u0 = _unit(v0)
    v_u0, at_u0 = _evaluate(field, x + r * u0)
    g0 = (v_u0 - v0) / r
    if mode == "sas":
        d, v1, at_d = r * u0, v_u0, at_u0
    else:
        d = r * _unit(g0)
        v1, at_d = _evaluate(field, x + d)
    g1 = (_evaluate(field, x + d + r * _unit(v1))[0] - v1) / r
    return Curvature(_per_slice_norm(g1 - g0), d, at_x, at_d)


@dataclass
class RODS:
    """Wraps ``denoise(x, t) -> x0`` (differentiable) into the RODS-corrected predictor.

    Score from the x0 prediction: ``v(x) = -(x - sqrt(abar_t) x0_hat(x)) / (1 - abar_t)``.
    Curvature index (one-step approximation): with ``g = grad ||v(x)||`` and a perturbation
    ``d`` of RMS size ``rho`` per pixel,

        H(x) = || grad ||v(x + d)|| - grad ||v(x)|| ||.

    A step is high-risk when ``H > eps``. Directions (our reading of the paper):

    * ``cas`` (curvature-aware): ``d`` along ``g`` (the gradient of the score norm);
    * ``sas`` (sharpness-aware): ``d`` along the score ``v`` (the gradient of the log-density,
      i.e. the worst-case point in the direction of the function's gradient).

    Two estimators of ``H`` (``RODSConfig.estimator``):

    * ``autograd``: both gradients by vector-Jacobian products through the network (two
      forward + backward passes);
    * ``finite_difference``: a score field's Jacobian ``J`` is symmetric (the Hessian of the
      log-density), so ``g = J^T v/||v|| = J v/||v||`` is a directional derivative, estimated
      by a forward difference of step ``rho`` along ``v``. With SAS the first difference point
      *is* ``x + d``, so H costs two extra network evaluations (CAS: three). It converges to
      the autograd value on a true score field (tested); on our trained network it does not
      agree (bf16 rounding, and a learned x0 network is not a gradient field), so the default
      is autograd, evaluated on every 2nd window step (cost: research/RECORD.md 4c).

    Both estimators hand back the x0 predictions at ``x`` and ``x + d`` they computed anyway:
    the plain prediction and the corrected one cost no further network evaluation.

    For a high-risk slice the update direction computed at ``x + d`` is applied at ``x``. Our
    update rules are affine in (x_t, x0): ``x_s = c_x0 x0 + c_xt x_t (+ noise)``, and the rule
    in use says its coefficients (:meth:`~localdiffusion.engine.updates.UpdateRule.coefficients`),
    so this equals using ``x0_eff = x0_hat(x + d) + (c_xt - 1) / c_x0 d`` at ``x``. The state may
    have several channels (Local Diffusion's branches): H and the correction are per slice. RODS acts only for steps
    inside ``window`` (fractions of the trajectory, default 10% to 50%), on every
    ``stride``-th step of it; elsewhere, and for slices below ``eps``, the plain x0 prediction
    is returned unchanged.
    """

    denoise: Callable[[torch.Tensor, int], torch.Tensor]
    schedule: NoiseSchedule
    timesteps: Sequence[int]
    config: RODSConfig = field(default_factory=RODSConfig)
    update: UpdateRule = field(default_factory=DDIM)  # the sampler's rule: its step coefficients
    flags: dict = field(default_factory=dict)  # step index -> bool (B,) high-risk
    curvature: dict = field(default_factory=dict)  # step index -> H (B,)

    def __post_init__(self):
        self.timesteps = list(self.timesteps)
        n = len(self.timesteps)
        lo, hi = self.config.window
        window = [i for i in range(n) if lo <= i / n < hi]
        self.active = set(window[:: self.config.stride])

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        i = self.timesteps.index(t)
        cfg = self.config
        if i not in self.active or cfg.rho == 0:
            with torch.no_grad():
                return self.denoise(x, t)
        abar = self.schedule.abar(t)

        def field(z):  # the score, and the x0 prediction it came from
            x0_z = self.denoise(z, t)
            return -(z - abar**0.5 * x0_z) / (1 - abar), x0_z.detach()

        if cfg.estimator == "autograd":
            curv = curvature_index(field, x, cfg.rho, cfg.mode)
        else:
            with torch.no_grad():
                curv = finite_difference_curvature(field, x, cfg.rho, cfg.mode)
        x0, risky = curv.at_x, curv.h > cfg.eps
        self.curvature[i], self.flags[i] = curv.h, risky
        if not risky.any():
            return x0
        s = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
        c_x0, c_xt, _ = self.update.coefficients(self.schedule, t, s)
        x0_shifted = curv.at_d + (c_xt - 1.0) / c_x0 * curv.d
        return torch.where(risky.view(-1, *([1] * (x.dim() - 1))), x0_shifted, x0)

    def flagged_slices(self) -> torch.Tensor:
        """(B,) bool: any high-risk step."""
        if not self.flags:
            return torch.zeros(0, dtype=torch.bool)
        return torch.stack(list(self.flags.values())).any(0)
