"""The data-copying test's cost at a dataset's scale, on synthetic feature rows, in CPU-seconds.

    .venv/bin/python bench/copying_cost.py                                  # CIFAR-10 sized: 10,000 training rows
    .venv/bin/python bench/copying_cost.py --train 45000 --dims 512         # the full CIFAR-10 training split

Times each piece as the pipeline runs it (``tasks.copying``): once per data version in the baselines stage (the
reference: nearest neighbours of the held-out rows, k-means cells, each training row's region scale, the intrinsic
dimension) and once per model in the evaluate stage (the test of ``--generated`` samples: their nearest
neighbours, C_T, the copying rate). Rows are drawn from a Gaussian mixture in ``--dims`` dimensions (the judge's
features: 512 for the CIFAR-10 preset's ResNet-9); the costs depend on the sizes, not on the values.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from logdiff_core import copying  # noqa: E402
from tasks.copying import COPYING_SAMPLES, HELD_OUT_PER_CELL, MAX_CELLS, NEIGHBOURS  # noqa: E402


def timed(what: str, rows: list, run):
    started = time.process_time()
    result = run()
    rows.append((what, time.process_time() - started))
    print(f"{what:<52}{rows[-1][1]:>10.1f}", flush=True)
    return result


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--held-out", type=int, default=1_000)
    parser.add_argument("--generated", type=int, default=COPYING_SAMPLES)
    parser.add_argument("--dims", type=int, default=512)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, args.dims))
    draw = lambda n: centres[rng.integers(0, 10, n)] + 0.5 * rng.normal(size=(n, args.dims))  # noqa: E731
    train, held_out, generated = draw(args.train), draw(args.held_out), draw(args.generated)
    cells = int(np.clip(args.held_out // HELD_OUT_PER_CELL, 1, MAX_CELLS))
    rows: list[tuple[str, float]] = []
    print(f"{args.train} training, {args.held_out} held-out, {args.generated} generated rows of {args.dims} numbers; "
          f"{cells} cells")
    print(f"{'piece':<52}{'CPU-s':>10}")
    timed("reference: held-out nearest neighbours", rows, lambda: copying.nearest(held_out, train))
    centroids = timed("reference: k-means cells", rows, lambda: copying.kmeans_cells(train, cells))
    scales = timed("reference: region scales (5th neighbour of each row)", rows,
                   lambda: copying.region_scales(train, NEIGHBOURS))
    dimension = timed("reference: intrinsic dimension", rows, lambda: copying.intrinsic_dimension(train))
    timed("per model: nearest neighbours of the samples", rows, lambda: copying.nearest(generated, train))
    timed("per model: C_T", rows, lambda: copying.data_copying_statistic(train, held_out, generated, centroids))
    timed("per model: copying rate", rows, lambda: copying.copying_rate(train, generated, dimension,
                                                                        neighbours=NEIGHBOURS, scales=scales))
    reference = sum(seconds for what, seconds in rows if what.startswith("reference"))
    print(f"{'reference, once per data version':<52}{reference:>10.1f}")
    print(f"{'test, per model and feature space':<52}{sum(s for _, s in rows) - reference:>10.1f}")
    return rows


if __name__ == "__main__":
    main()
