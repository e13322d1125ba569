"""Tabular evaluation: generated rows against the held-out split, on the original scale, with the measures that
tabular synthesis reports (SDMetrics' detection and marginal scores, synthcity, TabDDPM's machine-learning
efficacy). The scorer computes them per scored set, which gives each its interval.

- ``c2st_auc``: the classifier two-sample test. A gradient-boosted classifier (scikit-learn's
  HistGradientBoostingClassifier) learns to tell generated rows from held-out ones; its AUC on rows it did not
  train on (5-fold cross-validation, pooled) is 0.5 when it cannot (lower is better; real rows score about 0.47,
  cross-validated AUC being biased low). Rows include the label column when labels are modelled, so the test
  judges features and labels jointly. Gradient boosting, not a logistic regression: on the breast-cancer table a
  Gaussian fitted to the raw features scored 0.875 against its 0.548, real rows 0.467 against 0.523.
- ``wasserstein``, ``ks``: per-feature Wasserstein-1 distance (over the held-out feature's std) and
  Kolmogorov-Smirnov statistic, means over features.
- ``quantile_01_error``, ``quantile_99_error``: per-feature error of the 1% and 99% quantiles over the held-out
  feature's std, means over features: the tails.
- ``zero_share_error``: the error of each feature's share of exact zeros, mean over the features where either set
  has zeros (0 when neither has any).
- ``correlation_distance``: Frobenius norm of the difference of the Pearson correlation matrices over F.
- ``frac_negative``: share of generated values below 0 or not finite: outside the support of non-negative data.
- ``frac_far_rows``: share of generated rows with a value more than one held-out range (max - min) beyond the
  held-out [min, max], or not finite: the rows a mean-based distance is at the mercy of (heavy-tailed noise in log
  space can put a few at 1e60).
- ``tstr_accuracy`` (with modelled labels): train on synthetic, test on real. The same classifier trained on the
  generated rows' features and labels, scored on the held-out rows (higher is better; the floor's is the
  accuracy of training on real training rows).

Generated rows with a non-finite value are left out of the distances (``frac_negative`` counts them).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from logdiff_core.metrics import array_metrics

FOLDS = 5
LOWER_IS_BETTER = ("c2st_auc", "wasserstein", "ks", "quantile_01_error", "quantile_99_error", "zero_share_error",
                   "correlation_distance", "frac_negative", "frac_far_rows")
HIGHER_IS_BETTER = ("tstr_accuracy",)


def metric_names(labels: bool) -> tuple[str, ...]:
    return LOWER_IS_BETTER + (HIGHER_IS_BETTER if labels else ())


def _classifier():
    from sklearn.ensemble import HistGradientBoostingClassifier  # here: training workers import this module

    return HistGradientBoostingClassifier(random_state=0)


def _one_thread():
    """OpenMP busy-waits: on shared cores two threads per fit ran 40x slower than one."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def c2st_auc(generated: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
    """Held-out AUC of a classifier telling ``generated`` rows (class 0) from ``reference`` rows (class 1)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    rows = np.concatenate([generated, reference])
    is_real = np.r_[np.zeros(len(generated)), np.ones(len(reference))]
    # copies of a row (a bootstrap resample's) stay in one fold: the classifier cannot recognise a row it trained on
    copies = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    folds = StratifiedGroupKFold(min(FOLDS, len(generated), len(reference)), shuffle=True, random_state=seed)
    with _one_thread():
        scores = cross_val_predict(_classifier(), rows, is_real, groups=copies, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(is_real, scores))


def tstr_accuracy(generated: np.ndarray, generated_labels: np.ndarray, reference: np.ndarray,
                  reference_labels: np.ndarray) -> float:
    """Accuracy on ``reference`` of a classifier trained on ``generated`` (a set with one class predicts it)."""
    classes = np.unique(generated_labels)
    if len(classes) < 2:
        return float(np.mean(reference_labels == classes[0]))
    with _one_thread():
        predicted = _classifier().fit(generated, generated_labels).predict(reference)
    return float(np.mean(predicted == reference_labels))


def _over_std(errors: np.ndarray, reference: np.ndarray) -> float:
    std = reference.std(axis=0)
    return float(np.mean(errors / np.where(std > 0, std, 1)))


def zero_share_error(generated: np.ndarray, reference: np.ndarray) -> float:
    shares = np.stack([(generated == 0).mean(axis=0), (reference == 0).mean(axis=0)])
    with_zeros = shares.max(axis=0) > 0
    return float(np.abs(shares[0] - shares[1])[with_zeros].mean()) if with_zeros.any() else 0.0


def tabular_metrics(generated: np.ndarray, reference: np.ndarray, labels: bool, seed: int = 0) -> dict[str, float]:
    """Every metric of the module for ``generated`` [N, F] against ``reference`` [M, F]; with ``labels`` the last
    column of both is the class index."""
    generated, reference = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
    features = slice(None, -1) if labels else slice(None)
    low, high = reference[:, features].min(axis=0), reference[:, features].max(axis=0)
    with np.errstate(invalid="ignore"):  # NaN compares False: counted by the finiteness test
        far = (generated[:, features] < 2 * low - high) | (generated[:, features] > 2 * high - low)
    scores = {"frac_negative": float(np.mean(~np.isfinite(generated[:, features]) | (generated[:, features] < 0))),
              "frac_far_rows": float(np.mean((far | ~np.isfinite(generated[:, features])).any(axis=1)))}
    generated = generated[np.isfinite(generated).all(axis=1)]
    if len(generated) < 2:
        worst = {name: np.inf for name in LOWER_IS_BETTER if name not in scores} | {"c2st_auc": 1.0}
        return scores | worst | ({"tstr_accuracy": 0.0} if labels else {})
    gen, ref = generated[:, features], reference[:, features]
    distances = array_metrics(gen, ref)
    quantiles = {q: np.abs(np.quantile(gen, q, axis=0) - np.quantile(ref, q, axis=0)) for q in (0.01, 0.99)}
    scores |= {"c2st_auc": c2st_auc(generated, reference, seed), "wasserstein": distances["wasserstein"],
               "ks": float(np.mean(stats.ks_2samp(gen, ref, axis=0).statistic)),
               "quantile_01_error": _over_std(quantiles[0.01], ref), "quantile_99_error": _over_std(quantiles[0.99], ref),
               "zero_share_error": zero_share_error(gen, ref),
               "correlation_distance": distances["correlation_distance"]}
    if labels:
        scores["tstr_accuracy"] = tstr_accuracy(gen, generated[:, -1], ref, reference[:, -1])
    return scores
