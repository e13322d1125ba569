"""Time schedules: which of the trained timesteps a sampler visits, from noise to data.

- ``uniform``: evenly spaced timesteps (DDIM's, and the pipeline's until now).
- ``edm``: Karras et al.'s ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
  with ``rho = 7``, ``sigma = sqrt((1 - abar) / abar)``, between the schedule's first and last timestep: dense where
  the noise is small.
- ``fitted``: fitted to the trained model's own trajectories by dynamic programming (Chen et al. 2024, "On the
  Trajectory Regularity of ODE-based Diffusion Sampling"): a few warm-up trajectories are solved finely over
  ``CANDIDATES`` timesteps; the cost of a step between two of them is how far one first-order (DDIM) step lands
  from the fine trajectory, averaged over the warm-up samples (the last step, to clean data, lands on the model's
  clean-data estimate, priced against the fine trajectory's end); for any number of steps the schedule is the path
  of least total cost. The fit (the candidates and their cost matrix) is stored with the model; the path is found when
  sampling, in microseconds, for whatever number of steps is asked.

Every grid is a list of distinct timesteps, descending, its first the schedule's last timestep (or a restart's);
the uniform and EDM grids end at timestep 0, the fitted one where its last step costs least.
The models take integer timesteps, so the continuous schedules are rounded to the nearest timestep in
log-sigma (and spread apart where rounding would merge two).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import samplers
from .noise import NoiseDistribution
from .schedules import Schedule

NAMES = ("uniform", "edm", "fitted")
EDM_RHO = 7.0
CANDIDATES = 100  # timesteps the fitted schedule chooses from (an edm grid of this many)
WARMUP_SAMPLES = 256  # warm-up trajectories behind the fit
TEACHER = "dpmpp2m"  # solves the warm-up trajectories over all the candidates
FIT_CHUNK = 32  # warm-up trajectories measured at a time: ~30 MB of float64 at CIFAR-10's latent size, not ~1 GB


def names() -> tuple[str, ...]:
    return NAMES


def _sigmas(abar: torch.Tensor) -> np.ndarray:
    abar = abar.double().cpu().numpy()
    return np.sqrt((1 - abar) / abar)


def _distinct(timesteps: np.ndarray, start: int) -> list[int]:
    """Rounded timesteps made distinct and descending from ``start`` to 0: each at most one below the previous and
    at least the number still to come."""
    out, n = [], len(timesteps)
    for i, t in enumerate(timesteps):
        upper = start if i == 0 else out[-1] - 1
        out.append(int(min(max(t, n - 1 - i), upper)))
    return out


def edm(abar: torch.Tensor, steps: int, start: int | None = None, rho: float = EDM_RHO) -> list[int]:
    """``steps`` timesteps from ``start`` (default: the last) to 0, spaced as EDM's rho schedule in sigma."""
    start = len(abar) - 1 if start is None else start
    if not 1 <= steps <= start + 1:
        raise ValueError(f"steps must be in 1..{start + 1}, got {steps}")
    if steps == 1:
        return [start]
    log_sigma = np.log(_sigmas(abar[: start + 1]))
    ramp = np.linspace(0, 1, steps)
    hi, lo = math.exp(log_sigma[start] / rho), math.exp(log_sigma[0] / rho)
    wanted = np.log((hi + ramp * (lo - hi)) ** rho)
    nearest = np.abs(log_sigma[None, :] - wanted[:, None]).argmin(axis=1)  # log sigma rises with t
    return _distinct(nearest, start)


@dataclass
class FittedSchedule:
    """The fit: candidate timesteps (descending, from the schedule's last timestep to 0) and ``cost[i, j]``, the
    mean error of one first-order step from candidate ``i`` to candidate ``j > i`` (inf otherwise), column
    ``len(candidates)`` that of the last step, from ``i`` to clean data, in the data's units (distances between
    points ``x / sqrt(abar)``)."""

    candidates: list[int]
    cost: np.ndarray

    def grid(self, steps: int, start: int | None = None) -> list[int]:
        """The ``steps`` candidates of least total cost from the largest candidate <= ``start`` (default: the
        first; snapped to ``start``), the last step to clean data included: the path ends where that jump costs
        least, not at timestep 0 as the uniform and EDM grids do, whose last evaluation (at sigma 0.01) moves the
        samples by nothing measurable (docs/sampling.md)."""
        m = len(self.candidates)
        first = 0 if start is None else next((i for i, t in enumerate(self.candidates) if t <= start), m - 1)
        if steps > m - first:
            raise ValueError(f"the fitted time schedule has {m - first} candidate timesteps from "
                             f"{self.candidates[first]} down; ask for at most that many steps, got {steps}")
        # best[j]: least cost of reaching candidate j from `first` in k steps; parents[k][j]: from where
        best = np.full(m, np.inf)
        best[first] = 0.0
        parents = []
        for _ in range(steps - 1):
            totals = best[:, None] + self.cost[:, :m]  # from i (rows) to j (columns)
            parents.append(totals.argmin(axis=0))
            best = totals.min(axis=0)
        path = [int(np.argmin(best + self.cost[:, m]))]
        for parent in reversed(parents):
            path.append(int(parent[path[-1]]))
        grid = [self.candidates[i] for i in reversed(path)]
        return [grid[0] if start is None else start, *grid[1:]]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"candidates": torch.tensor(self.candidates, dtype=torch.int64),
                "cost": torch.as_tensor(self.cost, dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "FittedSchedule":
        return cls([int(t) for t in tensors["candidates"]], tensors["cost"].double().numpy())


@torch.no_grad()
def fit(model, schedule: Schedule, noise: NoiseDistribution, shape: tuple[int, ...], *, seed: int = 0,
        samples: int = WARMUP_SAMPLES, candidates: int = CANDIDATES, device=None) -> FittedSchedule:
    """Fit the schedule to ``samples`` warm-up trajectories of ``model`` (as ``samplers.sample`` takes it) from
    ``noise`` of per-sample ``shape``, solved by the teacher over ``candidates`` edm timesteps (that many network
    evaluations of ``samples`` samples)."""
    abar = schedule.alpha_bars64
    grid = edm(abar, min(candidates, schedule.timesteps))
    generator = torch.Generator(device=device or abar.device).manual_seed(seed)
    run = samplers.sample(model, schedule, noise, (samples, *shape), sampler=TEACHER, steps=grid,
                          generator=generator, device=device, return_trajectories=True)
    points = torch.stack(run.trajectory[:-1]).flatten(2)  # [M, samples, D]: x at each candidate
    estimates = torch.stack(run.denoised).flatten(2)  # x0_hat there
    final = run.trajectory[-1].flatten(1)
    a = torch.tensor([float(abar[t]) for t in grid], dtype=torch.float64, device=points.device)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    m = len(grid)
    total = np.zeros((m, m + 1))
    for chunk in torch.arange(samples, device=points.device).split(FIT_CHUNK):  # float64, a chunk at a time
        x, x0 = points[:, chunk].double(), estimates[:, chunk].double()
        eps = (x - alpha[:, None, None] * x0) / sigma[:, None, None]
        total[:, :m] += _step_errors(x0, eps, x / alpha[:, None, None], sigma / alpha)
        total[:, m] += (x0 - final[chunk].double()).norm(dim=2).sum(dim=1).cpu().numpy()  # to clean data: x0_hat
    cost = total / samples
    cost[:, :m][np.tril_indices(m)] = np.inf
    return FittedSchedule(grid, cost)


def _step_errors(estimates: torch.Tensor, eps: torch.Tensor, scaled: torch.Tensor, ratio: torch.Tensor) -> np.ndarray:
    """``errors[i, j]``: the sum over samples of ``|x0_hat_i + ratio_j eps_i - scaled_j|``, the error of the DDIM
    step from candidate ``i`` to candidate ``j`` in units of ``x / sqrt(abar)`` (inputs [M, samples, D]).

    The squared norm is expanded into inner products, so the [M, M, samples, D] differences are never held: two
    batched matrix products instead of ~M^2 / 2 passes over samples x D values (CIFAR-10's 100 candidates, 256
    samples of 1,024 values: 30 s -> under 1 s on a 2-core CPU). float64 keeps the cancellation harmless."""
    e, n, q = (x.transpose(0, 1) for x in (estimates, eps, scaled))  # [samples, M, D]
    cross_eq, cross_nq = e @ q.transpose(1, 2), n @ q.transpose(1, 2)  # [samples, i, j]
    norms = {name: (x * x).sum(dim=2)[:, :, None] for name, x in (("e", e), ("n", n))}  # [samples, i, 1]
    en = (e * n).sum(dim=2)[:, :, None]
    qq = (q * q).sum(dim=2)[:, None, :]  # [samples, 1, j]
    r = ratio[None, None, :]
    squared = norms["e"] + qq + r * r * norms["n"] - 2 * cross_eq + 2 * r * en - 2 * r * cross_nq
    return squared.clamp_min(0).sqrt().sum(dim=0).cpu().numpy()


def grid(name: str, abar: torch.Tensor, steps: int, start: int | None = None,
         fitted: FittedSchedule | None = None) -> list[int]:
    """The ``steps`` timesteps of schedule ``name`` from ``start`` (default: the last timestep) to data."""
    if start is not None and not 0 <= start < len(abar):
        raise ValueError(f"a grid must start at a timestep of the schedule, 0..{len(abar) - 1}; got {start}")
    if name == "uniform":
        top = len(abar) - 1 if start is None else start
        return samplers.timestep_grid(top + 1, steps)
    if name == "edm":
        return edm(abar, steps, start)
    if name == "fitted":
        if fitted is None:
            raise ValueError("the fitted time schedule needs a fit: sample through a trained model (it stores one)")
        return fitted.grid(steps, start)
    raise ValueError(f"unknown time schedule {name!r}; choose one of: {', '.join(NAMES)}")
