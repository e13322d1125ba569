"""Small runtime helpers shared by the stages: device choice and seeding."""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name} but no CUDA GPU is visible; use train.device=auto or cpu")
    return device


def bf16_enabled(device: torch.device, wanted: bool = True) -> bool:
    """Whether training autocasts to bfloat16: on CUDA when wanted, and on CPUs with native bfloat16 matrix units
    (AVX512-BF16, AMX), where it trains small MLPs ~1.5x faster; elsewhere on CPU it would be emulated, slower
    than float32, so it stays off."""
    if device.type == "cuda":
        return wanted
    if device.type != "cpu":  # other accelerators (mps, ...) train in float32, as before CPU bf16
        return False
    try:
        return wanted and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def bf16_autocast(device: torch.device, wanted: bool = True) -> torch.autocast:
    """The bfloat16 autocast context of ``bf16_enabled``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(device, wanted))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch generator for the stage's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


StepCallback = Callable[[int, dict], None]
"""Called as ``callback(step, metrics)`` by training loops, from whichever process trains."""
