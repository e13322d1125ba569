"""Samplers: DDPM ancestral, DDIM (eta), a second-order probability-flow ODE sampler (Heun) and the multistep
solvers DPM-Solver++(2M), (3M) and UniPC (``solvers.py``), each with an optional Langevin corrector, optional
restarts, any number of steps <= T (or any grid of timesteps), and optional sampling and denoising trajectories.

Every random draw (``x_T``, ancestral noise, corrector noise) comes from the injected noise distribution; no
sampler calls ``torch.randn``. A sampler is one entry of ``SAMPLERS``: a step function, the options it takes (the
config's ``sample.options``, with their defaults) and its network evaluations per step. A step maps ``x`` at grid
timestep ``t`` to the next grid timestep ``s`` (``s = -1``: clean data) and returns the new point and the
model's current clean-data estimate ``x0_hat`` (the denoising trajectory of Chen et al.); it may keep what it needs
across the steps of one pass in ``ctx.state`` (the multistep solvers of ``solvers.py`` keep earlier estimates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from . import solvers
from .noise import NoiseDistribution
from .progress import progress_bar
from .schedules import Schedule
from .streams import SampleStreams

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class StepContext:
    eps_fn: EpsFn
    abar: torch.Tensor  # float64 alpha_bars on the sampling device
    noise: NoiseDistribution
    generator: torch.Generator | SampleStreams | None  # SampleStreams: each sample's draws from its own stream
    options: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # what a step keeps across one pass; emptied when a pass starts
    grid: list[int] = field(default_factory=list)  # the timesteps of the current pass (a noise's own steps read it)

    def abar_at(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.abar[t])

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        """Draws of the noise shaped like ``x``."""
        return self.draw_with(lambda shape, g: self.noise.sample(shape, generator=g, device=x.device, dtype=x.dtype), x)

    def draw_with(self, draw: Callable[[tuple, torch.Generator | None], torch.Tensor], like: torch.Tensor):
        """Draws of any law shaped like ``like`` (``draw(shape, generator)``), per sample from the streams."""
        if isinstance(self.generator, SampleStreams):
            return self.generator.draw_with(draw, like.shape)
        return draw(like.shape, self.generator)


def _x0_hat(x, eps, abar_t):
    return (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)


def ddpm_step(ctx: StepContext, x, t, s):
    """Ancestral step from t to s (strided when steps < T) with ``sigma^2 = beta`` as in DDPM and the NGLDM
    paper, or the posterior variance with ``variance='posterior'``; ``z`` from the noise distribution, 0 at the end."""
    abar_t, abar_s = ctx.abar_at(t), ctx.abar_at(s)
    alpha = abar_t / abar_s
    beta = 1 - alpha
    eps = ctx.eps_fn(x, t)
    mean = (x - beta / math.sqrt(1 - abar_t) * eps) / math.sqrt(alpha)
    if s >= 0:
        variance = beta if ctx.options["variance"] == "beta" else beta * (1 - abar_s) / (1 - abar_t)
        mean = mean + math.sqrt(variance) * ctx.draw(x)
    return mean, _x0_hat(x, eps, abar_t)


def ddim_step(ctx: StepContext, x, t, s):
    """DDIM: deterministic at ``eta = 0``, DDPM-like at ``eta = 1``."""
    abar_t, abar_s = ctx.abar_at(t), ctx.abar_at(s)
    eps = ctx.eps_fn(x, t)
    x0 = _x0_hat(x, eps, abar_t)
    eta = ctx.options["eta"]
    sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
    x_next = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
    if sigma > 0:
        x_next = x_next + sigma * ctx.draw(x)
    return x_next, x0


def heun_step(ctx: StepContext, x, t, s):
    """Heun's method on the probability-flow ODE, integrating on each step the quantity that is nearly constant
    there (the first-order step is DDIM's either way; the last step, to sigma = 0, returns ``x0_hat``):

    - noise-dominated (``abar_t < 1/2``): the clean-data estimate ``x0_hat``, which tends to the data mean, while
      ``eps`` has a part in ``1 / sigma``. With ``y = x / sqrt(1 - abar)``, ``nu = sqrt(abar / (1 - abar))``,
      ``dy/dnu = x0_hat`` for any noise distribution; the corrector takes ``x0_hat`` linear in ``log nu`` (an
      exponential integrator), exact across the decades of sigma of a cosine schedule's first step (2e4 -> 15 at
      25 steps), where a trapezoid over ``eps`` returned garbage.
    - data-dominated: ``eps`` in EDM's variables ``x~ = x / sqrt(abar)``, ``sigma = 1 / nu``, ``dx~/dsigma = eps``
      (the trapezoid rule), where ``x0_hat`` still moves along decades of ``nu``.
    """
    abar_t, abar_s = ctx.abar_at(t), ctx.abar_at(s)
    if abar_t >= 0.5:
        sigma_t, sigma_s = math.sqrt((1 - abar_t) / abar_t), math.sqrt((1 - abar_s) / abar_s)
        x_scaled = x / math.sqrt(abar_t)
        slope = ctx.eps_fn(x, t)
        x_next = x_scaled + (sigma_s - sigma_t) * slope
        if s >= 0:
            slope_next = ctx.eps_fn(x_next * math.sqrt(abar_s), s)
            x_next = x_scaled + (sigma_s - sigma_t) * 0.5 * (slope + slope_next)
        return x_next * math.sqrt(abar_s), x_scaled - sigma_t * slope
    x0 = _x0_hat(x, ctx.eps_fn(x, t), abar_t)
    if s < 0:  # one step from pure noise
        return x0, x0
    nu_t, nu_s = math.sqrt(abar_t / (1 - abar_t)), math.sqrt(abar_s / (1 - abar_s))
    y_euler = x / math.sqrt(1 - abar_t) + (nu_s - nu_t) * x0  # DDIM's step, in y
    x_predicted = y_euler * math.sqrt(1 - abar_s)
    x0_next = _x0_hat(x_predicted, ctx.eps_fn(x_predicted, s), abar_s)
    # int_{nu_t}^{nu_s} x0_hat dnu with x0_hat linear in log nu: (nu_s - nu_t) x0 + w (x0_next - x0)
    w = nu_s - (nu_s - nu_t) / math.log(nu_s / nu_t)
    return (y_euler + w * (x0_next - x0)) * math.sqrt(1 - abar_s), x0


class Option(NamedTuple):
    """A sampler option: its default and the values it may take (``choices``, or the range ``low .. high``)."""

    default: Any
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    def check(self, sampler: str, name: str, value: Any) -> Any:
        wrong = f"sample.options.{name}: {value!r} is not valid for sampler {sampler}; "
        if self.choices:
            if value not in self.choices or type(value) is not type(self.default):
                raise ValueError(wrong + f"choose one of: {', '.join(map(str, self.choices))}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (self.low is None or value >= self.low) and (self.high is None or value <= self.high)):
            raise ValueError(wrong + f"it takes a number in [{self.low}, {self.high}]")
        return type(self.default)(value)


class Sampler(NamedTuple):
    step: Callable  # (ctx, x, t, s) -> (x_next, x0_hat)
    options: dict[str, Option]  # what sample.options may set for it
    evaluations_per_step: int = 1  # network evaluations of a step (the last, to clean data, takes one)


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm_step, {"variance": Option("beta", ("beta", "posterior"))}),
    "ddim": Sampler(ddim_step, {"eta": Option(0.0, low=0.0, high=1.0)}),
    "heun": Sampler(heun_step, {}, evaluations_per_step=2),
    "dpmpp2m": Sampler(partial(solvers.dpmpp_step, order=2), {}),
    "dpmpp3m": Sampler(partial(solvers.dpmpp_step, order=3), {}),
    "unipc": Sampler(solvers.unipc_step, {"order": Option(2, (1, 2, 3)), "corrector": Option(True, (True, False))}),
}


def names() -> list[str]:
    return sorted(SAMPLERS)


def check_sampler(sampler: str, options: dict | None = None) -> dict:
    """``sampler``'s options: its defaults updated with ``options``, each checked; a one-line ValueError naming
    the sampler's options for an unknown sampler or option, or a value it does not take."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(names())}")
    known = SAMPLERS[sampler].options
    for name in options or {}:
        if name not in known:
            takes = ", ".join(known) or "no options"
            raise ValueError(f"sample.options: sampler {sampler} has no option {name!r}; it takes {takes}")
    return {name: option.check(sampler, name, (options or {}).get(name, option.default))
            for name, option in known.items()}


def steps_for(sampler: str, evaluations: int) -> int:
    """The most steps of ``sampler`` within ``evaluations`` network evaluations per sample (at least one)."""
    per_step = SAMPLERS[sampler].evaluations_per_step
    return max(1, (evaluations + per_step - 1) // per_step)


def langevin_correct(ctx: StepContext, x, t, n_steps: int, snr: float):
    """Langevin corrector ``x <- x + (delta/2) score + sqrt(delta) z`` with ``score = -eps / sqrt(1 - abar_t)``
    and the step size set from the target signal-to-noise ratio (Song et al.'s predictor-corrector sampler).

    Song et al. set ``delta = 2 alpha (snr |z| / |score|)^2`` from the batch's mean norms, which made a sample
    depend on the others in its batch; here the norms are their expectations for unit-variance noise, ``|z|^2 =
    d`` and ``|score|^2 = d / (1 - abar_t)`` (per-sample norms instead blow up where a low-dimensional score
    nears 0)."""
    abar_t = ctx.abar_at(t)
    alpha_t = abar_t / ctx.abar_at(t - 1)
    step_size = 2 * alpha_t * snr**2 * (1 - abar_t)  # = delta / 2
    for _ in range(n_steps):
        score = -ctx.eps_fn(x, t) / math.sqrt(1 - abar_t)
        x = x + step_size * score + math.sqrt(2 * step_size) * ctx.draw(x)
    return x


def timestep_grid(timesteps: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps from T-1 down to 0, evenly spaced; a single step starts from pure noise at
    T-1 (and jumps to clean data), never from t = 0, where it would return x_T unchanged."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (the schedule's T), got {steps}")
    if steps == 1:
        return [timesteps - 1]
    grid = np.unique(np.round(np.linspace(0, timesteps - 1, steps)).astype(int))[::-1]
    return [int(t) for t in grid]


@dataclass
class SampleResult:
    samples: torch.Tensor
    timesteps: list[int]
    evaluations: int  # network evaluations spent
    # x before each step (x_T first; a restart's first: the samples noised afresh), then the samples (CPU)
    trajectory: list[torch.Tensor] | None = None
    denoised: list[torch.Tensor] | None = None  # x0_hat at each step (CPU)


def _checked_grid(grid: Sequence[int], top: int, what: str) -> list[int]:
    """A grid given as timesteps: distinct, descending, from ``top`` down; a one-line ValueError otherwise."""
    grid = [int(t) for t in grid]
    if not grid or grid[0] != top or grid[-1] < 0 or any(a <= b for a, b in zip(grid, grid[1:])):
        raise ValueError(f"{what} must be distinct timesteps descending from {top} to >= 0, got {grid}")
    return grid


@torch.no_grad()
def sample(model: nn.Module | EpsFn, schedule: Schedule, noise: NoiseDistribution, shape, *,
           sampler: str = "ddim", steps: int | Sequence[int] = 50, options: dict | None = None,
           langevin_steps: int = 0, langevin_snr: float = 0.16, restarts: int = 0, restart_t: int = 200,
           restart_steps: int | Sequence[int] = 10, generator: torch.Generator | SampleStreams | None = None,
           device=None, x_T: torch.Tensor | None = None, return_trajectories: bool = False,
           progress: bool = False) -> SampleResult:
    """Draw ``shape`` samples by running ``sampler`` (with ``options``, see ``SAMPLERS``) over ``steps`` grid
    timesteps, then ``restarts`` times: noise the samples to ``restart_t`` and run ``sampler`` back over
    ``restart_steps`` grid timesteps. A number of steps is spaced evenly (``timestep_grid``); a list of timesteps
    is the grid itself (``time_schedules`` makes them), a restart's starting at ``restart_t``.

    ``model(x, t)`` predicts the noise for a batch ``x`` at integer timesteps ``t`` (shape [B]).

    Restarts are Restart sampling (Xu et al. 2023) from the clean samples: the forward process's closed form
    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with fresh noise is exact for every noise distribution
    (re-noising a noisy ``x_t`` instead would add two draws, whose sum is not of the distribution). The noise
    shrinks the gap between the sampled and the data distribution; the short way back adds less error than the
    whole way from ``T``.
    """
    options = check_sampler(sampler, options)
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    if restarts and not 0 <= restart_t < schedule.timesteps:
        raise ValueError(f"restart_t must be in 0..{schedule.timesteps - 1} (a timestep of the schedule), "
                         f"got {restart_t}")
    if restarts and isinstance(restart_steps, int) and not 1 <= restart_steps <= restart_t + 1:
        raise ValueError(f"restart_steps must be in 1..{restart_t + 1} (restart_t + 1), got {restart_steps}")
    grid = (timestep_grid(schedule.timesteps, steps) if isinstance(steps, int)
            else _checked_grid(steps, schedule.timesteps - 1, "steps"))
    restart_grid = [] if not restarts else (timestep_grid(restart_t + 1, restart_steps)
                                            if isinstance(restart_steps, int)
                                            else _checked_grid(restart_steps, restart_t, "restart_steps"))
    device = torch.device(device) if device is not None else schedule.alpha_bars64.device
    evaluations = 0

    def eps_fn(x, t):
        nonlocal evaluations
        evaluations += 1
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return model(x, t_batch).to(x.dtype)

    ctx = StepContext(eps_fn, schedule.alpha_bars64.to(device), noise, generator, options)
    x = x_T.to(device) if x_T is not None else ctx.draw(torch.empty(tuple(shape), device=device))
    grids = [grid] + [restart_grid] * restarts
    trajectory = [] if return_trajectories else None
    denoised = [] if return_trajectories else None
    step = noise.sampler_steps.get(sampler, SAMPLERS[sampler].step)  # alpha-stable brings DLPM's ancestral step
    bar = progress_bar(total=sum(map(len, grids)), desc=f"{sampler} sampling", disable=not progress, leave=False)
    for i, grid in enumerate(grids):
        ctx.state = {}
        if i:  # a restart: the clean samples noised afresh to the grid's first timestep
            abar = ctx.abar_at(grid[0])
            x = math.sqrt(abar) * x + math.sqrt(1 - abar) * ctx.draw(x)
        ctx.grid = grid
        for t, s in zip(grid, grid[1:] + [-1]):
            if return_trajectories:
                trajectory.append(x.cpu())
            x, x0_hat = step(ctx, x, t, s)
            if langevin_steps and s >= 0:
                x = langevin_correct(ctx, x, s, langevin_steps, langevin_snr)
            if return_trajectories:
                denoised.append(x0_hat.cpu())
            bar.update()
    bar.close()
    if return_trajectories:
        trajectory.append(x.cpu())
    return SampleResult(x, [t for grid in grids for t in grid], evaluations, trajectory, denoised)
