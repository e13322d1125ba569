"""The optimal denoiser of a finite point set (logdiff_core/optimal.py) on cases with known answers: it ends
deterministic sampling on training points, it is mean shift at a fixed noise level, it approaches the closed-form
mixture denoiser as its points grow, and its chunked log-space weights are exact."""
import math

import numpy as np
import pytest
import torch

from logdiff_core import noise, samplers
from logdiff_core.optimal import OptimalDenoiser, deviation_curve, mean_shift, parting_step
from logdiff_core.schedules import Schedule
from test_correctness import ATOMS, LOG_DENSITIES, WEIGHTS, exact_denoiser

SCHEDULE = Schedule.from_config("linear", 1000)
WITH_DENSITY = [name for name in noise.names() if noise.get(name).has_density]


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_every_log_density_is_a_density_of_mean_0_and_variance_1(name):
    distribution = noise.get(name)
    low, high = distribution.support
    z = torch.linspace(max(low, -40), min(high, 40), 400_001, dtype=torch.float64)
    p = distribution.log_density(z).exp() * (z[1] - z[0])
    tolerance = 2e-3 if name == "student_t" else 1e-4  # Student-t's tails beyond 40 hold some variance
    assert float(p.sum()) == pytest.approx(1, abs=1e-4)
    assert float((z * p).sum()) == pytest.approx(0, abs=1e-4)
    assert float((z**2 * p).sum()) == pytest.approx(1, abs=tolerance)


def test_a_noise_without_a_density_has_no_optimal_denoiser():
    class Stable(noise.NoiseDistribution):  # as an alpha-stable law: samples, but no closed-form density
        name = "stable"

    assert not Stable().has_density and noise.get("laplace").has_density
    with pytest.raises(noise.NoDensity, match="no closed-form density"):
        OptimalDenoiser(torch.zeros(3, 2), SCHEDULE, Stable())


@pytest.mark.parametrize("name,sampler,options", [*((name, "ddim", {}) for name in WITH_DENSITY),
                                                  ("gaussian", "heun", {"restarts": 2}), ("gaussian", "ddpm", {})])
def test_sampling_with_the_optimal_denoiser_ends_on_training_points(name, sampler, options):
    """From random starts, DDIM for every noise (and Heun with restarts, and ancestral sampling, for Gaussian
    noise): every sample ends within 1e-5 of a training point (the copier's samples), and many points are
    reached, not one. It is a model like any other to the samplers."""
    points = torch.randn(30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoiser = OptimalDenoiser(points, SCHEDULE, noise.get(name))
    result = samplers.sample(denoiser, SCHEDULE, noise.get(name), (64, 4), sampler=sampler, steps=50,
                             generator=torch.Generator().manual_seed(1), **options)
    distance, nearest = torch.cdist(result.samples.double(), points).min(dim=1)
    assert float(distance.max()) < 1e-5
    assert len(torch.unique(nearest)) >= 15


def kde(y: torch.Tensor, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(y, points).pow(2) / (2 * bandwidth**2)).sum(1)


def test_gaussian_mean_shift_climbs_to_a_mode_of_the_gaussian_smoothed_density():
    """Iterating D*(a y) at a fixed t is mean shift with bandwidth s / a: the Gaussian-smoothed density rises at
    every iteration and the end point is a local maximum of it."""
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(40, 2, generator=generator, dtype=torch.float64) * 0.4 + torch.tensor([2.0, 0]),
                        torch.randn(60, 2, generator=generator, dtype=torch.float64) * 0.6 - 1])
    t = 150
    abar = float(SCHEDULE.alpha_bars64[t])
    bandwidth = math.sqrt((1 - abar) / abar)
    denoiser = OptimalDenoiser(points, SCHEDULE, noise.get("gaussian"))
    y = torch.randn(12, 2, generator=generator, dtype=torch.float64) * 2
    heights = [kde(y, points, bandwidth)]
    for _ in range(30):
        y = denoiser.denoise(math.sqrt(abar) * y, t)
        heights.append(kde(y, points, bandwidth))
    heights = torch.stack(heights)
    assert bool((heights.diff(dim=0) >= -1e-12).all())  # monotone ascent
    end, iterations = mean_shift(denoiser, y, t, iterations=2000)
    assert iterations < 2000
    for shift in torch.tensor([[1e-2, 0], [-1e-2, 0], [0, 1e-2], [0, -1e-2]], dtype=torch.float64):
        assert bool((kde(end, points, bandwidth) >= kde(end + shift, points, bandwidth)).all())


def shadow_density(name: str, y: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """The 1-D density smoothed with the noise's shadow kernel H(u) = int_u^inf v p(v) dv (H' = -u p(u)),
    numerically: sum_i H((y - x_i) / h)."""
    distribution = noise.get(name)
    low, high = distribution.support
    v = np.linspace(max(low, -20), min(high, 20), 40_001)
    integrand = v * np.exp(distribution.log_density(torch.from_numpy(v)).numpy())
    tail = np.concatenate([np.cumsum((integrand[1:] + integrand[:-1])[::-1] / 2 * (v[1] - v[0]))[::-1], [0.0]])
    return np.interp((y[:, None] - points[None]) / bandwidth, v, tail).sum(1)


@pytest.mark.parametrize("name", ["laplace", "uniform", "gumbel", "exponential", "student_t"])
def test_mean_shift_with_other_noises_climbs_the_shadow_smoothed_density_in_one_dimension(name):
    """For a non-Gaussian noise the iteration is mean shift with the noise's own kernel. In one dimension it
    climbs the data density smoothed with the kernel's shadow H (H' = -u p(u), a unit-mass density: Epanechnikov's
    for uniform noise, a shifted Gamma(2) for exponential) at every iteration, to a fixed point that is a local
    maximum of it. Exponential noise's shadow is one-sided, and its end points sit above the Gaussian ones."""
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(40, 1, generator=generator, dtype=torch.float64) * 0.5 - 1.5,
                        torch.randn(60, 1, generator=generator, dtype=torch.float64) * 0.7 + 1.0])
    t = 300
    abar = float(SCHEDULE.alpha_bars64[t])
    bandwidth = math.sqrt((1 - abar) / abar)
    density = lambda y: shadow_density(name, y[:, 0].numpy(), points[:, 0].numpy(), bandwidth)  # noqa: E731
    denoiser = OptimalDenoiser(points, SCHEDULE, noise.get(name))
    y = torch.linspace(-3, 3, 9, dtype=torch.float64)[:, None]
    heights = [density(y)]
    for _ in range(20):
        y = denoiser.denoise(math.sqrt(abar) * y, t)
        heights.append(density(y))
    assert (np.diff(heights, axis=0) >= -1e-6).all()  # monotone ascent (to the quadrature's error)
    end, iterations = mean_shift(denoiser, y, t, iterations=500)
    assert iterations < 500 and torch.allclose(denoiser.denoise(math.sqrt(abar) * end, t), end, atol=1e-8)
    assert (density(end) >= np.maximum(density(end + 5e-3), density(end - 5e-3)) - 1e-6).all()
    if name == "exponential":
        gaussian_end, _ = mean_shift(OptimalDenoiser(points, SCHEDULE, noise.get("gaussian")), end, t, 500)
        assert float(end.max()) > float(gaussian_end.max())


def gaussian_mixture_denoiser(x: torch.Tensor, abar: float, width: float) -> torch.Tensor:
    """Closed-form E[x0 | x_t] for x0 from the correctness tests' two-component mixture with components of
    standard deviation ``width`` (atoms at width 0) under Gaussian noise."""
    a, s2 = math.sqrt(abar), 1 - abar
    variance = a**2 * width**2 + s2
    log_w = WEIGHTS.log() - 0.5 * (x - a * ATOMS) ** 2 / variance - 0.5 * math.log(variance)
    means = ATOMS + a * width**2 / variance * (x - a * ATOMS)
    return (torch.softmax(log_w, dim=1) * means).sum(1, keepdim=True)


def draws(n: int, width: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    component = (torch.rand(n, generator=generator, dtype=torch.float64) > WEIGHTS[0]).long()
    return (ATOMS[component] + width * torch.randn(n, generator=generator, dtype=torch.float64))[:, None]


def clear_of_the_edges(name: str, x: torch.Tensor, abar: float) -> torch.Tensor:
    """Rows of x_t that no atom's support edge is within 0.05 of (in noise units). The correctness tests' closed
    form makes a bounded noise's edges 1e3 steep, not vertical: within 0.05 of an edge it blends two atoms, where
    the exact posterior (and the optimal denoiser's rule) gives all the weight to the one reachable."""
    low, high = noise.get(name).support
    z = (x - math.sqrt(abar) * ATOMS) / math.sqrt(1 - abar)
    excess = (low - z).clamp_min(0) + (z - high).clamp_min(0)
    return ((excess == 0) | (excess > 0.05)).all(dim=1)


def mixture_error(name: str, n: int, width: float, seed: int) -> float:
    """Largest gap, over x_t drawn from the forward process at three noise levels, between the optimal denoiser
    of n draws and the closed-form mixture denoiser."""
    denoiser = OptimalDenoiser(draws(n, width, seed), SCHEDULE, noise.get(name))
    worst = 0.0
    for t in (100, 400, 800):
        abar = float(SCHEDULE.alpha_bars64[t])
        x0 = draws(100, width, seed + 1)
        x = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise.get(name).sample(
            x0.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
        x = x[clear_of_the_edges(name, x, abar)]
        if name == "gaussian" and width > 0:
            exact = gaussian_mixture_denoiser(x, abar, width)
        else:  # the correctness tests' atom denoiser, eps -> x0
            eps = exact_denoiser(name)(x, torch.full((len(x),), t))
            exact = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        worst = max(worst, float((denoiser.denoise(x, t) - exact).abs().max()))
    return worst


@pytest.mark.parametrize("name,width", [("gaussian", 0.3), *((name, 0.0) for name in sorted(LOG_DENSITIES))])
def test_the_optimal_denoiser_of_mixture_draws_approaches_the_closed_form_mixture_denoiser(name, width):
    """More draws, nearer the closed form (mean over three draws of the points): a Gaussian mixture under Gaussian
    noise, and the two atoms of the correctness tests under each of their noises."""
    few, many = (np.mean([mixture_error(name, n, width, seed) for seed in range(3)]) for n in (100, 4000))
    assert many < few / 3 and many < 0.03


def test_chunked_weights_equal_one_pass_and_an_unreachable_point_goes_to_the_least_excess():
    """Uniform noise (bounded support): the streamed log-sum-exp over chunks of points gives the one-pass result,
    and an x_t that no point can reach is denoised to the point that needs the least noise outside the support."""
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64) * 1.2
    uniform = noise.get("uniform")
    whole, chunked = (OptimalDenoiser(points, SCHEDULE, uniform, max_elements=m).denoise(x, 200)
                      for m in (1 << 26, 64))
    assert torch.allclose(whole, chunked, atol=1e-12, rtol=0)
    far = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)  # beyond every point's support box at t = 200
    denoiser = OptimalDenoiser(points, SCHEDULE, uniform, max_elements=64)
    a, s = math.sqrt(float(SCHEDULE.alpha_bars64[200])), math.sqrt(1 - float(SCHEDULE.alpha_bars64[200]))
    excess = ((far - a * points).abs() / s - math.sqrt(3)).clamp_min(0).sum(1)
    assert torch.allclose(denoiser.denoise(far, 200), points[excess.argmin()][None])
    assert denoiser.unreachable == 1


def test_the_deviation_of_the_optimal_denoiser_from_itself_is_zero_and_parting_follows_the_minimum():
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoiser = OptimalDenoiser(points, SCHEDULE, noise.get("gaussian"))
    run = samplers.sample(denoiser, SCHEDULE, noise.get("gaussian"), (32, 2), sampler="heun", steps=10,
                          generator=torch.Generator().manual_seed(1), return_trajectories=True)
    assert max(deviation_curve(run.trajectory, run.denoised, run.timesteps, denoiser)) < 1e-4  # float32 x_t
    far = [x0 + 1.0 for x0 in run.denoised]  # a model one latent std off everywhere
    curve = deviation_curve(run.trajectory, far, run.timesteps, denoiser)
    assert curve == pytest.approx([1.0] * len(curve)) and parting_step(curve, 0.1) is None  # never near it
    assert parting_step([0.3, 0.05, 0.02, 0.2, 0.03], 0.1) == 3 and parting_step([0.3, 0.01], 0.1) is None
