"""Beta (variance) schedules, computed once and held as buffers so ``.to(device)`` moves them."""
from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("linear", "quadratic", "polynomial", "cosine")


def make_betas(kind: str = "linear", timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               power: float = 2.0, cosine_s: float = 0.008) -> torch.Tensor:
    """float64 betas of length ``timesteps``. Polynomial interpolates ``beta**(1/power)`` linearly (power 2: quadratic)."""
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r}; choose one of: {', '.join(KINDS)}")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if kind == "cosine":  # Nichol & Dhariwal: abar follows cos^2, betas capped at 0.999
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        abar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} .. {beta_end}")
    p = {"linear": 1.0, "quadratic": 2.0, "polynomial": power}[kind]
    return torch.linspace(beta_start ** (1 / p), beta_end ** (1 / p), timesteps, dtype=torch.float64) ** p


class Schedule(nn.Module):
    """``beta_t``, ``alpha_t = 1 - beta_t``, ``abar_t = prod alpha`` for t = 0 .. T-1 (t = 0 is the paper's t = 1)."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = betas.to(torch.float64)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        for name, value in {"betas": betas, "alphas": alphas, "alpha_bars": abar,
                            "sqrt_abar": abar.sqrt(), "sqrt_one_minus_abar": (1 - abar).sqrt()}.items():
            self.register_buffer(name, value.float(), persistent=False)
        # float64 copy for samplers: products over many steps drift in float32
        self.register_buffer("alpha_bars64", abar, persistent=False)

    @classmethod
    def from_config(cls, kind="linear", timesteps=1000, beta_start=1e-4, beta_end=0.02, power=2.0) -> "Schedule":
        return cls(make_betas(kind, timesteps, beta_start, beta_end, power))

    @property
    def timesteps(self) -> int:
        return self.betas.numel()

    def terminal_variance(self, data_variance: float = 1.0) -> float:
        """Var(x_T) for data of ``data_variance`` and any unit-variance noise: abar_T var + (1 - abar_T)."""
        abar = float(self.alpha_bars64[-1])
        return abar * data_variance + 1 - abar
