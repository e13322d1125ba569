"""The forward process and the epsilon-prediction objective, with noise from any registered distribution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .noise import NoiseDistribution
from .schedules import Schedule


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``values[t]`` and shape it to broadcast over ``like``'s non-batch dimensions."""
    return values[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (one step of the closed-form forward process)."""
    return _per_sample(schedule.sqrt_abar, t, x0) * x0 + _per_sample(schedule.sqrt_one_minus_abar, t, x0) * eps


def predict_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The denoising-trajectory point ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    return (x_t - _per_sample(schedule.sqrt_one_minus_abar, t, x_t) * eps) / _per_sample(schedule.sqrt_abar, t, x_t)


def training_loss(model: nn.Module, schedule: Schedule, noise: NoiseDistribution, x0: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE between the drawn noise and the model's prediction at a uniformly drawn timestep."""
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    eps = noise.sample(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    prediction = model(q_sample(schedule, x0, t, eps), t)
    return F.mse_loss(prediction.float(), eps.float())
