"""Training objectives of the denoiser: ``plain`` and ``vsm``.

Holds :data:`OBJECTIVES`, :class:`Objective` and :func:`losses`, which documents each objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from localdiffusion.engine.schedule import NoiseSchedule
from localdiffusion.network.denoiser import variance_fraction

OBJECTIVES = ("plain", "vsm")
#: half a quantisation bin of 8-bit data on the [-1, 1] scale (improved DDPM's decoder)
_HALF_BIN = 1.0 / 255.0


@dataclass(frozen=True)
class Objective:
    name: str = "plain"
    vsm_rho: float = 0.1
    vsm_time_aware: bool = False

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.name!r}")
        if self.vsm_rho < 0:
            raise ValueError(f"vsm_rho must be >= 0, got {self.vsm_rho}")

    @property
    def learned_variance(self) -> bool:
        return self.name == "vsm"

    def describe(self) -> dict:
        """What the model configuration records (``extra``)."""
        if self.name == "plain":
            return {"objective": "plain"}
        return {"objective": "vsm", "vsm_rho": self.vsm_rho, "vsm_time_aware": self.vsm_time_aware}


def _gaussian_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _decoder_nll(x0: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-log p(x0) of a Gaussian discretised to 8-bit bins on [-1, 1] (edges open), in nats."""
    normal = torch.distributions.Normal(0.0, 1.0)
    inv_std = torch.exp(-0.5 * logvar)
    upper = normal.cdf(inv_std * (x0 - mean + _HALF_BIN))
    lower = normal.cdf(inv_std * (x0 - mean - _HALF_BIN))
    prob = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1.0 - lower, upper - lower))
    return -torch.log(prob.clamp(min=1e-12))


def _per_item(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def losses(objective: Objective, schedule: NoiseSchedule, output: torch.Tensor, x_t: torch.Tensor,
           x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str) -> dict[str, torch.Tensor]:
    """Loss terms (scalars) for one batch; ``loss`` is what is minimised.

    ``output``: the network's raw output (B, 1 or 2, H, W) in fp32; ``x_t`` the noised
    ``x0`` with ``noise`` at timesteps ``t`` (B,).

    ``plain``: the mean squared error between the network's first output and its target (x0
    for the "sample" parameterisation), t ~ U{0..T-1}.

    ``vsm`` (variance-guided score modulation, Bhosale et al.; reference code bhosalems/VSM,
    ``DDPM-IP/guided_diffusion/gaussian_diffusion.py``) adds, for a network with a learned
    variance (:class:`~localdiffusion.network.denoiser.DiffusionConfig` ``learned_variance``):

    * the variational term of improved DDPM ("hybrid" loss): the KL between the true posterior
      q(x_{t-1} | x_t, x0) and the model's Gaussian (its mean from the *detached* x0 prediction,
      so that this term trains the variance only), the decoder's discretised Gaussian NLL at
      t = 0, in bits per pixel, scaled by T / 1000 as in improved DDPM's rescaled MSE;
    * the smoothness regulariser ``mean(1 / (1 + J^2))`` with ``J = -1 / sigma^2`` the diagonal
      score Jacobian of the learned Gaussian, weighted by ``rho`` or, time-aware, by
      ``rho / sqrt(1 - abar_t)``. It penalises small |J| (an over-smooth score), i.e. large
      learned variances.

    With ``rho = 0`` the objective is improved DDPM's hybrid loss; the gradient reaching the x0
    output is then the plain objective's (tested). The learned fraction is a sigmoid, so the
    variance stays between beta-tilde and beta (the reference's linear map can leave it).
    """
    target = schedule.training_target(x0, noise, t, prediction_type)
    mse = torch.nn.functional.mse_loss(output[:, :1], target)
    if not objective.learned_variance:
        return {"loss": mse, "mse": mse}
    if output.shape[1] != 2:
        raise ValueError("the VSM objective needs a network with a learned variance (2 output channels)")
    x0_hat = schedule.x0_from_output(output[:, :1].detach(), x_t, t, prediction_type)
    s = t - 1
    coef = [torch.as_tensor(c) for c in zip(*(schedule.posterior_coefficients(int(a), int(b)) for a, b in zip(t, s)))]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    c_x0, c_xt = (c.to(x0.device, x0.dtype).view(shape) for c in coef[:2])
    true_mean, model_mean = c_x0 * x0 + c_xt * x_t, c_x0 * x0_hat + c_xt * x_t
    true_logvar = schedule.learned_log_variance(torch.zeros_like(x0), t, s)  # fraction 0: beta-tilde
    logvar = schedule.learned_log_variance(variance_fraction(output), t, s)
    kl = _per_item(_gaussian_kl(true_mean, true_logvar, model_mean, logvar))
    nll = _per_item(_decoder_nll(x0, model_mean, logvar))
    vb = torch.where(t == 0, nll, kl) / math.log(2.0) * (schedule.num_train_timesteps / 1000.0)
    jacobian = -torch.exp(-logvar)  # diagonal score Jacobian of the learned Gaussian
    smooth = _per_item(1.0 / (1.0 + jacobian**2))
    weight = torch.full_like(smooth, objective.vsm_rho)
    if objective.vsm_time_aware:
        abar = schedule.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        weight = weight / (1.0 - abar).clamp(min=1e-12).sqrt()
    loss = mse + vb.mean() + (weight * smooth).mean()
    return {"loss": loss, "mse": mse, "vb": vb.mean(), "smooth": smooth.mean()}
