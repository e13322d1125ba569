import math

import numpy as np
import pytest
import torch
from scipy import stats

from logdiff_core import noise
from logdiff_core.diffusion import q_sample
from logdiff_core.schedules import Schedule, make_betas

N = 200_000
BETA_GUMBEL = math.sqrt(6) / math.pi
# Independent references: scipy's standardised counterpart of every registered distribution.
REFERENCES = {
    "gaussian": ({}, stats.norm()),
    "laplace": ({}, stats.laplace(scale=1 / math.sqrt(2))),
    "uniform": ({}, stats.uniform(loc=-math.sqrt(3), scale=2 * math.sqrt(3))),
    "gumbel": ({}, stats.gumbel_r(loc=-np.euler_gamma * BETA_GUMBEL, scale=BETA_GUMBEL)),
    "exponential": ({}, stats.expon(loc=-1)),
    "student_t": ({"nu": 10.0}, stats.t(df=10, scale=math.sqrt(8 / 10))),
    "generalized_gaussian": ({"beta": 1.5}, stats.gennorm(1.5, scale=math.sqrt(math.gamma(1 / 1.5) / math.gamma(3 / 1.5)))),
    "alpha_stable": ({"alpha": 2.0}, stats.norm()),  # below 2 no variance: tests/test_heavy_tails.py
}
UNIT_VARIANCE = [name for name in noise.names() if noise.get(name).unit_variance]


def distribution_problems(dist, reference, n=N, seed=0) -> list[str]:
    """Everything wrong with ``dist`` against theory: moments, kurtosis, and the KS distance to ``reference``."""
    x = dist.sample((n,), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    problems = []
    if abs(x.mean()) > 5 / math.sqrt(n):
        problems.append(f"mean {x.mean():.4f}")
    if abs(x.var() - 1) > 0.02:
        problems.append(f"variance {x.var():.4f}")
    kurt = stats.kurtosis(x)
    if abs(kurt - reference.stats(moments="k")) > 0.1 + 0.1 * abs(float(reference.stats(moments="k"))):
        problems.append(f"excess kurtosis {kurt:.3f} vs {float(reference.stats(moments='k')):.3f}")
    ks = stats.kstest(x, reference.cdf)
    if ks.pvalue < 1e-3:
        problems.append(f"KS distance {ks.statistic:.4f} (p={ks.pvalue:.1e})")
    return problems


def test_every_registered_distribution_has_a_reference():
    assert sorted(REFERENCES) == noise.names()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_distribution_matches_theory(name):
    params, reference = REFERENCES[name]
    dist = noise.get(name, **params)
    assert distribution_problems(dist, reference) == []
    assert dist.excess_kurtosis == pytest.approx(float(reference.stats(moments="k")), rel=1e-6, abs=1e-9)


def test_uncentred_exponential_is_caught():
    class UncentredExponential(noise.Exponential):  # the reference implementation's bug
        def _draw(self, shape, generator, device, dtype):
            return super()._draw(shape, generator, device, dtype) + 1

    problems = distribution_problems(UncentredExponential(), REFERENCES["exponential"][1])
    assert any(p.startswith("mean") for p in problems) and any(p.startswith("KS") for p in problems)


@pytest.mark.parametrize("name", noise.names())
def test_same_seed_same_samples(name):
    dist = noise.get(name)
    a = dist.sample((4, 5), generator=torch.Generator().manual_seed(7))
    b = dist.sample((4, 5), generator=torch.Generator().manual_seed(7))
    c = dist.sample((4, 5), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.isfinite(a).all()
    assert a.dtype == torch.get_default_dtype() and a.shape == (4, 5)


def test_unknown_name_and_bad_parameters():
    with pytest.raises(ValueError, match="choose one of: .*gaussian.*laplace"):
        noise.get("cauchy")
    with pytest.raises(ValueError, match="nu > 2"):
        noise.get("student_t", nu=2)
    with pytest.raises(ValueError, match="no parameter 'nu'"):
        noise.get("gaussian", nu=3)


@pytest.mark.parametrize("kind", ["linear", "quadratic", "polynomial", "cosine"])
def test_schedules_are_valid(kind):
    betas = make_betas(kind, 1000)
    assert betas.shape == (1000,) and (betas > 0).all() and (betas < 1).all()
    if kind != "cosine":
        assert torch.all(betas[1:] >= betas[:-1])
        assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    schedule = Schedule(betas)
    assert torch.all(schedule.alpha_bars[1:] < schedule.alpha_bars[:-1])
    assert schedule.alpha_bars[-1] < 1e-3 or kind == "cosine" and schedule.alpha_bars[-1] < 1e-4


def test_quadratic_is_polynomial_of_power_two():
    assert torch.allclose(make_betas("quadratic"), make_betas("polynomial", power=2.0))
    assert not torch.allclose(make_betas("polynomial", power=3.0), make_betas("quadratic"))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="choose one of"):
        make_betas("sigmoid")
    with pytest.raises(ValueError, match="beta_start"):
        make_betas("linear", beta_start=0.1, beta_end=0.01)


@pytest.mark.parametrize("name", UNIT_VARIANCE)
def test_variance_normalisation_theorem_1(name):
    """Every unit-variance distribution reaches the same x_T variance under the same schedule, whether in one
    closed-form step or by running the Markov chain. A 100-step chain keeps it cheap and leaves abar_T far from 0, so
    the data's share of the variance is checked too."""
    schedule = Schedule.from_config("linear", 100)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(20_000, generator=gen, dtype=torch.float64) * 4 - 1  # data variance 4/3
    dist = noise.get(name)
    expected = schedule.terminal_variance(16 / 12)
    t_last = torch.full((x0.numel(),), schedule.timesteps - 1)
    one_shot = q_sample(schedule, x0, t_last, dist.sample(x0.shape, generator=gen, dtype=torch.float64))
    x = x0.clone()
    for beta in schedule.betas.double():
        x = torch.sqrt(1 - beta) * x + torch.sqrt(beta) * dist.sample(x.shape, generator=gen, dtype=torch.float64)
    assert one_shot.var().item() == pytest.approx(expected, rel=0.03)
    assert x.var().item() == pytest.approx(expected, rel=0.03)
    expected_mean = schedule.alpha_bars64[-1].sqrt().item() * x0.mean().item()  # the noise has mean 0
    assert x.mean().item() == pytest.approx(expected_mean, abs=0.03)
