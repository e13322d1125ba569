"""The forward process and the epsilon-prediction objective, with noise from any registered distribution."""
from __future__ import annotations

import torch
from torch import nn

from .noise import NoiseDistribution
from .schedules import Schedule


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``values[t]`` and shape it to broadcast over ``like``'s non-batch dimensions."""
    return values[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (one step of the closed-form forward process)."""
    return _per_sample(schedule.sqrt_abar, t, x0) * x0 + _per_sample(schedule.sqrt_one_minus_abar, t, x0) * eps


class EpsPreconditioner(nn.Module):
    """``eps(x_t, t) = c_skip(t) x_t + c_out(t) F(x_t, t)``: preconditioning kept apart from the backbone ``F``
    (as in EDM), here for epsilon-prediction.

    ``c_skip = sqrt(1 - abar) / (abar s^2 + 1 - abar)`` is the best linear estimate of the noise from ``x_t`` for
    data of variance ``s^2`` and *any* unit-variance noise, and ``c_out`` scales the remainder to unit variance.
    Near pure noise the backbone's errors are then shrunk by ``c_out ~ sqrt(abar)`` instead of being amplified
    by ``1 / sqrt(abar)`` in the clean-data estimate, which is what makes few-step samplers stable.
    """

    def __init__(self, backbone: nn.Module, schedule: Schedule, data_std: float = 1.0):
        super().__init__()
        self.backbone = backbone
        abar = schedule.alpha_bars64
        var_x = abar * data_std**2 + 1 - abar
        c_skip = (1 - abar).sqrt() / var_x
        c_out = (1 - (1 - abar) / var_x).clamp_min(0).sqrt()  # std of eps - c_skip x_t
        self.register_buffer("c_skip", c_skip.float(), persistent=False)
        self.register_buffer("c_out", c_out.float(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x, t)
        return _per_sample(self.c_skip, t, out) * x + _per_sample(self.c_out, t, out) * out


def loss_weights(schedule: Schedule, t: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor | None:
    """Per-sample weights of the noise-prediction loss: Min-SNR-gamma (Hang et al. 2023), ``min(SNR, gamma) /
    SNR``, which stops the nearly clean timesteps (high signal-to-noise ratio, of little use to samples) from
    dominating the gradient; None for the plain, unweighted loss."""
    if min_snr_gamma is None:
        return None
    snr = schedule.alpha_bars[t] / (1 - schedule.alpha_bars[t])
    return snr.clamp(max=min_snr_gamma) / snr


def training_loss(model: nn.Module, schedule: Schedule, noise: NoiseDistribution, x0: torch.Tensor,
                  generator: torch.Generator | None = None, min_snr_gamma: float | None = None) -> torch.Tensor:
    """The noise's per-sample loss (the MSE, for all but alpha-stable) between the drawn noise and the model's
    prediction at a uniformly drawn timestep (weighted by ``loss_weights``)."""
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    eps = noise.sample(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    prediction = model(q_sample(schedule, x0, t, eps), t)
    per_sample = noise.per_sample_loss(prediction, eps)
    weights = loss_weights(schedule, t, min_snr_gamma)
    return per_sample.mean() if weights is None else (weights * per_sample).mean()
