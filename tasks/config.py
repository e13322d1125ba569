"""Typed, validated pipeline configuration.

A config is a preset YAML (``conf/<preset>.yaml``) optionally extending another preset, plus command-line
overrides ``section.key=value``. Every key is checked on load: an unknown key, a wrong type or a value outside
its choices raises ``ConfigError`` with a one-line message naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(os.environ.get("LOGDIFF_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))


IMAGE_SOURCES = ("digits", "cifar10", "folder")


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key."""


@dataclass
class DataConfig:
    source: str = "digits"  # digits | breast_cancer | wine | cifar10 | folder | arrays
    path: str | None = None  # folder, zip, .npy/.npz/.parquet, or CIFAR-10 root / tarball
    download: bool = True  # cifar10 only: download when not found locally
    image_size: int | None = None  # resize images to this size; None keeps the source size
    channels: int | None = None  # 1 (grey) or 3 (RGB); None keeps the source's
    val_fraction: float = 0.1
    limit: int | None = None  # keep at most this many examples (after shuffling)
    shard_rows: int = 10000
    on_bad_input: str = "skip"  # skip | error

    _choices = {"source": ("digits", "breast_cancer", "wine", "cifar10", "folder", "arrays"),
                "on_bad_input": ("skip", "error"), "channels": (None, 1, 3)}


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

    _choices = {"kind": ("conv", "none"), "downsample": (1, 2, 4)}


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

    _choices = {"kind": ("unet", "mlp")}


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

    _choices = {"schedule": ("linear", "quadratic", "polynomial", "cosine")}


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
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

    _choices = {}


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddpm | ddim | heun
    steps: int = 50
    eta: float = 0.0  # ddim only
    langevin_steps: int = 0  # Langevin corrector steps after each predictor step
    langevin_snr: float = 0.16
    batch_size: int = 256

    _choices = {}


@dataclass
class EvalConfig:
    num_samples: int = 1000
    fid: bool = True  # compute FID/KID for image data when the Inception weights can be had
    fid_weights: str | None = None  # local pt_inception-2015-12-05 file; default: $LOGDIFF_FID_WEIGHTS or download
    fid_required: bool = False  # true: a missing FID is an error rather than "unavailable"
    champion_metric: str = "auto"  # auto: fid when available, else the weight-free distance
    grid_size: int = 64

    _choices = {}


@dataclass(frozen=True)
class Variant:
    """One model the pipeline trains: a noise distribution under a data transform."""

    distribution: str
    transform: str

    @property
    def name(self) -> str:
        """Stage and folder name, as DVC's matrix names it: ``laplace-identity``."""
        return f"{self.distribution}-{self.transform}"

    @property
    def label(self) -> str:
        """Registry and display name: the distribution, suffixed with the transform unless it is identity."""
        return self.distribution if self.transform == "identity" else self.name


@dataclass
class Config:
    name: str = "demo"
    seed: int = 0
    workdir: str | None = None  # the experiment's folder, relative to the project; default artifacts/<name>
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self, *sections: str) -> dict:
        """The config without ``workdir`` (a location, not a setting), or only ``sections`` of it: what is saved
        beside outputs, so that the flow (absolute paths) and ``dvc repro`` (relative paths) write identical files."""
        settings = {k: v for k, v in self.to_dict().items() if k != "workdir"}
        return {k: settings[k] for k in sections} if sections else settings

    def model_settings(self, variant: Variant) -> dict:
        """The config as it concerns one model: the other distributions and transforms left out, so that changing
        one distribution changes nothing about the others (as DVC's per-model params say)."""
        settings = self.settings()
        settings["diffusion"] = {**settings["diffusion"], "transforms": [variant.transform],
                                 "distributions": {variant.distribution: self.diffusion.distributions[variant.distribution]}}
        return settings

    @property
    def work(self) -> Path:
        """The experiment's folder: ``workdir``, or ``artifacts/<name>``."""
        return Path(self.workdir) if self.workdir else Path("artifacts") / self.name

    def variants(self) -> list[Variant]:
        """Every model to train, in ``dvc.yaml``'s matrix order (distribution, then transform)."""
        return [Variant(d, t) for d in self.diffusion.distributions for t in self.diffusion.transforms]

    def variant(self, distribution: str, transform: str | None = None) -> Variant:
        """The configured variant for ``distribution`` (and ``transform``, which may be left out when only one
        transform is configured); ValueError naming the configured choices otherwise."""
        if distribution not in self.diffusion.distributions:
            configured = ", ".join(self.diffusion.distributions)
            raise ValueError(f"distribution {distribution!r} is not in diffusion.distributions ({configured})")
        return Variant(distribution, self.transform(transform))

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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
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
        if getattr(obj, name) not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise ConfigError(f"{prefix}{name}: {getattr(obj, name)!r} is not one of: {shown}")
    return obj


def _validate(cfg: Config) -> None:
    from logdiff_core import noise, samplers, transforms

    for name, params in cfg.diffusion.distributions.items():
        try:
            noise.get(name, **params)
        except ValueError as err:
            raise ConfigError(f"diffusion.distributions.{name}: {err}") from None
    if not cfg.diffusion.distributions:
        raise ConfigError("diffusion.distributions: name at least one noise distribution")
    positive = {
        "data.val_fraction": cfg.data.val_fraction, "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size, "train.lr": cfg.train.lr,
        "diffusion.timesteps": cfg.diffusion.timesteps, "sample.steps": cfg.sample.steps,
        "eval.num_samples": cfg.eval.num_samples, "train.num_workers": cfg.train.num_workers,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if not cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: must be below 1, got {cfg.data.val_fraction}")
    if cfg.sample.steps > cfg.diffusion.timesteps:
        raise ConfigError(f"sample.steps: {cfg.sample.steps} exceeds diffusion.timesteps ({cfg.diffusion.timesteps})")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {cfg.train.ema_decay}")
    for name in cfg.diffusion.transforms:
        if name not in transforms.names():
            raise ConfigError(f"diffusion.transforms: {name!r} is not one of: {', '.join(transforms.names())}")
    if not cfg.diffusion.transforms or len(set(cfg.diffusion.transforms)) != len(cfg.diffusion.transforms):
        raise ConfigError(f"diffusion.transforms: name each transform once, got {cfg.diffusion.transforms}")
    image_data = cfg.data.source in IMAGE_SOURCES
    if "log" in cfg.diffusion.transforms and image_data:
        raise ConfigError(f"diffusion.transforms: log is for positive array data; data.source={cfg.data.source} is "
                          "images: use diffusion.transforms=[identity]")
    if not image_data and (cfg.autoencoder.kind, cfg.network.kind) != ("none", "mlp"):
        raise ConfigError(f"data.source={cfg.data.source} is array data: set autoencoder.kind=none and network.kind=mlp")
    if cfg.sample.sampler not in samplers.names():
        raise ConfigError(f"sample.sampler: {cfg.sample.sampler!r} is not one of: {', '.join(samplers.names())}")


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
    return _merge(_raw_with_extends(parent, seen + (parent,)), raw)


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


def load(preset_or_path: str = "demo", overrides: list[str] | None = None) -> Config:
    """Load a preset name (``conf/<name>.yaml``) or a YAML path, apply ``key=value`` overrides, validate."""
    return from_dict(apply_overrides(_raw_with_extends(preset_or_path), overrides or []))


def dump(cfg: Config, path: str | Path) -> None:
    """The whole resolved config as YAML (``params.yaml``)."""
    write_yaml(path, cfg.to_dict())


def write_yaml(path: str | Path, data: dict) -> None:
    from tasks.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
