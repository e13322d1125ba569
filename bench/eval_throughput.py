"""Inception feature-extraction throughput and the wall time of one FID evaluation of N samples.

    python bench/eval_throughput.py --device cuda --num-samples 10000
    python bench/eval_throughput.py --device cpu --num-samples 200 --batch-size 16

Uses the real pt_inception-2015-12-05 weights when they can be found (--weights, $LOGDIFF_FID_WEIGHTS, the torch
hub cache, a download); otherwise randomly initialised ones, which time the same.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from logdiff_core.metrics import feature_statistics, frechet_distance  # noqa: E402
from tasks.fid import (FIDUnavailable, InceptionFeatures, reference_features,  # noqa: E402
                       resolve_fid_weights, write_random_inception_weights)

TIMED_BATCHES = 3
IMAGE_SHAPE = (3, 32, 32)  # CIFAR-sized; Inception resizes every input to 299 px, so the size barely matters


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--weights", help="local pt_inception-2015-12-05 file (default: as the pipeline finds it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)")
    batch_size = min(args.batch_size, args.num_samples)
    rng = np.random.default_rng(0)

    def random_images(n: int) -> np.ndarray:
        return rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            weights, weights_note = resolve_fid_weights(args.weights), "real weights"
        except FIDUnavailable as err:
            if args.weights:  # an explicit path that is wrong is the user's mistake, not a reason to fake it
                raise SystemExit(str(err)) from None
            weights = write_random_inception_weights(Path(tmp) / "random_inception.pth")
            weights_note = f"RANDOMLY INITIALISED weights (timing is unaffected; the FID value is meaningless): {err}"
        print(f"device: {device_name}\nweights: {weights_note}")
        extractor = InceptionFeatures(weights, device)

        batch = random_images(batch_size)
        extractor(batch, batch_size)  # warm-up: cuDNN autotuning, oneDNN primitive creation
        seconds = []
        for _ in range(TIMED_BATCHES):
            start = time.perf_counter()
            extractor(batch, batch_size)  # returns a CPU array, so CUDA work is finished when it returns
            seconds.append(time.perf_counter() - start)
        print(f"feature extraction: {batch_size / statistics.median(seconds):.1f} images/s "
              f"(median of {TIMED_BATCHES} batches of {batch_size})")

        start = time.perf_counter()
        ref_stats = feature_statistics(reference_features(random_images(args.num_samples), extractor,
                                                          Path(tmp) / "reference.npz"))
        reference_s = time.perf_counter() - start
        start = time.perf_counter()
        features = extractor(random_images(args.num_samples), batch_size)
        features_s = time.perf_counter() - start
        fid = frechet_distance(*feature_statistics(features), *ref_stats)
        statistics_s = time.perf_counter() - start - features_s
        print(f"reference features of {args.num_samples} images (cached after the first run): {reference_s:.1f} s")
        print(f"evaluate {args.num_samples} samples: {features_s + statistics_s:.1f} s (features {features_s:.1f} s, "
              f"statistics + FID {statistics_s:.1f} s); FID {fid:.3f} at N={args.num_samples}")

if __name__ == "__main__":
    main()
