"""Denoiser registry: build a network by name from the data shape and the shared network config."""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import nn

from logdiff_core.mlp import MLPDenoiser
from logdiff_core.unet import UNet

# Config keys every caller passes; each network silently drops the ones it does not take.
SHARED_CONFIG_KEYS = frozenset({"base_channels", "channel_mults", "attention_resolution", "num_heads", "siren",
                                "dropout", "hidden", "layers", "time_dim"})


class DenoiserSpec(NamedTuple):
    network: type[nn.Module]
    data_shape: str  # the expected shape, for error messages
    data_kwargs: Callable[..., dict[str, int]]  # called with *data_shape; returns the shape-derived arguments


DENOISERS: dict[str, DenoiserSpec] = {
    "unet": DenoiserSpec(UNet, "(C, H, W)", lambda c, h, w: {"in_channels": c, "input_size": h}),
    "mlp": DenoiserSpec(MLPDenoiser, "any: (F,), or (C, H, W) flattened", lambda *shape: {"dim": math.prod(shape)}),
}


def build_denoiser(kind: str, data_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """Build denoiser ``kind`` for data of ``data_shape``; non-shared keyword arguments must be accepted."""
    if kind not in DENOISERS:
        raise ValueError(f"unknown denoiser kind {kind!r}; choose one of {sorted(DENOISERS)}")
    spec = DENOISERS[kind]
    parameters = inspect.signature(spec.data_kwargs).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if not takes_any and len(data_shape) != len(parameters):
        raise ValueError(f"denoiser {kind!r} needs data_shape {spec.data_shape}, got {tuple(data_shape)}")
    accepted = inspect.signature(spec.network).parameters
    config = {k: v for k, v in kwargs.items() if k in accepted or k not in SHARED_CONFIG_KEYS}
    return spec.network(**spec.data_kwargs(*data_shape), **config)


def count_parameters(module: nn.Module) -> int:
    """Total number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
