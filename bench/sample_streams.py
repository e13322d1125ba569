"""What per-sample seeding costs: one noise draw for a batch of the demo's latents from one generator (the
pipeline until now: samples depended on the batch size), from a generator per block of 64 samples (what
``streams.SampleStreams`` does) and from a generator per sample (EDM's StackedRandomGenerator), beside one network
evaluation of the demo's denoiser, in CPU-milliseconds on one thread.

    .venv/bin/python bench/sample_streams.py
    .venv/bin/python bench/sample_streams.py --batch-size 256 --shape 4 16 16    # CIFAR-10's latents

DDIM, Heun and the multistep solvers draw once per sample (x_T) and once per restart; ancestral sampling and the
Langevin corrector draw at every step, so there the draw's cost is paid per network evaluation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from logdiff_core import noise, streams  # noqa: E402
from logdiff_core.mlp import MLPDenoiser  # noqa: E402


def cpu_ms(work, repeats: int) -> float:
    work()
    started = time.process_time()
    for _ in range(repeats):
        work()
    return (time.process_time() - started) / repeats * 1e3


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1000, help="the demo's sample.batch_size")
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 4, 4], help="per-sample latent shape")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape = (args.batch_size, *args.shape)
    net = MLPDenoiser(int(torch.tensor(args.shape).prod()), hidden=256, layers=3, time_dim=64).eval()
    x, t = torch.randn(shape), torch.full((args.batch_size,), 500)
    with torch.no_grad():
        network = cpu_ms(lambda: net(x, t), args.repeats)
    print(f"one network evaluation of the demo's denoiser, {args.batch_size} samples: {network:.2f} CPU-ms")
    print(f"| noise | one generator | blocks of {streams.BLOCK} | one per sample | (CPU-ms per draw of "
          f"{args.batch_size} x {tuple(args.shape)}) |\n| --- | ---: | ---: | ---: | |")
    rows = []
    for name in noise.names():
        distribution = noise.get(name)
        generator = torch.Generator().manual_seed(0)
        single = cpu_ms(lambda: distribution.sample(shape, generator=generator), args.repeats)
        blocks = streams.SampleStreams(0, 0, args.batch_size)
        blocked = cpu_ms(lambda: blocks.draw(distribution, shape), args.repeats)
        per_sample = [torch.Generator().manual_seed(i) for i in range(args.batch_size)]
        stacked = cpu_ms(lambda: torch.stack([distribution.sample(shape[1:], generator=g) for g in per_sample]),
                         max(1, args.repeats // 5))
        rows.append((name, single, blocked, stacked))
        print(f"| {name} | {single:.2f} | {blocked:.2f} | {stacked:.1f} | |", flush=True)
    return rows


if __name__ == "__main__":
    main()
