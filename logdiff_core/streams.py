"""Random draws per sample, so that a sample depends on the seed and its index only, never on how many samples are
drawn at once (``sample.batch_size``) or on which batch it falls in: EDM's ``StackedRandomGenerator``, by blocks.

Sample ``i`` of a run seeded ``seed`` takes its draws from row ``i % BLOCK`` of a generator of its own block,
seeded from ``(seed, i // BLOCK)``. Every draw of a batch draws whole blocks (the rows of a block that a batch does
not hold are drawn and dropped), so the same rows come out whatever the batch. One generator call per block of
``BLOCK`` samples, not per sample: a per-sample generator (EDM's) made every noise draw of the demo's 1,000-sample
batches cost about as much as a network evaluation (docs/sampling.md), and the ancestral sampler draws at every step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .noise import NoiseDistribution

BLOCK = 64  # samples per generator; part of what a seed means, so changing it changes every sample


def block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for block ``block`` of a run seeded ``seed``, from NumPy's SeedSequence (no two runs' or
    blocks' streams overlap by construction, unlike ``seed + block``)."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SampleStreams:
    """The random draws of samples ``first .. first + count - 1`` of a run seeded ``seed``, each from its own
    stream; pass it where a sampler takes a ``torch.Generator``."""

    def __init__(self, seed: int, first: int, count: int, device: torch.device | str = "cpu") -> None:
        if count < 1 or first < 0:
            raise ValueError(f"need first >= 0 and count >= 1, got first={first}, count={count}")
        blocks = range(first // BLOCK, (first + count - 1) // BLOCK + 1)
        self.generators = [torch.Generator(device=device).manual_seed(block_seed(seed, b)) for b in blocks]
        self.offset = first - blocks[0] * BLOCK
        self.count = count
        self.device = torch.device(device)

    def draw(self, noise: NoiseDistribution, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``count`` draws of ``noise`` of per-sample shape ``shape[1:]`` (``shape[0]`` must be ``count``)."""
        return self.draw_with(lambda block, g: noise.sample(block, generator=g, device=self.device, dtype=dtype), shape)

    def draw_with(self, draw: Callable[[tuple, torch.Generator], torch.Tensor], shape) -> torch.Tensor:
        """``count`` rows of any law: ``draw(block_shape, generator)`` called per block (an alpha-stable noise's
        subordinators, for instance); ``shape[0]`` must be ``count``."""
        if shape[0] != self.count:
            raise ValueError(f"these streams draw for {self.count} samples, asked for {shape[0]}")
        rows = [draw((BLOCK, *shape[1:]), g) for g in self.generators]
        return torch.cat(rows)[self.offset:self.offset + self.count]
