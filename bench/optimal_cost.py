"""The optimal denoiser's cost per call against the number of training points it averages over, on one thread.

    .venv/bin/python bench/optimal_cost.py                          # the demo's latents (48 numbers) and CIFAR-10's
    .venv/bin/python bench/optimal_cost.py --dims 48 --points 1348 5000 --rows 64

Prints, per latent size, noise and number of points, the CPU-seconds of one call on ``--rows`` rows (one sampling
step of that many samples) and the cost per kernel evaluation (row x point x latent number), the unit of
``tasks.copying.OPTIMAL_BUDGET``. Gaussian noise takes one matrix product; the others evaluate the noise's
log-density at every coordinate.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from logdiff_core import noise  # noqa: E402
from logdiff_core.optimal import OptimalDenoiser  # noqa: E402
from logdiff_core.schedules import Schedule  # noqa: E402


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[48, 1024], help="latent numbers per sample")
    parser.add_argument("--points", type=int, nargs="+", default=[1348, 5000, 20000])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--noises", nargs="+", default=["gaussian", "laplace", "uniform", "exponential"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    schedule = Schedule.from_config("linear", 1000)
    generator = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'latent numbers':>14}{'noise':>13}{'points':>8}{'CPU-s per call':>16}{'ns per kernel evaluation':>26}")
    for dims in args.dims:
        x = torch.randn(args.rows, dims, generator=generator)
        for name in args.noises:
            for points in args.points:
                denoiser = OptimalDenoiser(torch.randn(points, dims, generator=generator), schedule, noise.get(name))
                started = time.process_time()
                for t in torch.linspace(50, 950, args.repeats).long().tolist():
                    denoiser.denoise(x, t)
                seconds = (time.process_time() - started) / args.repeats
                rows.append((dims, name, points, seconds))
                print(f"{dims:>14}{name:>13}{points:>8}{seconds:>16.3f}"
                      f"{seconds / (args.rows * points * dims) * 1e9:>26.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
