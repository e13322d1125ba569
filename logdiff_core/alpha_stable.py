"""Alpha-stable noise, with the forward law and the ancestral sampler of the Denoising Lévy Probabilistic Model
(DLPM; Shariatian, Simsekli and Durmus 2024).

The noise is symmetric alpha-stable (SaS) for ``1 < alpha <= 2``, drawn by subordination: ``eps = sqrt(A) G`` with
``G`` standard normal and ``A`` positive (alpha/2)-stable with Laplace transform ``E exp(-s A) = exp(-s^(alpha/2))``.
Its characteristic function is ``exp(-|theta|^alpha / 2^(alpha/2))``: SaS of scale ``2^(-1/2)``, and at alpha = 2,
where ``A = 1``, exactly the standard normal (drawn as ``torch.randn``, so the Gaussian model's numbers come out
bit for bit). Below 2 the variance is infinite, the tails fall as ``|eps|^(-1-alpha)``.

Scale, not variance. Theorem 1 of NGLDM keeps ``abar + (1 - abar) = 1`` (variances) under one beta schedule;
without a variance DLPM keeps the *scale* of a stable marginal instead: ``x_t = g_t x_0 + s_t eps`` with
``g_t^alpha + s_t^alpha = 1``, ``g_t = abar_t^(1/alpha)``, ``s_t = (1 - abar_t)^(1/alpha)`` (DLPM's
"scale-preserving" schedule). The pipeline's models see ``x_t / sqrt(g_t^2 + s_t^2)``, the same forward process
written as ``sqrt(abar'_t) x_0 + sqrt(1 - abar'_t) eps`` with ``abar' = g^2 / (g^2 + s^2)``
(``forward_schedule``): a reparametrisation, so training, the preconditioning, DDIM and Heun (DLPM's
deterministic DLIM sampler and its ODE), restarts and the exact closed-form noising run unchanged.

Training is DLPM's (its Proposition 9): ``x_t`` is drawn conditionally Gaussian given the subordinator,
``sqrt(abar') x_0 + sqrt(1 - abar') sqrt(A) G``, and the network predicts ``eps = sqrt(A) G``, with DLPM's loss:
each sample's L2 norm of the error, not squared (a squared error of a target without a variance has none itself).
On the breast-cancer preset it beat the squared error on the two-sample test (docs/positive-data.md).

Ancestral sampling is DLPM's too: given a chain of subordinators ``A_k`` (one per step of the grid) every reverse
step is Gaussian. On the grid, ``Sigma_t = r^2 Sigma_s + b^2 A`` is ``x_t``'s variance given ``x_0`` and the chain
(``r = sqrt(abar'_t / abar'_s)``, ``b^alpha = n_t^alpha - r^alpha n_s^alpha``, ``n = sqrt(1 - abar')``: stable
scales add in alpha-th powers), and the step from ``t`` to ``s`` is
``x_s = (x_t - n_t Gamma eps_hat) / r + sqrt(v) z``, ``Gamma = 1 - r^2 Sigma_s / Sigma_t``, ``z`` standard normal,
``v = Gamma Sigma_s`` (``variance='posterior'``) or ``Sigma_t - r^2 Sigma_s`` (``'beta'``, the step's own
variance): at alpha = 2 (``A = 1``) exactly DDPM's step. As in DLPM's sampler, ``x_T`` is drawn from the noise's
own law, independently of the chain.
"""
from __future__ import annotations

import math

import torch

from .noise import NoiseDistribution, _real_parameter, _uniform_open, register
from .schedules import Schedule

SUBORDINATOR_CHAIN = "subordinator_chain"  # the step context's state key of the current pass's chain


def log_positive_stable(rho: float, shape, generator=None, device=None) -> torch.Tensor:
    """log of draws of the positive rho-stable law, ``E exp(-s A) = exp(-s^rho)`` for ``0 < rho < 1`` (Kanter's
    representation, in float64 and in log space: at rho near 1 its factors would overflow)."""
    u = math.pi * _uniform_open(shape, generator, device, torch.float64)
    e = -torch.log(_uniform_open(shape, generator, device, torch.float64))
    return (torch.log(torch.sin(rho * u)) - torch.log(torch.sin(u)) / rho
            + (1 - rho) / rho * (torch.log(torch.sin((1 - rho) * u)) - torch.log(e)))


@register
class AlphaStable(NoiseDistribution):
    """Symmetric alpha-stable noise of scale 2^(-1/2) (the standard normal at alpha = 2), ``1 < alpha <= 2``."""

    name = "alpha_stable"
    defaults = {"alpha": 1.8}

    def __init__(self, alpha: float):
        self.alpha = _real_parameter(self.name, "alpha", alpha, 1, " (a finite mean)")
        if self.alpha > 2:
            raise ValueError(f"{self.name} needs alpha <= 2 (2 is the Gaussian); got alpha={alpha!r}")
        super().__init__(alpha=self.alpha)

    @property
    def unit_variance(self) -> bool:
        return self.alpha == 2

    @property
    def excess_kurtosis(self) -> float:
        return 0.0 if self.alpha == 2 else math.inf

    def _draw(self, shape, generator, device, dtype):
        if self.alpha == 2:
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)
        half_log_a = 0.5 * log_positive_stable(self.alpha / 2, shape, generator, device)
        return (half_log_a.exp() * torch.randn(shape, generator=generator, device=device, dtype=torch.float64)).to(dtype)

    def forward_schedule(self, schedule: Schedule) -> Schedule:
        """DLPM's scale-preserving law, written with ``abar' = g^2 / (g^2 + s^2) = 1 / (1 + ((1 - abar) / abar)^(2 /
        alpha))`` (see the module's notes); the configured schedule itself at alpha = 2."""
        if self.alpha == 2:
            return schedule
        abar = schedule.alpha_bars64.cpu()
        effective = torch.sigmoid(-2 / self.alpha * (torch.log1p(-abar) - torch.log(abar)))
        betas = 1 - effective / torch.cat([effective.new_ones(1), effective[:-1]])
        return Schedule(betas).to(schedule.alpha_bars64.device)

    def per_sample_loss(self, prediction: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """DLPM's loss below alpha = 2: the root of the squared error's mean (the norm over a sample, scaled)."""
        squared = super().per_sample_loss(prediction, eps)
        return squared if self.alpha == 2 else squared.sqrt()

    @property
    def sampler_steps(self) -> dict:
        return {} if self.alpha == 2 else {"ddpm": self.ancestral_step}

    def _chain(self, ctx, like: torch.Tensor) -> dict[int, torch.Tensor]:
        """``Sigma_t`` at every timestep of the pass's grid, from one subordinator per grid step (the step from the
        last grid timestep to clean data included), built upwards from ``Sigma = 0`` at the data."""
        chain, below = {}, -1  # from the clean data (t = -1, abar 1, Sigma 0) upwards
        for t in reversed(ctx.grid):
            r = math.sqrt(ctx.abar_at(t) / ctx.abar_at(below))
            n_t, n_below = math.sqrt(1 - ctx.abar_at(t)), math.sqrt(1 - ctx.abar_at(below))
            b = (n_t**self.alpha - (r * n_below) ** self.alpha) ** (1 / self.alpha)
            a = ctx.draw_with(lambda shape, g: log_positive_stable(self.alpha / 2, shape, g, like.device), like).exp()
            chain[t] = b**2 * a + r**2 * chain.get(below, 0.0)
            below = t
        return chain

    def ancestral_step(self, ctx, x, t, s):
        """DLPM's reverse step from ``t`` to ``s`` on this pass's subordinator chain (drawn at the pass's first
        step); the last step, to clean data, returns the clean-data estimate as DDPM's does."""
        if SUBORDINATOR_CHAIN not in ctx.state:  # the pass's first step
            ctx.state[SUBORDINATOR_CHAIN] = self._chain(ctx, x)
        chain = ctx.state[SUBORDINATOR_CHAIN]
        abar_t, abar_s = ctx.abar_at(t), ctx.abar_at(s)
        eps = ctx.eps_fn(x, t)
        x0_hat = (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
        if s < 0:
            return x0_hat, x0_hat
        r2 = abar_t / abar_s
        sigma_t, sigma_s = chain[t], chain[s]
        gamma = 1 - r2 * sigma_s / sigma_t
        mean = (x - math.sqrt(1 - abar_t) * gamma.to(x.dtype) * eps) / math.sqrt(r2)
        variance = gamma * sigma_s if ctx.options.get("variance", "beta") == "posterior" else sigma_t - r2 * sigma_s
        z = ctx.draw_with(lambda shape, g: torch.randn(shape, generator=g, device=x.device, dtype=torch.float64), x)
        return mean + (variance.clamp_min(0).sqrt() * z).to(x.dtype), x0_hat
