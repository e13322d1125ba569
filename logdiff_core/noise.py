"""Noise distributions for the forward process, each standardised to mean 0 and variance 1.

Unit variance is what makes the comparison fair (NGLDM, Theorem 1): under one beta schedule every distribution
then reaches the same ``x_T`` variance. Adding a distribution is one small class with the ``@register`` decorator;
training, every sampler, the config validation and the CLI pick it up from the registry. A distribution without a
variance (alpha-stable, ``logdiff_core.alpha_stable``) brings its own forward law and sampler steps through two
hooks, ``forward_schedule`` and ``sampler_steps``, and its own loss (``per_sample_loss``); every other distribution
leaves all three at their defaults.
"""
from __future__ import annotations

import math
import numbers

import torch

EULER_GAMMA = 0.5772156649015329
_REGISTRY: dict[str, type["NoiseDistribution"]] = {}


def register(cls: type["NoiseDistribution"]) -> type["NoiseDistribution"]:
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **params) -> "NoiseDistribution":
    """The distribution ``name`` with ``params``; unknown names or bad parameters raise a one-line ValueError.

    ``params`` may name the registered distribution as ``distribution``, so that one config can hold two models of
    one law under names of their own (``stable_15: {distribution: alpha_stable, alpha: 1.5}``)."""
    registered = params.pop("distribution", name)
    if registered not in _REGISTRY:
        raise ValueError(f"unknown noise distribution {registered!r}; choose one of: {', '.join(names())} (another "
                         f"name says which with distribution:, e.g. {{distribution: alpha_stable, alpha: 1.5}})")
    cls = _REGISTRY[registered]
    allowed = set(cls.defaults)
    unknown = sorted(set(params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no parameters"
        raise ValueError(f"noise distribution {registered!r} has no parameter {unknown[0]!r}; it takes {takes}")
    return cls(**{**cls.defaults, **params})


def _uniform_open(shape, generator, device, dtype) -> torch.Tensor:
    """Uniform on the open interval (0, 1): inverse-CDF transforms stay finite."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(u.dtype).tiny
    return u.clamp(min=tiny, max=1 - torch.finfo(u.dtype).eps / 2)


def standard_gamma(alpha: float, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """Gamma(alpha, 1) draws from ``generator`` (Marsaglia-Tsang), since torch's gamma takes no generator."""
    return log_standard_gamma(alpha, shape, generator, device).exp().to(dtype or torch.get_default_dtype())


def log_standard_gamma(alpha: float, shape, generator=None, device=None) -> torch.Tensor:
    """log of Gamma(alpha, 1) draws, in float64. In log space a small alpha cannot underflow: Gamma(0.001) draws
    are mostly below float64's smallest number, their logs are not."""
    boost = alpha < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a)
    a = alpha + 1 if boost else alpha
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    n = math.prod(shape)
    out = torch.empty(n, device=device, dtype=torch.float64)
    filled = 0
    while filled < n:
        m = max(2 * (n - filled), 64)
        z = torch.randn(m, generator=generator, device=device, dtype=torch.float64)
        u = _uniform_open((m,), generator, device, torch.float64)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        accepted = (d * v)[ok][: n - filled]
        out[filled : filled + accepted.numel()] = accepted
        filled += accepted.numel()
    log_out = out.log()
    if boost:
        log_out = log_out + _uniform_open((n,), generator, device, torch.float64).log() / alpha
    return log_out.reshape(shape)


class NoDensity(ValueError):
    """The noise has no closed-form density (an alpha-stable law, say): nothing that needs one (the optimal
    denoiser, the empirical score deviation) can be computed for it."""


def _real_parameter(distribution: str, name: str, value, above: float, why: str = "") -> float:
    """``value`` as a float if it is a finite real number (numpy scalars included) above ``above``; else a
    one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not value > above:
        raise ValueError(f"{distribution} needs a finite {name} > {above:g}{why}; got {name}={value!r}")
    return float(value)


class NoiseDistribution:
    """Zero-mean, unit-variance noise. Subclasses set ``name``, ``defaults`` and implement ``_draw``; those with a
    closed-form density also implement ``log_density`` (and set ``support`` when it is bounded)."""

    name: str = ""
    defaults: dict = {}
    support: tuple[float, float] = (-math.inf, math.inf)  # of one coordinate; the density is 0 outside
    unit_variance = True  # Theorem 1's normalisation applies (alpha-stable: only at alpha = 2)
    sampler_steps: dict = {}  # sampler name -> a step function of this noise's own, replacing the sampler's

    def forward_schedule(self, schedule):
        """The schedule of this noise's forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``: for
        unit-variance noise the configured one itself (Theorem 1)."""
        return schedule

    def per_sample_loss(self, prediction: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Each sample's training loss: the mean squared error of the noise prediction (minimised by E[eps | x_t])."""
        return (prediction.float() - eps.float()).pow(2).flatten(1).mean(1)

    def __init__(self, **params):
        self.params = params

    def sample(self, shape, *, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        shape = tuple(shape)
        dtype = dtype or torch.get_default_dtype()
        if device is None and generator is not None:
            device = generator.device
        # Inverse-CDF arithmetic (log of a uniform near 0 or 1) overflows in half precision: draw in float32 at
        # least, then cast.
        working = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        return self._draw(shape, generator, device, working).to(dtype)

    def sample_like(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def _draw(self, shape, generator, device, dtype) -> torch.Tensor:
        raise NotImplementedError

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of each coordinate, for ``z`` inside ``support`` (where the density is positive)."""
        raise NoDensity(f"{self.name} noise has no closed-form density, so it has no optimal denoiser and no score "
                        "deviation; those figures are left out for it")

    @property
    def has_density(self) -> bool:
        return type(self).log_density is not NoiseDistribution.log_density

    @property
    def excess_kurtosis(self) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


@register
class Gaussian(NoiseDistribution):
    name = "gaussian"
    excess_kurtosis = 0.0

    def _draw(self, shape, generator, device, dtype):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def log_density(self, z):
        return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)


@register
class Laplace(NoiseDistribution):
    """Laplace(0, b) with b = 1/sqrt(2): a signed Exp(1) scaled to unit variance."""

    name = "laplace"
    excess_kurtosis = 3.0

    def _draw(self, shape, generator, device, dtype):
        # a random sign times an Exp(1) draw: the inverse CDF of a uniform shifted by 0.5 would meet log(0) when the
        # uniform is 0 (1 in 2^24 float32 draws: one NaN every ~1,500 training steps of 256 x 48 values)
        magnitude = -torch.log(_uniform_open(shape, generator, device, dtype))
        sign = torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0).to(dtype)
        return sign * magnitude / math.sqrt(2)

    def log_density(self, z):
        return -math.sqrt(2) * z.abs() - 0.5 * math.log(2)


@register
class Uniform(NoiseDistribution):
    name = "uniform"
    excess_kurtosis = -1.2
    support = (-math.sqrt(3), math.sqrt(3))

    def _draw(self, shape, generator, device, dtype):
        return (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * math.sqrt(3)

    def log_density(self, z):
        return torch.full_like(z, -math.log(2 * math.sqrt(3)))


@register
class Gumbel(NoiseDistribution):
    """Standard Gumbel (mean gamma, std pi/sqrt(6)) centred and scaled."""

    name = "gumbel"
    excess_kurtosis = 2.4

    def _draw(self, shape, generator, device, dtype):
        g = -torch.log(-torch.log(_uniform_open(shape, generator, device, dtype)))
        return (g - EULER_GAMMA) / (math.pi / math.sqrt(6))

    def log_density(self, z):
        scale = math.pi / math.sqrt(6)
        g = z * scale + EULER_GAMMA
        # exp(-g) overflows float64 below g = -709: far in the left tail the log-density saturates near -1e300
        return math.log(scale) - g - torch.exp(-g.clamp_min(-700))


@register
class Exponential(NoiseDistribution):
    """Exp(1) - 1. The reference code forgot the centring (mean 1) and its models diverged."""

    name = "exponential"
    excess_kurtosis = 6.0
    support = (-1.0, math.inf)

    def _draw(self, shape, generator, device, dtype):
        return -torch.log(_uniform_open(shape, generator, device, dtype)) - 1

    def log_density(self, z):
        return -(z + 1)


@register
class StudentT(NoiseDistribution):
    """Student-t with ``nu`` > 2 degrees of freedom, scaled by sqrt((nu - 2) / nu) to unit variance."""

    name = "student_t"
    defaults = {"nu": 5.0}

    def __init__(self, nu: float):
        self.nu = _real_parameter(self.name, "nu", nu, 2, " (a finite variance)")
        super().__init__(nu=self.nu)

    @property
    def excess_kurtosis(self) -> float:
        return 6 / (self.nu - 4) if self.nu > 4 else math.inf

    def _draw(self, shape, generator, device, dtype):
        z = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
        chi2 = 2 * standard_gamma(self.nu / 2, shape, generator, device, torch.float64)
        t = z / torch.sqrt(chi2 / self.nu)
        return (t * math.sqrt((self.nu - 2) / self.nu)).to(dtype)

    def log_density(self, z):
        nu, scale = self.nu, math.sqrt((self.nu - 2) / self.nu)
        constant = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(scale)
        return constant - (nu + 1) / 2 * torch.log1p((z / scale) ** 2 / nu)


@register
class GeneralizedGaussian(NoiseDistribution):
    """Generalized normal with shape ``beta`` (1 Laplace, 2 Gaussian, large -> uniform), unit variance."""

    name = "generalized_gaussian"
    defaults = {"beta": 1.5}

    def __init__(self, beta: float):
        self.beta = _real_parameter(self.name, "beta", beta, 0)
        super().__init__(beta=self.beta)

    @property
    def excess_kurtosis(self) -> float:
        lg = math.lgamma
        return math.exp(lg(5 / self.beta) + lg(1 / self.beta) - 2 * lg(3 / self.beta)) - 3

    def _draw(self, shape, generator, device, dtype):
        log_g = log_standard_gamma(1 / self.beta, shape, generator, device)
        sign = torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, -1.0, 1.0)
        x = sign.to(torch.float64) * torch.exp(log_g / self.beta)  # g ** (1 / beta), without underflow
        return (x / self._scale).to(dtype)

    @property
    def _scale(self) -> float:
        """The std of exp(-|x|^beta)'s normalised density: dividing by it gives unit variance."""
        return math.exp(0.5 * (math.lgamma(3 / self.beta) - math.lgamma(1 / self.beta)))

    def log_density(self, z):
        scale = self._scale
        return math.log(scale * self.beta / 2) - math.lgamma(1 / self.beta) - (z.abs() * scale) ** self.beta


from . import alpha_stable  # noqa: E402,F401  (registers alpha_stable, which builds on the classes above)
