"""Typed, validated pipeline configuration.

A config is a preset YAML (``conf/<preset>.yaml``) optionally extending another preset, plus command-line
overrides ``section.key=value``. Every key is checked on load: an unknown key, a wrong type or a value outside
its choices raises ``ConfigError`` with a one-line message naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

CONF_DIR = Path(os.environ.get("LOGDIFF_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # an experiment name is also a folder name
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")  # DVC reads '.' in a param's key as nesting


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key."""


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: ``low <= x`` (``low < x`` if ``low_open``), and likewise ``high``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


COUNT = Range(1)  # steps, batch sizes, widths: at least one
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, low_open=True, high_open=True)


def _registry(module: str, attribute: str) -> Callable[[], tuple]:
    """Choices read from a core registry when validating (importing the core pulls in torch: not at import)."""
    def choices() -> tuple:
        found = getattr(importlib.import_module(module), attribute)
        return tuple(found() if callable(found) else found)
    return choices


@dataclass
class DataConfig:
    source: str = "digits"  # see tasks/sources.py
    path: str | None = None  # folder, zip, .npy/.npz/.parquet, or CIFAR-10 root / tarball
    download: bool = True  # cifar10 only: download when not found locally
    image_size: int | None = None  # resize images to this size; None keeps the source size
    channels: int | None = None  # 1 (grey) or 3 (RGB); None keeps the source's
    val_fraction: float = 0.1
    limit: int | None = None  # keep at most this many examples (after shuffling)
    shard_rows: int = 10000
    on_bad_input: str = "skip"  # skip | error

    _choices = {"source": _registry("tasks.sources", "names"), "on_bad_input": ("skip", "error"),
                "channels": (None, 1, 3)}
    _ranges = {"image_size": COUNT, "val_fraction": FRACTION, "limit": Range(2), "shard_rows": COUNT}


@dataclass
class AutoencoderConfig:
    kind: str = "conv"  # conv | none (diffuse the transformed data directly)
    downsample: int = 2  # 1, 2 or 4
    latent_channels: int = 4
    base_channels: int = 32
    kl_weight: float = 0.0  # > 0 makes it a KL-regularised (VAE-style) autoencoder
    gradient_weight: float = 0.5  # L1 on image gradients: keeps edges sharp without downloaded weights
    adversarial_weight: float = 0.0  # PatchGAN hinge loss weight; 0 disables the discriminator
    adversarial_start: int = 0  # step at which the adversarial loss switches on
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    checkpoint_every: int = 500
    log_every: int = 50
    bf16: bool = True  # bfloat16 autocast on CUDA and on CPUs with bf16 units (as train.bf16)

    _choices = {"kind": ("conv", "none"), "downsample": _registry("logdiff_core.autoencoder", "DOWNSAMPLE_FACTORS")}
    _ranges = {"latent_channels": COUNT, "base_channels": COUNT, "kl_weight": NON_NEGATIVE,
               "gradient_weight": NON_NEGATIVE, "adversarial_weight": NON_NEGATIVE, "adversarial_start": NON_NEGATIVE,
               "steps": COUNT, "batch_size": COUNT, "lr": POSITIVE, "checkpoint_every": COUNT, "log_every": COUNT}


@dataclass
class NetworkConfig:
    kind: str = "unet"  # unet (images/latents) | mlp (vectors)
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    attention_resolution: int = 8  # self-attention at feature maps this size or smaller; 0 disables
    num_heads: int = 4
    siren: bool = False  # sine activations (SIREN) instead of SiLU
    dropout: float = 0.0
    hidden: int = 256  # mlp only
    layers: int = 3  # mlp only
    time_dim: int = 64  # mlp only: the timestep embedding's width

    _choices = {"kind": _registry("logdiff_core.networks", "DENOISERS")}
    _ranges = {"base_channels": COUNT, "channel_mults": COUNT, "attention_resolution": NON_NEGATIVE,
               "num_heads": COUNT, "dropout": Range(0, 1, high_open=True), "hidden": COUNT, "layers": COUNT,
               "time_dim": COUNT}


@dataclass
class DiffusionConfig:
    # One model per entry; each maps to the distribution's parameters (e.g. student_t: {nu: 5}).
    distributions: dict[str, dict] = field(default_factory=lambda: {
        "gaussian": {}, "laplace": {}, "uniform": {}, "gumbel": {}, "exponential": {}})
    schedule: str = "linear"  # linear | quadratic | polynomial | cosine
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    power: float = 2.0  # polynomial schedule only
    # One model per (distribution, transform): [identity, log] trains each distribution both ways, to compare.
    transforms: list[str] = field(default_factory=lambda: ["identity"])  # identity | log (LogDiff)
    log_floor: float = 0.0  # log transform: y = log(x + floor)
    labels: bool = False  # array data with class labels: model them too (one-hot), for train-on-synthetic scores

    _choices = {"schedule": _registry("logdiff_core.schedules", "KINDS")}
    _ranges = {"timesteps": COUNT, "beta_start": FRACTION, "beta_end": FRACTION, "power": POSITIVE,
               "log_floor": NON_NEGATIVE}


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"  # constant | cosine (decay to 0 at the last step)
    min_snr_gamma: float = 0.0  # > 0: Min-SNR-gamma loss weighting (Hang et al. 2023); 0: the plain loss
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    log_every: int = 50
    eval_every: int = 0  # steps between metric-curve points (weight-free distance, and FID when available); 0 = off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast to bfloat16 on CUDA
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the denoiser (CUDA)
    num_workers: int = 1  # > 1: Ray Train DDP across this many workers
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # fractions < 1 let several distributions share one GPU; ignored without GPUs
    seeds: list[int] = field(default_factory=lambda: [0])  # one model per seed (replicates), side by side

    _choices = {"lr_schedule": ("constant", "cosine")}
    _ranges = {"steps": COUNT, "batch_size": COUNT, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
               "warmup_steps": NON_NEGATIVE, "min_snr_gamma": NON_NEGATIVE, "grad_clip": NON_NEGATIVE,
               "ema_decay": Range(0, 1, high_open=True),
               "checkpoint_every": COUNT, "log_every": COUNT, "eval_every": NON_NEGATIVE, "num_workers": COUNT,
               "cpus_per_worker": POSITIVE, "gpus_per_worker": Range(0, 1, low_open=True), "seeds": NON_NEGATIVE}


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddpm | ddim | heun | dpmpp2m | dpmpp3m | unipc
    steps: int = 50
    options: dict[str, Any] = field(default_factory=dict)  # the sampler's own options, e.g. {eta: 1.0} for ddim
    time_schedule: str = "uniform"  # uniform | edm | fitted: which timesteps the steps visit
    langevin_steps: int = 0  # Langevin corrector steps after each predictor step
    langevin_snr: float = 0.16
    restarts: int = 0  # then noise the samples to restart_t and sample back, this many times
    restart_t: int = 200
    restart_steps: int = 10
    batch_size: int = 256

    _choices = {"sampler": _registry("logdiff_core.samplers", "names"),
                "time_schedule": _registry("logdiff_core.time_schedules", "NAMES")}
    _moved = {"eta": "sample.options={eta: ...}"}  # keys that moved: their new place, for the error message
    _ranges = {"steps": COUNT, "langevin_steps": NON_NEGATIVE, "langevin_snr": POSITIVE,
               "restarts": NON_NEGATIVE, "restart_t": NON_NEGATIVE, "restart_steps": COUNT, "batch_size": COUNT}


@dataclass
class ClassifierConfig:
    """The judge: a small classifier trained on the training split's labels, for the offline image metric."""

    kind: str = "auto"  # auto: train one when the images have class labels; none: no judge
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    base_channels: int = 32
    bf16: bool = True  # bfloat16 autocast (and channels_last) on CUDA and on CPUs with bf16 units (as train.bf16)

    _choices = {"kind": ("auto", "none")}
    _ranges = {"steps": COUNT, "batch_size": COUNT, "lr": POSITIVE, "base_channels": COUNT}


@dataclass
class EvalConfig:
    num_samples: int = 1000  # scored as disjoint sets of the metric's sample size: several sets, a tighter figure
    fid: bool = True  # compute FID/KID for image data when the Inception weights can be had
    fid_weights: str | None = None  # local pt_inception-2015-12-05 file; default: $LOGDIFF_FID_WEIGHTS or download
    fid_required: bool = False  # true: a missing FID is an error rather than "unavailable"
    champion_metric: str = "auto"  # auto: fid when available, else fd_classifier, else the weight-free distance
    grid_size: int = 64
    bootstrap: int = 200  # resamples behind the interval of a figure scored on one set; 0 turns intervals off
    confidence: float = 0.95  # of the intervals

    _choices = {}
    _ranges = {"num_samples": Range(4), "grid_size": COUNT, "bootstrap": NON_NEGATIVE, "confidence": FRACTION}


@dataclass
class ClusterConfig:
    """Where outputs live and where models train beyond one machine (docs/cluster.md). Locations, not settings:
    left out of ``Config.settings``, so a model file is the same byte for byte wherever it was trained."""

    storage: str = ""  # "": the experiment folder only; s3://bucket/prefix or file:///shared/path: a store every node reaches
    endpoint: str = ""  # S3-compatible server (MinIO, Ceph, moto): http(s)://host:port; "": AWS
    dvc_remote: str = ""  # DVC remote (s3://bucket/prefix, or a path): dvc pull before a run, dvc push after
    placement: dict[str, str] = field(default_factory=dict)  # model or distribution -> Ray node (resource or id)
    max_retries: int = 2  # retries of a training whose node or worker died (never of an error in the training)

    _ranges = {"max_retries": NON_NEGATIVE}

    def __post_init__(self) -> None:
        if self.storage and not self.storage.startswith(("s3://", "file:///")):
            raise ConfigError(f"cluster.storage: {self.storage!r} is not a store; use s3://bucket/prefix, "
                              "file:///shared/path, or leave it empty for the experiment folder only")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"cluster.endpoint: {self.endpoint!r} must be a URL such as http://127.0.0.1:9000")


@dataclass
class BudgetConfig:
    """The wall time a preset was measured to take, fresh (ingest included, install not), and the time it should
    fit in: the start-up check scales the measurement to the machine it finds and says when a run will not fit.
    Not a setting: left out of ``Config.settings`` like the locations."""

    minutes: float = 0.0  # the wall time the preset should fit in; 0: no check
    measured_minutes: float = 0.0  # what it took where measured
    measured_cores: int = 2  # on how many CPU cores
    measured_bf16: bool = True  # on a CPU with bf16 units
    float32_factor: float = 1.0  # how much longer the same run took with bf16 off (measured)

    _ranges = {"minutes": NON_NEGATIVE, "measured_minutes": NON_NEGATIVE, "measured_cores": COUNT,
               "float32_factor": Range(1)}


@dataclass(frozen=True)
class Variant:
    """One model the pipeline trains: a noise distribution under a data transform, from one training seed."""

    distribution: str
    transform: str
    seed: int = 0

    @property
    def name(self) -> str:
        """Stage and folder name, as DVC's matrix names it: ``laplace-identity-0``."""
        return f"{self.distribution}-{self.transform}-{self.seed}"

    @property
    def label(self) -> str:
        """Registry and display name: the distribution, suffixed with the transform unless it is identity (the
        seeds of one distribution and transform are replicates of one registered model)."""
        return self.distribution if self.transform == "identity" else f"{self.distribution}-{self.transform}"


# where a run happens, where its outputs live and how long it should take: not how models are made
LOCATIONS = ("workdir", "cluster", "budget")


@dataclass
class Config:
    name: str = "demo"  # the experiment: its MLflow experiment, and its folder artifacts/<name>
    seed: int = 0  # data split, autoencoder and judge; each model's own seeds are train.seeds
    workdir: str | None = None  # the experiment's folder, relative to the project; default artifacts/<name>
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    _ranges = {"seed": NON_NEGATIVE}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self, *sections: str) -> dict:
        """The config without ``workdir``, ``cluster`` and ``budget`` (not settings), or only ``sections`` of it: what
        is saved beside outputs, so that the flow (absolute paths), ``dvc repro`` (relative paths) and a cluster write
        identical files."""
        settings = {k: v for k, v in self.to_dict().items() if k not in LOCATIONS}
        return {k: settings[k] for k in sections} if sections else settings

    def model_settings(self, variant: Variant) -> dict:
        """The config as it concerns one model: the other distributions, transforms and seeds left out, so that
        changing or adding one changes nothing about the others (as DVC's per-model params say)."""
        settings = self.settings()
        settings["diffusion"] = {**settings["diffusion"], "transforms": [variant.transform],
                                 "distributions": {variant.distribution: self.diffusion.distributions[variant.distribution]}}
        settings["train"] = {**settings["train"], "seeds": [variant.seed]}
        return settings

    @property
    def work(self) -> Path:
        """The experiment's folder: ``workdir``, or ``artifacts/<name>``."""
        return Path(self.workdir) if self.workdir else Path("artifacts") / self.name

    def variants(self) -> list[Variant]:
        """Every model to train, in ``dvc.yaml``'s matrix order (distribution, transform, seed)."""
        return [Variant(d, t, s) for d in self.diffusion.distributions for t in self.diffusion.transforms
                for s in self.train.seeds]

    def variant(self, distribution: str, transform: str | None = None, seed: int | None = None) -> Variant:
        """The configured variant for ``distribution`` (``transform`` and ``seed`` may be left out when only one is
        configured); ValueError naming the configured choices otherwise."""
        if distribution not in self.diffusion.distributions:
            configured = ", ".join(self.diffusion.distributions)
            raise ValueError(f"distribution {distribution!r} is not in diffusion.distributions ({configured})")
        seeds = self.train.seeds
        if seed is None and len(seeds) > 1:
            raise ValueError(f"train.seeds lists {', '.join(map(str, seeds))}: name one (--seed)")
        if seed is not None and seed not in seeds:
            raise ValueError(f"seed {seed} is not in train.seeds ({', '.join(map(str, seeds))})")
        return Variant(distribution, self.transform(transform), seeds[0] if seed is None else seed)

    def transform(self, name: str | None = None) -> str:
        """The configured transform ``name`` (the only one when left out); ValueError naming the choices."""
        transforms = self.diffusion.transforms
        if name is None and len(transforms) == 1:
            return transforms[0]
        if name is None:
            raise ValueError(f"diffusion.transforms lists {', '.join(transforms)}: name one (--transform)")
        if name not in transforms:
            raise ValueError(f"transform {name!r} is not in diffusion.transforms ({', '.join(transforms)})")
        return name


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise ConfigError naming ``key``."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str) and typing.get_args(hint) == (str,):
            value = [value]  # transforms=log means [log]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): (dict(v) if isinstance(v, dict) else v if v is not None else {}) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, raw: dict, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        if unknown[0] in getattr(cls, "_moved", {}):
            raise ConfigError(f"config key '{key}' moved: write {cls._moved[unknown[0]]}")
        raise ConfigError(f"unknown config key '{key}'; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value or {}, f"{key}.")
        else:
            kwargs[name] = _check_type(key, value, hints[name])
    obj = cls(**kwargs)
    for name, allowed in getattr(cls, "_choices", {}).items():
        allowed = allowed() if callable(allowed) else allowed
        if getattr(obj, name) not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise ConfigError(f"{prefix}{name}: {getattr(obj, name)!r} is not one of: {shown}")
    for name, allowed in getattr(cls, "_ranges", {}).items():
        value = getattr(obj, name)
        if isinstance(value, list) and not value:
            raise ConfigError(f"{prefix}{name}: must list at least one value")
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in allowed:
                raise ConfigError(f"{prefix}{name}: {item!r} is out of range; it must be {allowed}")
    return obj


def _validate(cfg: Config) -> None:
    """Checks across keys, and the names only the core's registries know; the first problem is the error."""
    from logdiff_core import noise, samplers, transforms
    from logdiff_core.schedules import make_betas

    from tasks.sources import SOURCES

    if not NAME_PATTERN.fullmatch(cfg.name):
        raise ConfigError(f"name: {cfg.name!r} names the experiment and its folder; use letters, digits, '.', '-' "
                          "and '_' only")
    if cfg.workdir is not None:
        work = Path(cfg.workdir)
        if work.is_absolute() or ".." in work.parts or work == Path("."):
            raise ConfigError(f"workdir: {cfg.workdir!r} must be a subfolder of the project (relative, no '..', "
                              "not '.'): the pipeline replaces the folders it writes there. Leave it unset for "
                              f"artifacts/{cfg.name}")
    for name, params in cfg.diffusion.distributions.items():
        if not MODEL_NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"diffusion.distributions: {name!r} names a model (its DVC stages, folders and registry "
                              "entry): use letters, digits and '_' only, e.g. stable_15")
        try:
            noise.get(name, **params)
        except ValueError as err:
            raise ConfigError(f"diffusion.distributions.{name}: {err}") from None
    if not cfg.diffusion.distributions:
        raise ConfigError("diffusion.distributions: name at least one noise distribution")
    try:
        make_betas(cfg.diffusion.schedule, cfg.diffusion.timesteps, cfg.diffusion.beta_start, cfg.diffusion.beta_end,
                   cfg.diffusion.power)
    except ValueError as err:
        raise ConfigError(f"diffusion: {err}") from None
    try:
        samplers.check_sampler(cfg.sample.sampler, cfg.sample.options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.sample.steps > cfg.diffusion.timesteps:
        raise ConfigError(f"sample.steps: {cfg.sample.steps} exceeds diffusion.timesteps ({cfg.diffusion.timesteps})")
    if cfg.sample.restarts and cfg.sample.restart_t >= cfg.diffusion.timesteps:
        raise ConfigError(f"sample.restart_t: {cfg.sample.restart_t} is not a timestep of the schedule; use 0.."
                          f"{cfg.diffusion.timesteps - 1} (diffusion.timesteps - 1), or sample.restarts=0")
    if cfg.sample.restarts and cfg.sample.restart_steps > cfg.sample.restart_t + 1:
        raise ConfigError(f"sample.restart_steps: {cfg.sample.restart_steps} exceeds the {cfg.sample.restart_t + 1} "
                          "timesteps from sample.restart_t down to 0")
    if len(set(cfg.train.seeds)) != len(cfg.train.seeds):
        raise ConfigError(f"train.seeds: name each seed once, got {cfg.train.seeds}")
    for name in cfg.diffusion.transforms:
        if name not in transforms.names():
            raise ConfigError(f"diffusion.transforms: {name!r} is not one of: {', '.join(transforms.names())}")
    if not cfg.diffusion.transforms or len(set(cfg.diffusion.transforms)) != len(cfg.diffusion.transforms):
        raise ConfigError(f"diffusion.transforms: name each transform once, got {cfg.diffusion.transforms}")
    source = SOURCES[cfg.data.source]
    if source.path == "required" and not cfg.data.path:
        raise ConfigError(f"data.path: data.source={cfg.data.source} reads {source.what}; set data.path to it")
    data_transforms = [name for name in cfg.diffusion.transforms if name != "identity"]
    if data_transforms and source.kind == "image":
        raise ConfigError(f"diffusion.transforms: {data_transforms[0]} is for positive array data; data.source="
                          f"{cfg.data.source} is images: use diffusion.transforms=[identity]")
    if cfg.diffusion.labels and source.kind == "image":
        raise ConfigError(f"diffusion.labels: models class labels beside array features; data.source="
                          f"{cfg.data.source} is images: set diffusion.labels=false")
    if source.kind == "array" and (cfg.autoencoder.kind, cfg.network.kind) != ("none", "mlp"):
        raise ConfigError(f"data.source={cfg.data.source} is array data: set autoencoder.kind=none and network.kind=mlp")
    network = cfg.network
    if network.kind == "unet" and network.attention_resolution > 0:
        for mult in network.channel_mults:
            if network.base_channels * mult % network.num_heads:
                raise ConfigError(f"network.num_heads: {network.num_heads} must divide every attention width "
                                  f"(network.base_channels x channel_mults = {network.base_channels * mult})")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; an empty dict stays a leaf so its key is kept."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def overrides_between(base: Config, cfg: Config) -> list[str]:
    """What turns ``base`` into ``cfg``, in the override grammar of ``logdiff run`` and ``dvc exp run -S``:
    ``key=value`` changed, ``+key=value`` added (a mapping's new entry), ``~key`` removed; the location left out."""
    before, after = flatten(base.settings()), flatten(cfg.settings())

    def shown(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    return ([f"{'' if key in before else '+'}{key}={shown(value)}" for key, value in after.items()
             if before.get(key, ...) != value] + [f"~{key}" for key in before if key not in after])


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "distributions":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "params")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; presets: {', '.join(preset_names())}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return raw


def _resolve_file(preset_or_path: str) -> Path:
    candidate = Path(preset_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    path = CONF_DIR / f"{preset_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {preset_or_path!r}; presets: {', '.join(preset_names())} (or a .yaml path)")
    return path


def _raw_with_extends(preset_or_path: str, seen: tuple = ()) -> dict:
    path = _resolve_file(preset_or_path)
    raw = read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if parent in seen:
        raise ConfigError(f"{path}: 'extends' loops back to {parent!r}")
    inherited = _raw_with_extends(parent, seen + (parent,))
    inherited.pop("budget", None)  # what the parent was measured to take says nothing of this preset
    return _merge(inherited, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.steps=500)")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = _merge({}, raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return raw


def from_dict(raw: dict) -> Config:
    cfg = _build(Config, raw, "")
    _validate(cfg)
    return cfg


def from_run_dict(raw: dict) -> Config:
    """A running config sent to another process (``Config.to_dict``): its settings validated as on load, its
    workdir (the experiment folder, absolute by then) kept as it is."""
    return dataclasses.replace(from_dict({k: v for k, v in raw.items() if k != "workdir"}), workdir=raw["workdir"])


def load(preset_or_path: str = "demo", overrides: list[str] | None = None) -> Config:
    """Load a preset name (``conf/<name>.yaml``) or a YAML path, apply ``key=value`` overrides, validate."""
    return from_dict(apply_overrides(_raw_with_extends(preset_or_path), overrides or []))


def dump(cfg: Config, path: str | Path) -> None:
    """The whole resolved config as YAML (``params.yaml``)."""
    write_yaml(path, cfg.to_dict())


def write_yaml(path: str | Path, data: dict) -> None:
    from tasks.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
