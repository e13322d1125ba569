"""Heavy-tailed noise against known answers: alpha-stable noise with DLPM's forward law and sampler
(logdiff_core.alpha_stable), and the generalised Gaussian at large shapes."""
import functools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from logdiff_core import noise, samplers
from logdiff_core.alpha_stable import SUBORDINATOR_CHAIN, log_positive_stable
from logdiff_core.diffusion import EpsPreconditioner, training_loss
from logdiff_core.networks import build_denoiser
from logdiff_core.schedules import Schedule

SCHEDULE = Schedule.from_config("linear", 1000)
SCALE = 2**-0.5  # the SaS scale of the registry's alpha-stable noise: the standard normal at alpha = 2


def stable(alpha: float) -> noise.NoiseDistribution:
    return noise.get("alpha_stable", alpha=alpha)


@functools.lru_cache
def _tabled_stable_cdf(alpha: float):
    """scipy's SaS CDF (scale 1) on a fine grid: each of its values costs milliseconds, a KS test needs thousands."""
    grid = np.concatenate([-np.geomspace(1e4, 5, 150), np.linspace(-5, 5, 401)[1:-1], np.geomspace(5, 1e4, 150)])
    return grid, stats.levy_stable.cdf(grid, alpha, 0)


def stable_ks_pvalue(x: np.ndarray, alpha: float, scale: float) -> float:
    """p-value of the KS test of ``x`` against SaS(alpha) of ``scale`` (interpolated; off by < 1e-5)."""
    grid, cdf = _tabled_stable_cdf(alpha)
    return stats.kstest(x, lambda v: np.interp(v / scale, grid, cdf)).pvalue


def test_the_subordinator_has_the_positive_stable_laplace_transform():
    """Kanter's representation, checked where it is defined: E exp(-s A) = exp(-s^rho)."""
    for rho in (0.6, 0.9, 0.995):
        a = log_positive_stable(rho, (100_000,), torch.Generator().manual_seed(0)).exp()
        for s in (0.1, 1.0, 4.0):
            assert torch.exp(-s * a).mean().item() == pytest.approx(math.exp(-s**rho), abs=0.005)


@pytest.mark.parametrize("alpha", [1.2, 1.8])
def test_alpha_stable_noise_passes_a_stable_goodness_of_fit_test(alpha):
    x = stable(alpha).sample((1000,), generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    assert stable_ks_pvalue(x, alpha, SCALE) > 1e-3
    # the test has power: the textbook scale 1 (N(0, 2) at alpha = 2) is rejected on the same draws
    assert stable_ks_pvalue(x, alpha, 1.0) < 1e-4


@pytest.mark.parametrize("params", [{"alpha": 1.0}, {"alpha": 2.5}, {"alpha": math.nan}, {"alpha": "2"}])
def test_alpha_outside_one_to_two_is_a_one_line_error(params):
    with pytest.raises(ValueError, match="alpha_stable needs") as err:
        noise.get("alpha_stable", **params)
    assert "\n" not in str(err.value)


def test_alpha_2_is_the_gaussian_model_bit_for_bit():
    """The same seeds give the same noise, the same schedule object, the same trained weights and the same samples
    from every sampler: at alpha = 2 the subordinator is the constant 1 and nothing else is drawn."""
    gaussian, two = noise.get("gaussian"), stable(2.0)
    assert torch.equal(gaussian.sample((64, 3), generator=torch.Generator().manual_seed(0)),
                       two.sample((64, 3), generator=torch.Generator().manual_seed(0)))
    assert two.forward_schedule(SCHEDULE) is SCHEDULE and two.sampler_steps == gaussian.sampler_steps == {}
    data = torch.randn(256, 3, generator=torch.Generator().manual_seed(1))
    trained = []
    for dist in (gaussian, two):
        torch.manual_seed(0)
        schedule = dist.forward_schedule(SCHEDULE)
        model = EpsPreconditioner(build_denoiser("mlp", (3,), hidden=16, layers=1, time_dim=8), schedule)
        gen = torch.Generator().manual_seed(2)
        for _ in range(5):  # plain gradient steps: a torch optimizer's first step imports for seconds
            model.zero_grad()
            training_loss(model, schedule, dist, data[torch.randint(0, 256, (32,), generator=gen)], gen).backward()
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter -= 0.05 * parameter.grad
        trained.append(model)
    assert all(torch.equal(a, b) for a, b in zip(trained[0].state_dict().values(), trained[1].state_dict().values()))
    for sampler in samplers.names():
        drawn = [samplers.sample(model, SCHEDULE, dist, (16, 3), sampler=sampler, steps=6,
                                 generator=torch.Generator().manual_seed(3)).samples
                 for model, dist in zip(trained, (gaussian, two))]
        assert torch.equal(*drawn), sampler


def test_below_two_the_loss_is_dlpms_norm_not_its_square():
    prediction, eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(6)), torch.zeros(4, 3)
    squared = noise.get("gaussian").per_sample_loss(prediction, eps)
    assert torch.equal(stable(2.0).per_sample_loss(prediction, eps), squared)
    assert torch.allclose(stable(1.5).per_sample_loss(prediction, eps), prediction.pow(2).mean(1).sqrt())


def test_the_forward_law_is_dlpms_scale_preserving_one():
    """Stable data noised in closed form is stable of the scale DLPM's law gives: with g = abar^(1/alpha),
    s = (1 - abar)^(1/alpha) (abar the configured schedule's), g^alpha + s^alpha = 1 keeps the data's scale, and
    the model sees x_t / sqrt(g^2 + s^2)."""
    alpha = 1.5
    dist = stable(alpha)
    schedule = dist.forward_schedule(SCHEDULE)
    gen = torch.Generator().manual_seed(4)
    x0 = dist.sample((3000,), generator=gen, dtype=torch.float64)
    for t in (999, 600, 300, 100, 20):
        abar = schedule.alpha_bars64[t].item()
        x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * dist.sample((3000,), generator=gen, dtype=torch.float64)
        configured = SCHEDULE.alpha_bars64[t].item()
        scale = SCALE / math.sqrt(configured ** (2 / alpha) + (1 - configured) ** (2 / alpha))
        assert stable_ks_pvalue(x_t.numpy(), alpha, scale) > 1e-3, t


def test_the_subordinator_chain_gives_each_timestep_its_stable_law():
    """The ancestral sampler's chain Sigma_t (one subordinator per grid step, scales added in alpha-th powers):
    sqrt(Sigma_t) G must be the forward process's noise at t, sqrt(1 - abar'_t) times the noise's law."""
    alpha = 1.5
    dist = stable(alpha)
    schedule = dist.forward_schedule(SCHEDULE)
    ctx = samplers.StepContext(lambda x, t: torch.zeros_like(x), schedule.alpha_bars64, dist,
                               torch.Generator().manual_seed(5), grid=samplers.timestep_grid(1000, 8))
    x = torch.zeros(3000, 1, dtype=torch.float64)
    dist.ancestral_step(ctx, x, ctx.grid[0], ctx.grid[1])
    chain = ctx.state[SUBORDINATOR_CHAIN]
    for t in (ctx.grid[0], ctx.grid[4], ctx.grid[-1]):
        noise_t = (chain[t].sqrt() * torch.randn(x.shape, generator=torch.Generator().manual_seed(t))).reshape(-1)
        scale = SCALE * math.sqrt(1 - schedule.alpha_bars64[t].item())
        assert stable_ks_pvalue(noise_t.numpy(), alpha, scale) > 1e-3, t


# The two-point mixture of tests/test_correctness.py: atoms at -1 and +1, weights 0.3 / 0.7, and the exact
# posterior-mean noise predictor, here with the SaS density (scipy's, tabled; its power tail outside the table).
ATOMS = torch.tensor([-1.0, 1.0], dtype=torch.float64)
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)


def exact_stable_denoiser(alpha: float, schedule: Schedule):
    grid = np.concatenate([np.linspace(0, 5, 101)[:-1], np.geomspace(5, 40, 60)])
    log_density = np.log(stats.levy_stable.pdf(grid, alpha, 0, scale=SCALE))
    tail = math.log(math.gamma(1 + alpha) * math.sin(math.pi * alpha / 2) / math.pi * SCALE**alpha)

    def eps(x, t):
        abar = schedule.alpha_bars64[t][:, None].to(x.dtype)
        z = (x - abar.sqrt() * ATOMS) / (1 - abar).sqrt()
        size = z.abs()
        tabled = torch.from_numpy(np.interp(size.numpy(), grid, log_density))
        posterior = torch.softmax(WEIGHTS.log() + torch.where(size < 40, tabled, tail - (1 + alpha) * size.log()), 1)
        return (posterior * z).sum(1, keepdim=True)
    return eps


def test_samplers_recover_a_two_point_mixture_with_the_exact_denoiser():
    """DLIM (DDIM's deterministic step under the scale law) and Heun recover the 0.3 atom; DLPM's ancestral step,
    Gaussian given the subordinator chain, is close but not exact with a posterior-mean denoiser: a heavy-tailed
    subordinator makes some steps jumps, whose reverse is a mixture one Gaussian cannot be (0.315 at 100 and at
    1000 steps here; exact when the step samples the atom itself). Both land on the atoms."""
    alpha = 1.5
    dist = stable(alpha)
    schedule = dist.forward_schedule(SCHEDULE)
    eps = exact_stable_denoiser(alpha, schedule)

    def recovered(sampler, steps):
        x = samplers.sample(eps, schedule, dist, (8000, 1), sampler=sampler, steps=steps,
                            generator=torch.Generator().manual_seed(0)).samples
        assert ((x.abs() - 1).abs() < 0.05).double().mean().item() > 0.99
        return (x < 0).double().mean().item()

    assert recovered("heun", 50) == pytest.approx(0.3, abs=0.015)
    assert recovered("ddim", 50) == pytest.approx(0.3, abs=0.015)
    assert recovered("ddpm", 100) == pytest.approx(0.315, abs=0.015)


def test_the_subordinator_chain_is_exact_under_an_exact_reverse_step():
    """Given the chain every step is Gaussian, so a reverse step that draws the atom from its posterior given x_t
    and Sigma_t, then x_s from the Gaussian bridge, samples the mixture exactly at any number of steps: this
    checks the whole chain (Sigma's recursion, r and b), where the posterior-mean step above is approximate."""
    alpha, n = 1.5, 6000
    dist = stable(alpha)
    schedule = dist.forward_schedule(SCHEDULE)
    for steps in (3, 30):
        gen = torch.Generator().manual_seed(steps)
        ctx = samplers.StepContext(lambda x, t: torch.zeros_like(x), schedule.alpha_bars64, dist, gen,
                                   grid=samplers.timestep_grid(1000, steps))
        x = torch.zeros(n, 1, dtype=torch.float64)
        dist.ancestral_step(ctx, x, ctx.grid[0], ctx.grid[1] if steps > 1 else -1)  # draws this pass's chain
        chain = ctx.state[SUBORDINATOR_CHAIN]
        x = chain[ctx.grid[0]].sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        for t, s in zip(ctx.grid, ctx.grid[1:] + [-1]):
            abar_t, abar_s = ctx.abar_at(t), ctx.abar_at(s)
            posterior = torch.softmax(WEIGHTS.log() - 0.5 * (x - math.sqrt(abar_t) * ATOMS) ** 2 / chain[t], dim=1)
            x0 = ATOMS[torch.multinomial(posterior, 1, generator=gen)]
            if s < 0:
                x = x0
                break
            sigma_s = chain[s]
            gamma = 1 - abar_t / abar_s * sigma_s / chain[t]
            mean = math.sqrt(abar_s) * x0 + (1 - gamma) * (x - math.sqrt(abar_t) * x0) / math.sqrt(abar_t / abar_s)
            x = mean + (gamma * sigma_s).sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        assert (x < 0).double().mean().item() == pytest.approx(0.3, abs=0.015), steps


def generalized_gaussian_cdf(x: np.ndarray, beta: float) -> np.ndarray:
    """The unit-variance generalised Gaussian's CDF, 1/2 + sign(x) P(1/beta, (|x| s)^beta) / 2, without underflow:
    where (|x| s)^beta is below float64's range, P(a, c) = c^a / Gamma(a + 1) (its series' first term) in logs.
    scipy.stats.gennorm.cdf computes the power directly and returns 1/2 there: against it correct samples "fail"
    (D = 0.045 at beta = 300, 0.24 at 1000, as issue 28 saw)."""
    s = math.exp(0.5 * (math.lgamma(3 / beta) - math.lgamma(1 / beta)))
    with np.errstate(divide="ignore"):
        log_c = beta * np.log(np.abs(x) * s)
    p = np.where(log_c > -700, special.gammainc(1 / beta, np.exp(np.maximum(log_c, -700))),
                 np.exp(log_c / beta - special.gammaln(1 / beta + 1)))
    return 0.5 + np.sign(x) * p / 2


@pytest.mark.parametrize("beta", [300.0, 1000.0, 1e5])
def test_large_generalized_gaussian_shapes_follow_the_exact_law(beta):
    draws = noise.get("generalized_gaussian", beta=beta).sample((100_000,), generator=torch.Generator().manual_seed(1),
                                                                dtype=torch.float64).numpy()
    assert stats.kstest(draws, lambda x: generalized_gaussian_cdf(x, beta)).pvalue > 1e-3
    # the test has power: drawn in linear space, Gamma(1/beta) underflows to 0 and piles the draws at 0
    g = torch.distributions.Gamma(1 / beta, 1.0).sample((100_000,)).double()
    scale = math.exp(0.5 * (math.lgamma(3 / beta) - math.lgamma(1 / beta)))
    naive = (torch.where(torch.rand(100_000) < 0.5, -1.0, 1.0) * g ** (1 / beta) / scale).numpy()
    assert stats.kstest(naive, lambda x: generalized_gaussian_cdf(x, beta)).pvalue < 1e-6
