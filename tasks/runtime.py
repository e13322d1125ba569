"""Small runtime helpers shared by the stages: device choice and seeding."""
from __future__ import annotations

import os
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


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or ``taskset``'s limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def budget_warning(budget, train_device: str, bf16_wanted: bool, cores: int | None = None,
                   bf16_units: bool | None = None) -> str | None:
    """One line when a fresh run of a preset will not fit its budget (``budget``: its ``BudgetConfig``) on the CPU
    this finds: its measured time scaled by the cores (fewer than measured: proportionally longer) and by bf16
    (measured with bf16 units, run without them or with bf16 off: ``float32_factor``). None when it fits, when the
    preset has no budget, or on a GPU (the budgets are CPU figures)."""
    if not budget.minutes or not budget.measured_minutes or resolve_device(train_device).type == "cuda":
        return None
    cores = usable_cores() if cores is None else cores
    bf16_units = bf16_enabled(torch.device("cpu")) if bf16_units is None else bf16_units
    factor = max(1.0, budget.measured_cores / cores)
    reasons = [f"{cores} CPU core{'s' * (cores != 1)}"]
    if budget.measured_bf16 and not (bf16_units and bf16_wanted):
        factor *= budget.float32_factor
        reasons.append("no bf16 units" if bf16_wanted else "bf16 off")
    expected = budget.measured_minutes * factor
    if expected <= budget.minutes:
        return None
    return (f"a fresh run takes about {expected:.0f} minutes here ({', '.join(reasons)}), over its {budget.minutes:g}"
            f"-minute budget (measured {budget.measured_minutes:g} minutes on {budget.measured_cores} cores"
            f"{' with bf16' if budget.measured_bf16 else ''}); fewer train.steps make it shorter")
