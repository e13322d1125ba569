"""Few-step sampling against closed forms: the multistep solvers' orders on a Gaussian mixture with its exact
denoiser, the time schedules (EDM's, and the one fitted by dynamic programming), per-sample random streams and the
sampler options."""
import functools
import itertools
import math

import numpy as np
import pytest
import torch

from logdiff_core import noise, samplers, streams, time_schedules
from logdiff_core.schedules import Schedule

SCHEDULE = Schedule.from_config("linear", 1000)
ABAR = SCHEDULE.alpha_bars64
MEANS = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
WEIGHTS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)


def mixture_denoiser(x, t):
    """The exact E[eps | x_t] for the three-component Gaussian mixture above and Gaussian noise."""
    abar = ABAR[t][:, None].to(x.dtype)
    var = abar * STDS**2 + 1 - abar
    log_p = WEIGHTS.log() - 0.5 * (x - abar.sqrt() * MEANS) ** 2 / var - 0.5 * var.log()
    return (torch.softmax(log_p, 1) * (1 - abar).sqrt() * (x - abar.sqrt() * MEANS) / var).sum(1, keepdim=True)


X_T = noise.get("gaussian").sample((500, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
END = 300  # the solves stop here, where neighbouring timesteps are close in log-SNR (near 0 they are not)


def solve(sampler: str, grid: list[int]) -> torch.Tensor:
    result = samplers.sample(mixture_denoiser, SCHEDULE, noise.get("gaussian"), X_T.shape, sampler=sampler,
                             steps=grid, x_T=X_T, return_trajectories=True)
    return result.trajectory[-2]  # x at the grid's last timestep, before the jump to clean data


@functools.cache
def reference() -> torch.Tensor:
    return solve("dpmpp3m", list(range(999, END - 1, -1)))


def log_snr_grid(steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced in log-SNR from the last to ``END``."""
    log_snr = (ABAR / (1 - ABAR)).log().numpy()
    return [int(np.abs(log_snr - w).argmin()) for w in np.linspace(log_snr[-1], log_snr[END], steps)]


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("heun", 2), ("dpmpp2m", 2), ("dpmpp3m", 3), ("unipc", 3)])
def test_each_solver_converges_at_its_order(sampler, order):
    """Halving the step size divides the error by 2^order: DPM-Solver++(2M) second order, (3M) third, UniPC-2 with
    its corrector third (measured 2.1-2.2, 3.1-3.2, 3.1-3.5)."""
    errors = [(solve(sampler, log_snr_grid(k)) - reference()).abs().mean().item() for k in (6, 12, 24)]
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(order - 0.3 < slope < order + 0.7 for slope in slopes), slopes


@pytest.mark.parametrize("sampler", ["dpmpp2m", "dpmpp3m", "unipc"])
@pytest.mark.parametrize("name", ["uniform", "exponential"])
def test_multistep_solvers_recover_the_atom_weights_for_bounded_noise(sampler, name):
    """The solvers draw only x_T from the noise: the ODE they solve keeps the forward marginals for any noise, as
    DDIM's does (test_correctness), here for the two noises whose exact denoisers jump at their support's edge
    (50 steps: 0.295 and 0.299-0.301; laplace and gaussian 0.299 and 0.305)."""
    from test_correctness import recovered_weight

    assert recovered_weight(name, sampler, 50) == pytest.approx(0.3, abs=0.012)


def test_edm_grid_is_rho_spaced_and_every_grid_ends_at_zero():
    grid = time_schedules.edm(ABAR, 10)
    assert grid[0] == 999 and grid[-1] == 0 and grid == sorted(set(grid), reverse=True)
    sigma = ((1 - ABAR) / ABAR).sqrt().numpy()[grid] ** (1 / 7)
    assert np.allclose(np.diff(sigma), np.diff(sigma).mean(), rtol=0.05)  # evenly spaced in sigma^(1/rho)
    assert time_schedules.grid("uniform", ABAR, 10) == samplers.timestep_grid(1000, 10)
    restart = time_schedules.grid("edm", ABAR, 6, start=200)
    assert restart[0] == 200 and restart[-1] == 0 and len(set(restart)) == 6
    assert len(set(time_schedules.edm(ABAR, 200))) == 200  # rounding never merges two timesteps


def test_the_fitted_path_is_the_cheapest_and_starts_where_asked():
    rng = np.random.default_rng(0)
    m = 9
    cost = np.triu(rng.uniform(0.1, 1.0, (m, m + 1)), 1)  # the last column: the step to clean data
    cost[cost == 0] = np.inf
    cost[:, m] = rng.uniform(0.1, 1.0, m)
    fitted = time_schedules.FittedSchedule([800 - 100 * i for i in range(m)], cost)
    for steps in (1, 2, 3, 5):
        paths = ([0, *rest] for rest in itertools.combinations(range(1, m), steps - 1))
        best = min(paths, key=lambda p: sum(cost[a, b] for a, b in zip(p, p[1:])) + cost[p[-1], m])
        assert fitted.grid(steps) == [fitted.candidates[i] for i in best]
    restart = fitted.grid(3, start=450)
    assert restart[0] == 450 and min(restart[1:]) >= 0 and max(restart[1:]) < 400
    with pytest.raises(ValueError, match="has 9 candidate timesteps from 800 down"):
        fitted.grid(10)


def test_the_step_errors_expanded_into_inner_products_equal_the_direct_differences():
    """cost[i, j] = sum over samples of |x0_i + r_j eps_i - q_j|, computed without the [M, M, samples, D] tensor."""
    g = torch.Generator().manual_seed(0)
    m, samples, d = 6, 5, 7
    x0, eps, q = (torch.randn(m, samples, d, generator=g, dtype=torch.float64) for _ in range(3))
    ratio = torch.rand(m, generator=g, dtype=torch.float64) * 3
    direct = np.array([[float((x0[i] + ratio[j] * eps[i] - q[j]).norm(dim=1).sum()) for j in range(m)]
                       for i in range(m)])
    assert np.allclose(time_schedules._step_errors(x0, eps, q, ratio), direct, rtol=1e-12, atol=1e-12)


def test_the_fitted_schedule_beats_uniform_and_edm_at_few_steps():
    """Fitted to 256 warm-up trajectories of the exact denoiser, the schedule's five steps land nearer the
    fine solution than the uniform or EDM ones, with DDIM (whose steps it prices) and UniPC (measured: DDIM 0.19
    against 0.32 and 0.46; UniPC 0.07 against 0.28 and 0.38)."""
    fitted = time_schedules.fit(mixture_denoiser, SCHEDULE, noise.get("gaussian"), (1,), seed=1)
    assert fitted.candidates[0] == 999 and fitted.candidates[-1] == 0 and np.isinf(fitted.cost[3, 2])
    assert np.isfinite(fitted.cost[:, -1]).all()  # the step to clean data, from anywhere
    fine = samplers.sample(mixture_denoiser, SCHEDULE, noise.get("gaussian"), X_T.shape, sampler="dpmpp3m",
                           steps=time_schedules.edm(ABAR, 500), x_T=X_T).samples

    def error(sampler, grid):
        few = samplers.sample(mixture_denoiser, SCHEDULE, noise.get("gaussian"), X_T.shape, sampler=sampler,
                              steps=grid, x_T=X_T).samples
        return (few - fine).abs().mean().item()

    for sampler in ("ddim", "unipc"):
        errors = {name: error(sampler, time_schedules.grid(name, ABAR, 5, fitted=fitted))
                  for name in time_schedules.NAMES}
        assert errors["fitted"] < 0.8 * min(errors["uniform"], errors["edm"]), (sampler, errors)


def test_a_sample_depends_on_its_seed_and_index_only():
    """Ancestral sampling draws at every step: one batch of 100 and batches of 37 and 63 give the same samples."""
    def run(first, count, seed=3):
        return samplers.sample(lambda x, t: 0.1 * x, SCHEDULE, noise.get("laplace"), (count, 2, 3), sampler="ddpm",
                               steps=20, langevin_steps=1, generator=streams.SampleStreams(seed, first, count)).samples
    whole = run(0, 100)
    assert torch.equal(torch.cat([run(0, 37), run(37, 63)]), whole)
    assert torch.equal(run(90, 10), whole[90:]) and not torch.equal(run(0, 100, seed=4), whole)
    assert not torch.equal(whole[0], whole[64])  # blocks differ


def test_sampler_options_are_one_checked_mapping():
    assert samplers.check_sampler("ddim", {"eta": 1}) == {"eta": 1.0}
    assert samplers.check_sampler("unipc") == {"order": 2, "corrector": True}
    with pytest.raises(ValueError, match="sampler heun has no option 'eta'; it takes no options"):
        samplers.check_sampler("heun", {"eta": 0.5})
    with pytest.raises(ValueError, match=r"sample.options.eta: 2 is not valid for sampler ddim; it takes a number"):
        samplers.check_sampler("ddim", {"eta": 2})
    with pytest.raises(ValueError, match="choose one of: 1, 2, 3"):
        samplers.check_sampler("unipc", {"order": 4})
    assert [samplers.steps_for(name, 10) for name in ("ddim", "heun", "unipc")] == [10, 5, 10]


def test_config_takes_options_and_time_schedule_and_names_a_moved_key():
    from tasks import config

    cfg = config.load("demo", ["sample.sampler=ddim", "sample.options={eta: 0.5}", "sample.time_schedule=edm"])
    assert cfg.sample.options == {"eta": 0.5} and cfg.sample.time_schedule == "edm"
    with pytest.raises(config.ConfigError, match=r"config key 'sample.eta' moved: write sample.options=\{eta: ...\}"):
        config.load("demo", ["sample.eta=0.5"])
    with pytest.raises(config.ConfigError, match="sampler dpmpp2m has no option 'eta'"):
        config.load("demo", ["sample.sampler=dpmpp2m", "sample.options={eta: 0.5}"])
    with pytest.raises(config.ConfigError, match="sample.time_schedule: 'karras' is not one of"):
        config.load("demo", ["sample.time_schedule=karras"])
