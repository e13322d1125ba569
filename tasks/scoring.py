"""How generated samples are scored, for every stage that scores: standard FID/KID when the Inception weights
can be had, the weight-free distances that always work offline, the real-vs-real floor for array data, and the
metric champions are chosen by.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from logdiff_core import noise as noise_lib
from logdiff_core.metrics import (array_metrics, feature_statistics, fraction_non_positive,
                                  kernel_inception_distance, sliced_wasserstein_distance)

from .codec import load_codec
from .config import Config, Variant
from .data import load_split
from .fid import FIDUnavailable, InceptionFeatures, fid_from_features, reference_statistics, resolve_fid_weights
from .paths import data_dir
from .runtime import resolve_device
from .sample import TrainedModel, schedule_from

# Lower is better for every metric a champion can be chosen by.
WEIGHT_FREE = {"image": "swd_mean", "array": "wasserstein"}


def subset(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` rows of ``values``, drawn without replacement with ``seed``, in stored order."""
    if len(values) <= n:
        return values
    return values[np.sort(np.random.default_rng(seed).choice(len(values), n, replace=False))]


def image_fid(cfg: Config, generated: np.ndarray, reference: np.ndarray, stats_cache: Path | None) -> dict:
    """FID and KID of uint8 images against ``reference``; ``{"fid_unavailable": reason}`` without weights."""
    if not cfg.eval.fid:
        return {}
    try:
        extractor = InceptionFeatures(resolve_fid_weights(cfg.eval.fid_weights), resolve_device(cfg.train.device))
    except FIDUnavailable as err:
        if cfg.eval.fid_required:
            raise FIDUnavailable(f"{err} (eval.fid_required is true)") from None
        return {"fid_unavailable": str(err)}
    if stats_cache is not None:
        ref_features = None
        ref_stats = reference_statistics(reference, extractor, stats_cache)
    else:
        ref_features = extractor(reference)
        ref_stats = feature_statistics(ref_features)
    features = extractor(generated)
    result = {"fid": fid_from_features(features, ref_stats), "fid_samples": len(generated),
              "fid_reference_samples": len(reference)}
    if ref_features is not None:
        result["kid"], result["kid_std"] = kernel_inception_distance(features, ref_features)
    return result


def sample_metrics(cfg: Config, kind: str, generated: np.ndarray, reference: np.ndarray,
                   stats_cache: Path | None = None) -> dict:
    """The metrics of ``generated`` against ``reference`` for this data kind (weight-free always, FID if it can)."""
    if kind == "image":
        return {**sliced_wasserstein_distance(generated, reference), **image_fid(cfg, generated, reference, stats_cache)}
    return array_metrics(generated, reference)


def champion_metric(cfg: Config, kind: str, metrics: dict) -> str:
    """The metric champions are chosen by: ``eval.champion_metric``, or FID when available, else weight-free."""
    if cfg.eval.champion_metric != "auto":
        if cfg.eval.champion_metric not in metrics:
            raise ValueError(f"eval.champion_metric={cfg.eval.champion_metric} was not computed; "
                             f"available: {', '.join(sorted(k for k, v in metrics.items() if isinstance(v, float)))}")
        return cfg.eval.champion_metric
    return "fid" if "fid" in metrics else WEIGHT_FREE[kind]


def array_metrics_with_floor(generated: np.ndarray, held_out: np.ndarray, train: np.ndarray, seed: int) -> dict:
    """Array metrics of ``generated`` vs ``held_out`` and the real-vs-real floor (``floor_*``), at equal sample
    sizes: the floor compares ``m`` training rows with the held-out split, and the generated figures are the
    mean over disjoint chunks of ``m`` samples. (A sample-size mismatch biases a distance: more rows, less noise.)"""
    m = min(len(train), len(generated))
    floor = array_metrics(subset(train, m, seed), held_out)
    chunks = [array_metrics(generated[i:i + m], held_out) for i in range(0, len(generated) - m + 1, m)]
    metrics = {k: float(np.mean([c[k] for c in chunks])) for k in chunks[0]}
    metrics["frac_non_positive"] = fraction_non_positive(generated)  # over every sample, not the chunks
    return {**metrics, "metric_sample_size": m, **{f"floor_{k}": v for k, v in floor.items()}}


def curve_evaluator(cfg: Config, variant: Variant, num_samples: int = 256):
    """For training curves: the weight-free distance (and FID when available) of the EMA model every k steps."""
    codec = load_codec(cfg, variant.transform)
    reference_split = load_split(data_dir(cfg), "train" if codec.kind == "image" else "val")
    reference = subset(reference_split.values, num_samples, cfg.seed)
    schedule = schedule_from(cfg.to_dict())
    noise = noise_lib.get(variant.distribution, **cfg.diffusion.distributions[variant.distribution])

    def evaluate_now(ema_model: torch.nn.Module, step: int) -> dict:
        model = TrainedModel(ema_model, schedule, noise, codec, variant.distribution, cfg.to_dict())
        device = next(ema_model.parameters()).device
        generated = model.generate(len(reference), seed=cfg.seed + step, device=str(device), progress=False)
        metrics = sample_metrics(cfg, codec.kind, generated, reference)
        return {f"curve_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}

    return evaluate_now
