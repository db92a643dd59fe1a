"""Update rules: one step ``t -> s`` of a reverse process, as small objects in a registry.

Every rule here is affine in (x_t, x0_hat) plus noise:

    x_s = c_x0 x0_hat + c_xt x_t + sigma z,   z ~ N(0, I) from the slice's generator,

and says so through :meth:`UpdateRule.coefficients`, so that a method that needs the
step's shape (RODS applies the direction computed at a perturbed point) asks the rule
instead of re-deriving it. ``s = -1`` is the clean image: every rule returns x0_hat there.

Adding a sampler (for example DPM-Solver++) means adding a class here and registering it
in :data:`UPDATE_RULES`; the CLI, the MONAI Label parameters and the bundle take their
choices from this registry (:mod:`localdiffusion.options`). A multistep solver keeps its
history on the instance (one instance per sampling run, made by :func:`make_update`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the rules do arithmetic only: importing them (the options table does) loads no torch
    import torch

    from localdiffusion.engine.schedule import NoiseSchedule

#: ``noise(item_shape) -> (B, *item_shape)`` standard normal noise (a SliceNoise or a wrapper)
Noise = Callable[[tuple], "torch.Tensor"]


class UpdateRule:
    """Base: ``rule(schedule, x_t, x0_hat, t, s, noise) -> x_s``; ``eta`` scales the step's noise.

    ``variance_fraction``: for a model with a learned variance (VSM), a callable returning the
    log-variance fraction of the latest prediction in the state's layout (set by
    :func:`~localdiffusion.engine.assemble.sample_slices`); rules that sample the posterior use it.
    """

    name = ""
    default_eta = 0.0
    variance_fraction: Callable[[], torch.Tensor | None] | None = None

    def __init__(self, eta: float | None = None):
        eta = self.default_eta if eta is None else float(eta)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def coefficients(self, schedule: NoiseSchedule, t: int, s: int) -> tuple[float, float, float]:
        """The step's affine form ``x_s = c_x0 x0_hat + c_xt x_t + sigma z``.

        Args:
            schedule: the model's noise schedule.
            t, s: timesteps, ``s < t``; ``s = -1`` the clean image.
        Returns:
            (c_x0, c_xt, sigma) as floats.
        """
        raise NotImplementedError

    def __call__(self, schedule: NoiseSchedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int, s: int,
                 noise: Noise) -> torch.Tensor:
        """One step.

        Args:
            schedule: the model's noise schedule.
            x_t, x0_hat: (B, C, H, W) state and the model's clean-image prediction, in [-1, 1].
            t, s: timesteps, ``s < t``; ``s = -1`` returns x0_hat.
            noise: draws the step's standard normal noise for the batch.
        Returns:
            x_s, (B, C, H, W).
        """
        raise NotImplementedError


class DDPM(UpdateRule):
    """Ancestral DDPM step on any respaced chain (Ho et al. 2020, Algorithm 2, with x0_hat in the
    posterior mean of Eq. 7): sample q(x_s | x_t, x0_hat), noise scaled by ``eta``.

    With a learned variance the step's variance is the model's, per pixel, between the
    respaced step's beta-tilde and beta (Nichol & Dhariwal 2021, Eq. 15 and Sec. 4);
    :meth:`coefficients` states the fixed (beta-tilde) one."""

    name = "ddpm"
    default_eta = 1.0

    def coefficients(self, schedule, t, s):
        coef_x0, coef_xt, variance = schedule.posterior_coefficients(t, s)
        return coef_x0, coef_xt, self.eta * variance**0.5

    def __call__(self, schedule, x_t, x0_hat, t, s, noise):
        mean, variance = schedule.posterior(x_t, x0_hat, t, s)
        if s < 0 or variance == 0.0 or self.eta == 0.0:
            return mean
        fraction = self.variance_fraction() if self.variance_fraction is not None else None
        if fraction is not None:
            variance = schedule.learned_variance(fraction, t, s)
        return mean + (self.eta * variance**0.5) * noise(x_t.shape[1:])


class DDIM(UpdateRule):
    """DDIM step (Song et al. 2021, Eq. 12) with stochasticity ``eta`` (0 = deterministic):

        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)   (Eq. 16)
    """

    name = "ddim"

    def _sigma(self, a_t: float, a_s: float) -> float:
        return self.eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5

    def coefficients(self, schedule, t, s):
        if s < 0:
            return 1.0, 0.0, 0.0
        a_t, a_s = schedule.abar(t), schedule.abar(s)
        sigma = self._sigma(a_t, a_s)
        c_xt = ((1 - a_s - sigma**2) / (1 - a_t)) ** 0.5
        return a_s**0.5 - c_xt * a_t**0.5, c_xt, sigma

    def __call__(self, schedule, x_t, x0_hat, t, s, noise):
        if s < 0:
            return x0_hat
        a_t, a_s = schedule.abar(t), schedule.abar(s)
        eps = schedule.eps_from_x0(x_t, x0_hat, t)
        sigma = self._sigma(a_t, a_s)
        x_s = a_s**0.5 * x0_hat + max(1 - a_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x_s = x_s + sigma * noise(x_t.shape[1:])
        return x_s


#: sampler name -> rule class; the only list of samplers in the package
UPDATE_RULES: dict[str, type[UpdateRule]] = {rule.name: rule for rule in (DDIM, DDPM)}


def make_update(sampler: str, eta: float | None = None) -> UpdateRule:
    """A fresh rule instance (``eta`` None: the rule's default)."""
    if sampler not in UPDATE_RULES:
        raise ValueError(f"sampler must be one of {sorted(UPDATE_RULES)}, got {sampler!r}")
    return UPDATE_RULES[sampler](eta)
