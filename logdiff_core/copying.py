"""Does a generator copy its training data? Nearest-neighbour tests on feature rows (pixels, a classifier's
features, latents), pure numpy/torch/scipy.

- ``data_copying_statistic``: C_T of Meehan, Chaudhuri and Dasgupta (2020, "A Non-Parametric Test to Detect
  Data-Copying in Generative Models"). The training set is cut into k-means cells; in each cell, the distances of
  generated samples to their nearest training point are compared with those of held-out samples by a Mann-Whitney
  U test, z-scored; C_T is the cells' z averaged with the held-out share of each cell as weight, over the cells
  holding enough generated samples. Generated samples nearer the training set than held-out data are: C_T << 0
  (copying; the paper reads below about -3 as copying), farther: C_T >> 0 (underfitting).
- ``near_copy_shares``: the share of generated samples nearer a training point than a given quantile of the
  held-out samples' distances (5% and 1% are what a generator that generalises like real data scores).
- ``copying_rate``: the point-by-point rate of Bhattacharjee, Dasgupta and Chaudhuri (2023, "Data-Copying in
  Generative Models: A Formal Framework"): a region around a training point is copied when the generator puts at
  least ``lam`` times the data's probability there; the rate is the share of generated samples inside copied
  regions. C_T averages over cells, so copying in one place can cancel underfitting in another; this cannot.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from scipy.cluster.vq import kmeans2

COPYING_BELOW = -3.0  # C_T below this reads as copying (Meehan et al.), above +3 as underfitting
NEAR_COPY_QUANTILES = (0.05, 0.01)


def nearest(queries: np.ndarray, reference: np.ndarray, k: int = 1, exclude_self: bool = False,
            max_elements: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances [n, k] and indices of each query row's ``k`` nearest reference rows, in float64, over
    chunks of queries (memory bounded by ``max_elements``). ``exclude_self``: the queries are the reference
    itself, and each row's own entry is skipped."""
    queries = torch.as_tensor(np.asarray(queries), dtype=torch.float64).flatten(1)
    reference = torch.as_tensor(np.asarray(reference), dtype=torch.float64).flatten(1)
    k_found = k + int(exclude_self)
    if len(reference) < k_found:
        raise ValueError(f"{k} nearest neighbours need at least {k_found} reference rows, got {len(reference)}")
    chunk = max(1, max_elements // max(len(reference), 1))
    distances, indices = [], []
    for start in range(0, len(queries), chunk):
        block = torch.cdist(queries[start:start + chunk], reference)
        if exclude_self:
            rows = torch.arange(len(block))
            block[rows, rows + start] = math.inf
        found = block.topk(k, dim=1, largest=False)
        distances.append(found.values)
        indices.append(found.indices)
    return torch.cat(distances).numpy(), torch.cat(indices).numpy()


def reading(c_t: float) -> str:
    """Meehan et al.'s reading of C_T: copies, generalises or underfits."""
    if not math.isfinite(c_t):
        return "n/a"
    return "copies" if c_t < COPYING_BELOW else "underfits" if c_t > -COPYING_BELOW else "generalises"


def kmeans_cells(train: np.ndarray, cells: int, seed: int = 0) -> np.ndarray:
    """``cells`` k-means centroids of the training rows (k-means++ start, fixed seed)."""
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    centroids, _ = kmeans2(train, min(cells, len(train)), minit="++", seed=seed)
    return centroids


def assign(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return nearest(rows, centroids)[1][:, 0]


def mann_whitney_z(generated: np.ndarray, held_out: np.ndarray) -> float:
    """Meehan et al.'s z-scored U: U counts the pairs where the generated distance is the larger (ties half), its
    mean under the null ``n m / 2`` less a continuity correction of 0.5, no tie correction, as their code."""
    m, n = len(generated), len(held_out)
    u = stats.mannwhitneyu(generated, held_out, alternative="less").statistic
    return float((u - (n * m / 2 - 0.5)) / math.sqrt(n * m * (n + m + 1) / 12))


def data_copying_statistic(train: np.ndarray, held_out: np.ndarray, generated: np.ndarray,
                           centroids: np.ndarray, min_generated: int = 20) -> dict:
    """C_T over the cells of ``centroids`` (``kmeans_cells`` of ``train``); in each cell the distances are to that
    cell's training rows, as in the paper. Cells with fewer than ``min_generated`` generated samples (the paper's
    tau) or no held-out sample are left out. Returns ``c_t``, the cells used, and each cell's z and weight."""
    train, held_out, generated = (np.asarray(x, dtype=np.float64).reshape(len(x), -1)
                                  for x in (train, held_out, generated))
    cell_of = {name: assign(rows, centroids) for name, rows in
               (("train", train), ("held_out", held_out), ("generated", generated))}
    z, weight = [], []
    for cell in range(len(centroids)):
        members = {name: rows[cell_of[name] == cell] for name, rows in
                   (("train", train), ("held_out", held_out), ("generated", generated))}
        if len(members["generated"]) < min_generated or len(members["held_out"]) == 0 or len(members["train"]) == 0:
            continue
        generated_nn = nearest(members["generated"], members["train"])[0][:, 0]
        held_out_nn = nearest(members["held_out"], members["train"])[0][:, 0]
        z.append(mann_whitney_z(generated_nn, held_out_nn))
        weight.append(len(members["held_out"]) / len(held_out))
    c_t = float(np.dot(weight, z) / np.sum(weight)) if z else math.nan
    return {"c_t": c_t, "reading": reading(c_t), "cells": len(centroids), "cells_used": len(z),
            "cell_z": [float(v) for v in z], "cell_weight": [float(w) for w in weight]}


def near_copy_shares(generated_nn: np.ndarray, held_out_nn: np.ndarray,
                     quantiles: tuple[float, ...] = NEAR_COPY_QUANTILES) -> dict:
    """For each quantile q: the share of generated samples nearer their nearest training row than the held-out
    samples' q-quantile distance (q is what a generator scores that is as far from the training set as real data
    is), and the ratio of the medians (generated / held-out: below 1, nearer the training set)."""
    shares = {f"near_copy_{round(q * 100)}": float(np.mean(generated_nn < np.quantile(held_out_nn, q)))
              for q in quantiles}
    return shares | {"median_nn_ratio": float(np.median(generated_nn) / np.median(held_out_nn))}


def intrinsic_dimension(train: np.ndarray, k: int = 10, queries: int = 4000, seed: int = 0) -> float:
    """Levina and Bickel's maximum-likelihood intrinsic dimension from the ``k`` nearest neighbours of (at most
    ``queries``, a fixed subsample of) the rows, pooled as MacKay and Ghahramani (the inverse of the mean
    inverse); rows with a duplicate are skipped."""
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    chosen = np.arange(len(train)) if len(train) <= queries else np.sort(
        np.random.default_rng(seed).choice(len(train), queries, replace=False))
    distances = nearest(train[chosen], np.delete(train, chosen, axis=0), k=k)[0] if len(chosen) < len(train) \
        else nearest(train, train, k=k, exclude_self=True)[0]
    distances = distances[(distances > 0).all(axis=1)]
    if len(distances) == 0:
        raise ValueError("intrinsic_dimension needs rows with distinct neighbours")
    inverse = np.log(distances[:, -1:] / distances[:, :-1]).mean(axis=1)  # 1 / (local estimate)
    return float(1 / np.mean(inverse))


def region_scales(train: np.ndarray, neighbours: int = 5) -> np.ndarray:
    """Each training row's distance to its ``neighbours``-th nearest other training row (``copying_rate``'s
    region scale, ``rho_k``)."""
    return nearest(train, train, k=neighbours, exclude_self=True)[0][:, -1]


def copying_rate(train: np.ndarray, generated: np.ndarray, dimension: float, lam: float = 20.0,
                 neighbours: int = 5, significance: float = 1e-3, max_count: int = 64,
                 scales: np.ndarray | None = None) -> dict:
    """Bhattacharjee et al.'s copying rate, estimated point by point.

    Around each training point ``x_i``, the balls reaching its c-th nearest generated sample (c = 1..``max_count``)
    are candidate regions. A ball's probability under the data is estimated from the training set under their
    regularity assumption, ``p = (k / n) (r / rho_k)^dimension``, with ``rho_k`` the distance from ``x_i`` to its
    k-th nearest other training point and ``dimension`` the data's intrinsic dimension (``intrinsic_dimension``);
    under the generator it is ``c / m``. A ball is copied when it is no larger than ``rho_k`` (a region of at
    most one point's share of the data), holds ``lam`` times the data's probability, and its count is unlikely
    under the data (Poisson tail at most ``significance``: a single sample near a point is no evidence unless the
    ball is tiny; an exact copy always is). The rate is the share of generated samples inside a copied ball.
    ``scales``: ``region_scales(train, neighbours)``, when already computed. Returns ``copying_rate`` and
    ``copied_points`` (training points with a copied region)."""
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    generated = np.asarray(generated, dtype=np.float64).reshape(len(generated), -1)
    n, m = len(train), len(generated)
    rho = region_scales(train, neighbours) if scales is None else scales
    radii, _ = nearest(train, generated, k=min(max_count, m))  # [n, c]: c-th nearest generated sample
    counts = np.arange(1, radii.shape[1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = m * neighbours / n * (radii / np.maximum(rho, 1e-300)[:, None]) ** dimension
    copied = ((counts >= lam * expected) & (radii <= rho[:, None])
              & (stats.poisson.sf(counts - 1, expected) <= significance))
    region = np.where(copied, radii, -1.0).max(axis=1)  # each training point's copied radius; -1: none
    distances, indices = nearest(generated, train, k=min(neighbours, n))
    inside = (distances <= region[indices]).any(axis=1)
    return {"copying_rate": float(inside.mean()), "copied_points": int((region >= 0).sum())}
