"""The optimal denoiser of a finite point set, for every noise distribution with a density, and what it measures.

A model trained to minimise the noise-prediction loss on N points ``x_i`` is, at its optimum, the posterior mean of
the points under the forward process ``x_t = a x_0 + s eps`` (``a = sqrt(abar_t)``, ``s = sqrt(1 - abar_t)``,
``eps`` i.i.d. per coordinate from the noise's density ``p``)::

    D*(x_t) = sum_i w_i x_i,    log w_i = sum_d log p((x_t[d] - a x_i[d]) / s) - logsumexp over i

For Gaussian noise the weights are a softmax of ``-|x_t - a x_i|^2 / 2 s^2``; for Laplace an L1 kernel; for
noises of bounded support (uniform, centred exponential) a point whose noise would have to leave the support has
weight zero. ``OptimalDenoiser`` computes the weights in log space, in float64, over chunks of points (memory
bounded by ``max_elements``) with a running log-sum-exp, and predicts the noise as a model does, ``eps(x, t)``,
so every sampler takes it in a model's place.

**When no point is reachable** (bounded support: every point needs noise outside the support in some coordinate,
which happens off the data, e.g. where a trained model's trajectory wanders), the posterior is undefined. The
rule: the weight goes to the points that need the *least* noise outside the support (the excess, summed over
coordinates, in units of the noise), and among those by the density at the nearest point of the support. This is
the limit of the density's edges made ever steeper (the closed-form mixture denoiser of the correctness tests
takes the same limit); where a point is reachable, it is the exact posterior.

**Mean shift.** At a fixed ``t``, ``y <- D*(a y)`` is mean shift over the points with the kernel ``p(u / h)``,
``h = s / a``: for Gaussian noise, the Gaussian-kernel mean shift that climbs to a mode of the data density
smoothed with ``N(0, h^2)`` (``mean_shift``). For other noises its fixed points solve ``sum_i p((y - x_i) / h)
(x_i - y) = 0``: in one dimension the stationary points of the density smoothed with the noise's *shadow*
kernel ``H(u) = int_u^inf v p(v) dv`` (``H' = -u p``; a unit-mass density since the noise has unit variance: the
Gaussian for Gaussian noise, Epanechnikov's parabola for uniform noise, a Gamma(2) shifted by -1 for exponential
noise, ``(1 + sqrt(2)|u|) exp(-sqrt(2)|u|) / 2`` for Laplace); in several dimensions a product kernel other than the
Gaussian is not radial, and the iteration follows no smoothed density's gradient (tests/test_optimal.py).

**Empirical score deviation** (``deviation_curve``): along a trained model's sampling trajectory, how far its
clean-data estimate is from ``D*``'s at the same ``x_t``. Where it is near zero the model denoises as the optimal
denoiser does, so it copies; a model generalises only as far as it departs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .noise import NoiseDistribution, NoDensity
from .schedules import Schedule


class OptimalDenoiser(nn.Module):
    """The posterior-mean denoiser of ``points`` [N, ...] under ``schedule`` and ``noise``; called as a model,
    ``denoiser(x, t)`` returns the noise prediction ``(x - a D*(x)) / s`` for a batch ``x`` at timesteps ``t``."""

    def __init__(self, points: torch.Tensor, schedule: Schedule, noise: NoiseDistribution,
                 max_elements: int = 1 << 22):
        super().__init__()
        if not noise.has_density:
            raise NoDensity(f"{noise.name} noise has no closed-form density: no optimal denoiser can be built for it")
        if len(points) == 0:
            raise ValueError("the optimal denoiser needs at least one point")
        self.noise = noise
        self.max_elements = max_elements
        self.register_buffer("points", points.detach().flatten(1).to(torch.float64))
        self.register_buffer("abar", schedule.alpha_bars64.detach().clone())
        self.unreachable = 0  # of the rows denoised so far, how many reached no point (bounded-support noise)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t].reshape(-1, *([1] * (x.dim() - 1)))
        x0 = self.denoise(x, t)
        return ((x.double() - abar.sqrt() * x0.double()) / (1 - abar).sqrt()).to(x.dtype)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``D*(x_t)`` for a batch ``x`` at timesteps ``t`` (one int, or one per row), in ``x``'s dtype."""
        t = torch.as_tensor(t, device=x.device).expand(len(x)) if torch.as_tensor(t).dim() == 0 else t
        flat = x.detach().flatten(1).to(torch.float64)
        out = torch.empty_like(flat)
        for step in torch.unique(t).tolist():
            rows = (t == step).nonzero().flatten()
            out[rows] = self._posterior_mean(flat[rows], float(self.abar[step]))
        return out.reshape(x.shape).to(x.dtype)

    def _posterior_mean(self, x: torch.Tensor, abar: float) -> torch.Tensor:
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        dim = x.shape[1]
        rows_per_chunk = max(1, self.max_elements // (dim * min(len(self.points), 4096)))
        return torch.cat([self._rows(x[i:i + rows_per_chunk], a, s) for i in range(0, len(x), rows_per_chunk)])

    def _rows(self, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
        """Posterior mean of a few rows, streaming over chunks of points with a running log-sum-exp, keyed first by
        the least excess outside the noise's support (0 where a point is reachable), then by the log-density."""
        n, dim = len(x), x.shape[1]
        low, high = self.noise.support
        bounded = math.isfinite(low) or math.isfinite(high)
        gaussian = self.noise.name == "gaussian"
        best = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)  # least excess so far
        top = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)  # running max of the log-weights
        total = torch.zeros(n, dtype=x.dtype, device=x.device)
        weighted = torch.zeros_like(x)
        chunk = max(1, self.max_elements // (n * (1 if gaussian else dim)))
        for start in range(0, len(self.points), chunk):
            points = self.points[start:start + chunk]
            if gaussian:  # the quadratic kernel from one matrix product, no [n, chunk, dim] tensor
                squared = x.pow(2).sum(1, keepdim=True) - 2 * a * x @ points.T + a**2 * points.pow(2).sum(1)
                log_w = -0.5 * squared.clamp_min(0) / s**2
                excess = torch.zeros_like(log_w)
            else:
                z = (x[:, None, :] - a * points[None]) / s
                inside = z.clamp(low, high) if bounded else z
                log_w = self.noise.log_density(inside).sum(-1)
                excess = ((z - inside).abs().sum(-1) if bounded else torch.zeros_like(log_w))
            chunk_best = excess.min(1).values
            improved = chunk_best < best
            best = torch.where(improved, chunk_best, best)
            top, total = torch.where(improved, -math.inf, top), torch.where(improved, 0.0, total)
            weighted[improved] = 0
            log_w = torch.where(excess <= best[:, None], log_w, -math.inf)
            new_top = torch.maximum(top, log_w.max(1).values)
            safe_top = torch.where(torch.isfinite(new_top), new_top, 0.0)
            rescale = torch.exp(top - safe_top)
            weights = torch.exp(log_w - safe_top[:, None])
            total = total * rescale + weights.sum(1)
            weighted = weighted * rescale[:, None] + weights @ points
            top = new_top
        self.unreachable += int((best > 0).sum())
        if not bool((total > 0).all()):  # every log-weight -inf: saturated densities, a uniform vote
            raise FloatingPointError("the optimal denoiser's weights underflowed for every point")
        return weighted / total[:, None]


@torch.no_grad()
def mean_shift(denoiser: OptimalDenoiser, y: torch.Tensor, t: int, iterations: int = 100,
               tolerance: float = 1e-10) -> tuple[torch.Tensor, int]:
    """Iterate ``y <- D*(a y)`` at the fixed timestep ``t`` (mean shift with bandwidth ``s / a``) until no row moves
    more than ``tolerance``; returns the end points and the iterations taken."""
    a = math.sqrt(float(denoiser.abar[t]))
    y = y.double()
    for iteration in range(1, iterations + 1):
        moved = denoiser.denoise(a * y, t)
        done = (moved - y).flatten(1).norm(dim=1).max() <= tolerance
        y = moved
        if done:
            return y, iteration
    return y, iterations


@torch.no_grad()
def deviation_curve(trajectory: list[torch.Tensor], denoised: list[torch.Tensor], timesteps: list[int],
                    optimal: OptimalDenoiser, scale: float = 1.0) -> list[float]:
    """The empirical score deviation per sampling step: RMS over samples and coordinates of the model's clean-data
    estimate (``denoised[i]``, made at ``trajectory[i]``, timestep ``timesteps[i]``) minus the optimal denoiser's
    at the same point, in units of ``scale`` (the latents' standard deviation)."""
    return [float((model.double() - optimal.denoise(x, t).double()).pow(2).mean().sqrt()) / scale
            for x, model, t in zip(trajectory, denoised, timesteps)]


def parting_step(curve: list[float], threshold: float) -> int | None:
    """Where a model parts from the optimal denoiser: the first step after the deviation's minimum at which it
    exceeds ``threshold``. Near pure noise both estimate little more than the data mean, and what deviation there
    is there is the model's error in that estimate; it then tracks the optimal denoiser (the minimum) until it
    parts. None if it never comes within ``threshold``, or never leaves."""
    closest = min(range(len(curve)), key=curve.__getitem__)
    if curve[closest] > threshold:
        return None
    return next((i for i in range(closest, len(curve)) if curve[i] > threshold), None)
