"""A trained model as one safe file (``model.safetensors``): EMA denoiser + schedule + noise + codec, the settings
as JSON in the file's header, nothing pickled. Load it and sample."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from logdiff_core import noise as noise_lib
from logdiff_core import samplers, time_schedules
from logdiff_core.diffusion import EpsPreconditioner
from logdiff_core.networks import SHARED_CONFIG_KEYS, build_denoiser
from logdiff_core.progress import progress_bar
from logdiff_core.schedules import Schedule
from logdiff_core.streams import SampleStreams

from .codec import Codec
from .config import SampleConfig
from .io import load_safetensors, save_safetensors, under_prefix, with_prefix
from .paths import MODEL_FILE
from .runtime import resolve_device


def network_spec(config: dict, latent_shape: tuple) -> dict:
    network = config["network"]
    return {"kind": network["kind"], "data_shape": list(latent_shape),
            "kwargs": {k: network[k] for k in sorted(SHARED_CONFIG_KEYS)}}


def schedule_from(config: dict) -> Schedule:
    d = config["diffusion"]
    return Schedule.from_config(d["schedule"], d["timesteps"], d["beta_start"], d["beta_end"], d["power"])


def build_network(spec: dict, schedule: Schedule) -> nn.Module:
    """The backbone of ``spec`` inside the epsilon preconditioning (latents and arrays are at unit scale)."""
    return EpsPreconditioner(build_denoiser(spec["kind"], tuple(spec["data_shape"]), **spec["kwargs"]), schedule)


@dataclass
class Generated:
    data: np.ndarray  # uint8 [n, C, H, W] images or float [n, F] arrays, in the data's units
    latents: torch.Tensor  # the samples in the diffusion space, before decoding
    trajectories: samplers.SampleResult | None  # both trajectories of the first samples of the same call
    evaluations: int  # network evaluations per sample


@dataclass
class TrainedModel:
    denoiser: nn.Module
    schedule: Schedule
    noise: noise_lib.NoiseDistribution
    codec: Codec
    distribution: str
    config: dict
    feature_names: list[str] | None = None  # array data: column names in the original units
    time_fit: time_schedules.FittedSchedule | None = None  # the fitted time schedule (saved with the model)

    def fitted_schedule(self, device: str = "auto") -> time_schedules.FittedSchedule:
        """The model's fitted time schedule; a model saved without one (before fits were stored, or made in
        memory) is fitted now, once: about ``time_schedules.CANDIDATES`` evaluations of the warm-up samples."""
        if self.time_fit is None:
            self.time_fit = fit_time_schedule(self.denoiser, self.schedule, self.noise, self.codec.latent_shape,
                                              resolve_device(device))
        return self.time_fit

    def grid(self, time_schedule: str, steps: int, start: int | None = None, device: str = "auto") -> list[int]:
        """``steps`` timesteps under ``time_schedule``, from ``start`` (a restart's; default the last timestep)."""
        fitted = self.fitted_schedule(device) if time_schedule == "fitted" else None
        return time_schedules.grid(time_schedule, self.schedule.alpha_bars64, steps, start=start, fitted=fitted)

    @torch.no_grad()
    def sample(self, n: int, *, sampler: str | None = None, steps: int | None = None, options: dict | None = None,
               time_schedule: str | None = None, langevin_steps: int | None = None, langevin_snr: float | None = None,
               restarts: int | None = None, restart_t: int | None = None, restart_steps: int | None = None,
               batch_size: int | None = None, seed: int = 0, device: str = "auto", progress: bool = True,
               trajectories: int = 0) -> Generated:
        """``n`` samples, and the sampling and denoising trajectories of the first ``trajectories`` of them.

        Unset options fall back to the ``sample`` section of the config the model was trained with (for keys
        that config predates, to today's defaults); a sampler other than that config's starts from its own
        default ``options``. Sample ``i`` depends on ``seed`` and ``i`` only (``streams.SampleStreams``), not on
        ``batch_size``.
        """
        defaults = model_sample_defaults(self.config["sample"])
        given = {"sampler": sampler, "steps": steps, "options": options, "time_schedule": time_schedule,
                 "langevin_steps": langevin_steps, "langevin_snr": langevin_snr, "restarts": restarts,
                 "restart_t": restart_t, "restart_steps": restart_steps}
        if sampler not in (None, defaults["sampler"]):
            defaults["options"] = {}
        opts = {key: defaults[key] if value is None else value for key, value in given.items()}
        batch_size = batch_size or defaults["batch_size"]
        dev = resolve_device(device)
        self.denoiser.to(dev).eval()
        schedule = self.schedule.to(dev)
        time_schedule = opts.pop("time_schedule")
        opts["steps"] = self.grid(time_schedule, opts["steps"], device=str(dev))
        if opts["restarts"]:
            opts["restart_steps"] = self.grid(time_schedule, opts["restart_steps"], opts["restart_t"], str(dev))
        outputs, latents, kept, evaluations = [], [], None, 0
        batches = math.ceil(n / batch_size)
        for i in progress_bar(range(batches), desc=f"sampling {self.distribution}",
                              disable=not progress or batches == 1):
            first = i * batch_size
            count = min(batch_size, n - first)
            result = samplers.sample(self.denoiser, schedule, self.noise, (count, *self.codec.latent_shape),
                                     generator=SampleStreams(seed, first, count, dev), device=dev,
                                     progress=progress and batches == 1,
                                     return_trajectories=i == 0 and trajectories > 0, **opts)
            if result.trajectory is not None:
                kept = replace(result, samples=result.samples[:trajectories].cpu(),
                               trajectory=[x[:trajectories] for x in result.trajectory],
                               denoised=[x[:trajectories] for x in result.denoised])
            latents.append(result.samples.cpu())
            outputs.append(self.codec.decode(result.samples))
            evaluations = result.evaluations
        return Generated(np.concatenate(outputs), torch.cat(latents), kept, evaluations)

    def generate(self, n: int, **options) -> np.ndarray:
        """``n`` samples in data units (see ``sample`` for the options)."""
        return self.sample(n, **options).data


MODEL_FORMAT = "logdiff-model/2"


def model_sample_defaults(section: dict) -> dict:
    """A saved model's ``sample`` settings in today's keys: today's defaults under them, and the ``eta`` of
    models saved before sampler options were one mapping moved into ``options``."""
    section = dict(section)
    eta = section.pop("eta", 0.0)
    defaults = {**asdict(SampleConfig()), **section}
    if "options" not in section and eta and defaults["sampler"] == "ddim":
        defaults["options"] = {"eta": eta}
    return defaults


def fit_time_schedule(denoiser: nn.Module, schedule: Schedule, noise: noise_lib.NoiseDistribution,
                      latent_shape: tuple, device: torch.device | str) -> time_schedules.FittedSchedule:
    """The fitted time schedule of a denoiser, from the same warm-up noise (seed 0) wherever it is fitted."""
    return time_schedules.fit(denoiser.to(device).eval(), schedule.to(device), noise, tuple(latent_shape), seed=0,
                              device=device)


def save_model(path: str | Path, denoiser: nn.Module, spec: dict, distribution: str, params: dict, codec: Codec,
               config: dict, feature_names: list[str] | None = None,
               time_fit: time_schedules.FittedSchedule | None = None) -> Path:
    """Write a trained model: the denoiser's and the codec's tensors (and the fitted time schedule's), and
    everything else as JSON settings."""
    codec_tensors, codec_settings = codec.to_safe()
    tensors = {**with_prefix("denoiser.", denoiser.state_dict()), **with_prefix("codec.", codec_tensors)}
    if time_fit is not None:
        tensors |= with_prefix(TIME_FIT_PREFIX, time_fit.to_tensors())
    settings = {"format": MODEL_FORMAT, "network": spec, "distribution": distribution, "noise_params": params,
                "codec": codec_settings, "config": config, "feature_names": feature_names}
    return save_safetensors(path, tensors, settings)


TIME_FIT_PREFIX = "time_schedule."  # a model file's fitted time schedule (absent from files saved before them)


def load_trained(path: str | Path) -> TrainedModel:
    """Load a model written by the train stage (the file, or the folder holding ``model.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    tensors, settings = load_safetensors(path, "diffusion model")
    if settings.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a LogDiff model file (expected format {MODEL_FORMAT})")
    noise = noise_lib.get(settings["distribution"], **settings["noise_params"])
    schedule = noise.forward_schedule(schedule_from(settings["config"]))
    denoiser = build_network(settings["network"], schedule)
    denoiser.load_state_dict(under_prefix("denoiser.", tensors))
    fit = under_prefix(TIME_FIT_PREFIX, tensors)
    return TrainedModel(denoiser.eval(), schedule, noise,
                        Codec.from_safe(under_prefix("codec.", tensors), settings["codec"]),
                        settings["distribution"], settings["config"], settings.get("feature_names"),
                        time_schedules.FittedSchedule.from_tensors(fit) if fit else None)
