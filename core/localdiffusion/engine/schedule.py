"""Noise schedule and the exact posterior of a (respaced) DDPM chain.

Everything is computed from ``alphas_cumprod`` (abar), so any increasing subsequence of
the training timesteps is a valid chain: for a step ``t -> s`` (s < t) the effective
``beta = 1 - abar_t / abar_s``. ``s = -1`` denotes the clean image (abar = 1).
Tensors: images (B, C, H, W); timesteps are Python ints shared by the batch.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import NoiseSchedules

#: training timesteps T of a new model (the shipped models were trained with it)
DEFAULT_TIMESTEPS = 100


class NoiseSchedule:
    """MONAI beta schedule (default ``sigmoid_beta``) with T training steps.

    ``beta_start``/``beta_end`` default to the 1000-step DDPM values (1e-4, 2e-2) scaled
    by 1000 / T, so a short chain still ends in (almost) pure noise.
    Attributes are float64 CPU tensors of length T: ``betas``, ``alphas_cumprod``.
    """

    def __init__(self, num_train_timesteps: int = DEFAULT_TIMESTEPS, schedule: str = "sigmoid_beta",
                 beta_start: float | None = None, beta_end: float | None = None, sig_range: float = 6.0):
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        scale = 1000.0 / num_train_timesteps
        beta_start = 1e-4 * scale if beta_start is None else beta_start
        beta_end = min(2e-2 * scale, 0.999) if beta_end is None else beta_end
        kwargs = {"sig_range": sig_range} if schedule == "sigmoid_beta" else {}
        self.num_train_timesteps = num_train_timesteps
        self.betas = NoiseSchedules[schedule](num_train_timesteps, beta_start, beta_end, **kwargs).to(torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def abar(self, t: int) -> float:
        """abar_t; ``t = -1`` gives 1 (the clean image)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def timesteps(self, num_steps: int | None = None) -> list[int]:
        """Decreasing respaced timesteps from T - 1 to 0, evenly spaced (rounded linspace)."""
        T = self.num_train_timesteps
        n = T if num_steps is None else int(num_steps)
        if not 1 <= n <= T:
            raise ValueError(f"steps must be between 1 and {T}, got {num_steps}")
        if n == 1:
            return [T - 1]
        steps = torch.round(torch.linspace(T - 1, 0, n, dtype=torch.float64)).long()
        return [int(s) for s in steps]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A sample of q(x_t | x0) (Ho et al. 2020, Eq. 4): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0, noise: (B, C, H, W).
            t: (B,) long timesteps.
        Returns:
            x_t, (B, C, H, W).
        """
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def posterior_coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """The posterior q(x_s | x_t, x0) of the respaced step t -> s (Ho et al. 2020, Eqs. 6-7,
        with ``beta = 1 - abar_t / abar_s`` as in Nichol & Dhariwal 2021, Sec. 4):
        ``mean = coef_x0 x0 + coef_xt x_t``, ``variance = beta-tilde``. The one place these
        coefficients are computed.

        Args:
            t, s: timesteps, ``s < t``; ``s = -1`` is the clean image.
        Returns:
            (coef_x0, coef_xt, variance) as floats.
        """
        a_t, a_s = self.abar(t), self.abar(s)
        beta = 1.0 - a_t / a_s
        coef_x0 = a_s**0.5 * beta / (1.0 - a_t)
        coef_xt = (1.0 - beta) ** 0.5 * (1.0 - a_s) / (1.0 - a_t)
        variance = (1.0 - a_s) / (1.0 - a_t) * beta
        return coef_x0, coef_xt, variance

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int) -> tuple[torch.Tensor, float]:
        """Mean (shaped like ``x_t``) and variance (a float) of q(x_s | x_t, x0) for the step t -> s
        (:meth:`posterior_coefficients`)."""
        coef_x0, coef_xt, variance = self.posterior_coefficients(t, s)
        return coef_x0 * x0 + coef_xt * x_t, variance

    def log_variance_range(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log beta-tilde, log beta) of the steps ``t -> s`` (long tensors; ``s = -1`` the clean
        image): the range a learned variance interpolates (improved DDPM's "learned range").
        beta-tilde is 0 for the step to the clean image; it is clipped to the value of the
        step 1 -> 0 there, as in improved DDPM."""
        abar = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])  # abar[i + 1] = abar_i
        t, s = t.cpu().long(), s.cpu().long()
        a_t, a_s = abar[t + 1], abar[s + 1]
        beta = 1.0 - a_t / a_s
        tilde = (1.0 - a_s) / (1.0 - a_t) * beta
        tilde_first = (1.0 - abar[1]) / (1.0 - abar[2]) * (1.0 - abar[2] / abar[1])
        return torch.where(s < 0, tilde_first, tilde).log(), beta.log()

    def learned_log_variance(self, fraction: torch.Tensor, t: torch.Tensor | int, s: torch.Tensor | int) -> torch.Tensor:
        """Per-pixel ``f log beta + (1 - f) log beta-tilde`` (Nichol & Dhariwal 2021, Eq. 15) of
        the steps ``t -> s``.

        Args:
            fraction: (B, C, H, W) log-variance fractions ``f`` in [0, 1].
            t, s: ints or (B,) long tensors.
        Returns:
            (B, C, H, W) log variances.
        """
        batch = fraction.shape[0]
        low, high = (v.to(fraction.device, fraction.dtype).view(-1, *([1] * (fraction.dim() - 1)))
                     for v in self.log_variance_range(torch.as_tensor(t).expand(batch),
                                                      torch.as_tensor(s).expand(batch)))
        return fraction * high + (1.0 - fraction) * low

    def learned_variance(self, fraction: torch.Tensor, t: torch.Tensor | int, s: torch.Tensor | int) -> torch.Tensor:
        """Per-pixel variance: ``exp`` of :meth:`learned_log_variance`."""
        return torch.exp(self.learned_log_variance(fraction, t, s))

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
        """The noise implied by ``x_t`` and ``x0`` (Ho et al. 2020, Eq. 4 solved for it); shaped like ``x_t``."""
        a_t = self.abar(t)
        return (x_t - a_t**0.5 * x0) / (1.0 - a_t) ** 0.5

    def x0_from_output(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """x0_hat from a network output: the output itself (``sample``), Eq. 4 solved for x0
        (``epsilon``), or ``sqrt(abar) x_t - sqrt(1 - abar) v`` (``v_prediction``, Salimans & Ho
        2022, Sec. 4).

        Args:
            output, x_t: (B, C, H, W).
            t: (B,) long timesteps.
            prediction_type: ``sample``, ``epsilon`` or ``v_prediction``.
        Returns:
            x0_hat, (B, C, H, W).
        """
        if prediction_type == "sample":
            return output
        abar = self.alphas_cumprod.to(x_t.device)[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        if prediction_type == "epsilon":
            return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
        if prediction_type == "v_prediction":
            return abar.sqrt() * x_t - (1 - abar).sqrt() * output
        raise ValueError(f"unknown prediction_type {prediction_type!r}")

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """What the network regresses for ``prediction_type`` (x0, the noise, or v = sqrt(abar) noise
        - sqrt(1 - abar) x0); shaped like ``x0``; ``t`` is (B,)."""
        if prediction_type == "sample":
            return x0
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
            return abar.sqrt() * noise - (1 - abar).sqrt() * x0
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
