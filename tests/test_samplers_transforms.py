import math

import pytest
import torch

from logdiff_core import noise, samplers, schedules, transforms
from logdiff_core.schedules import Schedule

SCHEDULE = Schedule.from_config("linear", 1000)


def point_mass_denoiser(c):
    """The exact epsilon-predictor when all data sits at ``c``."""
    def eps(x, t):
        abar = SCHEDULE.alpha_bars64[t].to(x.dtype)[:, None]
        return (x - abar.sqrt() * c) / (1 - abar).sqrt()
    return eps


def gaussian_denoiser(mean, std, schedule=SCHEDULE):
    """The exact epsilon-predictor E[eps | x_t] for N(mean, std^2) data and Gaussian noise."""
    def eps(x, t):
        abar = schedule.alpha_bars64[t].to(x.dtype)[:, None]
        return (1 - abar).sqrt() * (x - abar.sqrt() * mean) / (abar * std**2 + 1 - abar)
    return eps


@pytest.mark.parametrize("sampler,options", [
    ("ddpm", {}), ("ddim", {}), ("ddim", {"options": {"eta": 1.0}}), ("heun", {}), ("heun", {"steps": 1}),
    ("ddim", {"langevin_steps": 2}), ("dpmpp2m", {}), ("dpmpp3m", {}), ("unipc", {}), ("unipc", {"steps": 2}),
])
@pytest.mark.parametrize("dist", ["gaussian", "laplace", "exponential", "student_t"])
def test_point_mass_is_recovered(sampler, options, dist):
    result = samplers.sample(point_mass_denoiser(1.5), SCHEDULE, noise.get(dist), (512, 2), sampler=sampler,
                             generator=torch.Generator().manual_seed(0), **{"steps": 20, **options})
    assert torch.allclose(result.samples, torch.full((512, 2), 1.5), atol=1e-3)


@pytest.mark.parametrize("sampler,steps,options", [
    ("ddpm", 1000, {}),
    ("ddpm", 250, {"options": {"variance": "posterior"}}),
    ("ddim", 200, {}),
    ("ddim", 250, {"options": {"eta": 1.0}}),
    ("heun", 35, {}),
    ("ddim", 100, {"langevin_steps": 1}),
])
def test_gaussian_data_distribution_is_recovered(sampler, steps, options):
    mean, std = 2.0, 0.5
    result = samplers.sample(gaussian_denoiser(mean, std), SCHEDULE, noise.get("gaussian"), (20_000, 1),
                             sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0), **options)
    x = result.samples.double()
    assert x.mean().item() == pytest.approx(mean, abs=0.02)
    assert x.std().item() == pytest.approx(std, rel=0.03)  # discretisation error at these step counts: < 2.5%


@pytest.mark.parametrize("kind", schedules.KINDS)
def test_the_second_order_sampler_is_stable_on_every_schedule(kind):
    """Heun at 25 steps against a fine DDIM from the same x_T. A cosine schedule's first step spans sigma 2e4 -> 15:
    a trapezoid over eps there turned a spread of 0.5 into 0.86 (and 45 at 6 steps)."""
    schedule = Schedule.from_config(kind, 1000)
    denoiser = gaussian_denoiser(2.0, 0.5, schedule)
    x_T = noise.get("gaussian").sample((20_000, 1), generator=torch.Generator().manual_seed(0))
    heun, fine = (samplers.sample(denoiser, schedule, noise.get("gaussian"), (20_000, 1), sampler=sampler,
                                  steps=steps, x_T=x_T).samples.double() for sampler, steps in (("heun", 25),
                                                                                                ("ddim", 500)))
    assert heun.mean().item() == pytest.approx(fine.mean().item(), abs=0.01)
    assert heun.std().item() == pytest.approx(fine.std().item(), rel=0.05)


def test_wrong_denoiser_is_detected():
    """The recovery check can fail: a denoiser for the wrong spread gives the wrong spread."""
    result = samplers.sample(gaussian_denoiser(2.0, 1.0), SCHEDULE, noise.get("gaussian"), (20_000, 1),
                             sampler="ddim", steps=200, generator=torch.Generator().manual_seed(0))
    assert result.samples.std().item() == pytest.approx(1.0, rel=0.03)


def test_trajectories_and_evaluation_counts():
    for sampler, evals in (("ddim", 10), ("ddpm", 10), ("heun", 19)):
        result = samplers.sample(gaussian_denoiser(2.0, 0.5), SCHEDULE, noise.get("laplace"), (64, 3),
                                 sampler=sampler, steps=10, return_trajectories=True,
                                 generator=torch.Generator().manual_seed(0))
        assert result.evaluations == evals and result.timesteps[0] == 999 and result.timesteps[-1] == 0
        assert len(result.trajectory) == 11 and len(result.denoised) == 10
        assert torch.equal(result.trajectory[-1], result.samples)
        # the denoising trajectory settles before the sampling trajectory does (Chen et al.)
        first_x0_gap = (result.denoised[0] - result.samples).abs().mean()
        first_x_gap = (result.trajectory[0] - result.samples).abs().mean()
        assert first_x0_gap < first_x_gap


def test_restarts_wash_out_the_first_pass_errors():
    """A first pass from the wrong x_T (three times too wide) ends three times too wide; restarts from t = 600 noise
    the samples afresh and sample back with the exact denoiser, and the spread comes back right."""
    mean, std, shape = 2.0, 0.5, (20_000, 1)
    x_T = 3 * noise.get("gaussian").sample(shape, generator=torch.Generator().manual_seed(0))
    run = lambda restarts: samplers.sample(gaussian_denoiser(mean, std), SCHEDULE, noise.get("gaussian"), shape,
                                           sampler="heun", steps=25, x_T=x_T, restarts=restarts, restart_t=600,
                                           restart_steps=15, generator=torch.Generator().manual_seed(1)).samples
    assert run(0).std().item() > 2 * std
    restarted = run(3).double()
    assert restarted.mean().item() == pytest.approx(mean, abs=0.02)
    assert restarted.std().item() == pytest.approx(std, rel=0.03)


def test_restarts_are_counted_and_traced():
    result = samplers.sample(gaussian_denoiser(2.0, 0.5), SCHEDULE, noise.get("exponential"), (64, 3),
                             sampler="heun", steps=10, restarts=2, restart_t=200, restart_steps=4,
                             return_trajectories=True, generator=torch.Generator().manual_seed(0))
    assert result.evaluations == 19 + 2 * 7
    assert result.timesteps == [*samplers.timestep_grid(1000, 10), *[200, 133, 67, 0] * 2]
    assert len(result.denoised) == len(result.timesteps) and len(result.trajectory) == len(result.timesteps) + 1
    assert torch.equal(result.trajectory[-1], result.samples)
    # a restart starts from the first pass's samples (its last x0_hat) noised afresh to t = 200 in closed form, with
    # the model's own noise: centred exponential draws, which never go below -1
    abar = SCHEDULE.alpha_bars64[200].item()
    drawn = (result.trajectory[10] - math.sqrt(abar) * result.denoised[9]) / math.sqrt(1 - abar)
    assert drawn.min().item() > -1 - 1e-4 and abs(drawn.mean().item()) < 0.3 and drawn.std().item() > 0.7


@pytest.mark.parametrize("options,message", [
    ({"restarts": -1}, "restarts must be >= 0"), ({"restarts": 1, "restart_t": 1000}, r"restart_t must be in 0..999"),
    ({"restarts": 1, "restart_t": 9, "restart_steps": 11}, r"restart_steps must be in 1..10"),
])
def test_restart_settings_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        samplers.sample(gaussian_denoiser(0, 1), SCHEDULE, noise.get("gaussian"), (2, 1), steps=5, **options)


def test_samplers_never_call_torch_randn(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a sampler called torch.randn directly")

    monkeypatch.setattr(torch, "randn", forbidden)
    for sampler in samplers.names():
        options = {"eta": 1.0} if sampler == "ddim" else {}
        samplers.sample(point_mass_denoiser(0.0), SCHEDULE, noise.get("uniform"), (8, 2), sampler=sampler, steps=5,
                        options=options, langevin_steps=1, restarts=1)


def test_sampling_is_seeded_and_validated():
    run = lambda seed: samplers.sample(gaussian_denoiser(0, 1), SCHEDULE, noise.get("gumbel"), (4, 2),
                                       sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1).samples, run(1).samples) and not torch.equal(run(1).samples, run(2).samples)
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        samplers.timestep_grid(1000, 1001)
    with pytest.raises(ValueError, match="choose one of: ddim, ddpm, dpmpp2m, dpmpp3m, heun, unipc"):
        samplers.sample(gaussian_denoiser(0, 1), SCHEDULE, noise.get("gaussian"), (2, 1), sampler="euler")
    assert samplers.timestep_grid(1000, 1000) == list(range(999, -1, -1))


def test_log_transform_round_trip_and_positivity():
    gen = torch.Generator().manual_seed(0)
    x = torch.exp(torch.randn(1000, 5, generator=gen, dtype=torch.float64) * 3)  # 10 orders of magnitude
    t = transforms.get("log").fit(x)
    y = t.forward(x)
    assert y.mean(0).abs().max() < 1e-9 and (y.std(0) - 1).abs().max() < 1e-9
    assert torch.allclose(t.inverse(y), x, rtol=1e-12)
    wild = torch.tensor([[-1e6, -80.0, 0.0, 80.0, 1e6]], dtype=torch.float32)
    assert (t.inverse(wild) > 0).all() and torch.isfinite(t.inverse(wild)).all()
    restored = transforms.from_state(t.state_dict())
    assert torch.equal(restored.forward(x), y)


def test_log_transform_rejects_non_positive_with_counts():
    x = torch.tensor([[1.0], [0.0], [-2.0], [3.0]])
    with pytest.raises(ValueError, match=r"2 of 4 values .*minimum -2"):
        transforms.get("log").fit(x)
    floored = transforms.get("log", floor=3.0).fit(x)
    assert torch.allclose(floored.inverse(floored.forward(x)), x, atol=1e-5)


def test_identity_and_unknown_transform():
    x = torch.randn(3, 4)
    assert torch.equal(transforms.get("identity").inverse(transforms.get("identity").forward(x)), x)
    with pytest.raises(ValueError, match="choose one of: identity, log"):
        transforms.get("sqrt")


def test_preconditioner_skip_is_the_linear_optimum_and_scales_the_residual():
    """With a zero backbone the preconditioned model is the exact denoiser for zero-mean Gaussian data, and the
    backbone's target (eps - c_skip x_t) has unit variance at every t, whatever the noise distribution."""
    from logdiff_core.diffusion import EpsPreconditioner, q_sample

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    model = EpsPreconditioner(Zero(), SCHEDULE, data_std=0.5)
    x = torch.randn(64, 1, dtype=torch.float64)
    for t in (0, 300, 999):
        tt = torch.full((64,), t)
        assert torch.allclose(model(x.float(), tt).double(), gaussian_denoiser(0.0, 0.5)(x, tt), atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(100_000, 1, generator=gen) * 2 * math.sqrt(3) * 0.5 - math.sqrt(3) * 0.5  # std 0.5
    for t in (10, 500, 990):
        tt = torch.full((x0.shape[0],), t)
        eps = noise.get("laplace").sample(x0.shape, generator=gen)
        x_t = q_sample(SCHEDULE, x0, tt, eps)
        residual = (eps - model.c_skip[t] * x_t) / model.c_out[t]
        assert residual.var().item() == pytest.approx(1.0, rel=0.03)
