"""How sets of samples are scored, for every stage that scores (baselines, evaluate, training curves, the report).

One ``Scorer`` per experiment and data transform. It compares any set of samples with one reference, always at
the same sample size, so that every figure carries the same finite-sample bias: a set larger than that size is
scored as the mean over disjoint sets of it. Every metric comes with an interval: from the spread across those sets
when there are several, else bootstrapped over the one set (see ``Scorer.score``).

Images: the reference is the training split; the figures come from the judge classifier's features
(``fd_classifier``, precision, recall, class entropy), from Inception's (FID, KID) when its weights can be had,
and from pixels (the multi-scale sliced Wasserstein distance) when neither is there or it is asked for.
Arrays: the reference is the held-out split (the training rows are the real-vs-real floor); the tabular measures
of ``tasks.tabular``, ranked by the classifier two-sample test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Callable

import numpy as np
import torch
from scipy import stats

from logdiff_core import classifier as judges
from logdiff_core import noise as noise_lib
from logdiff_core.intervals import bootstrap_means, leaves_range, percentile_interval
from logdiff_core.metrics import (class_entropy, covered, feature_statistics, frechet_distance,
                                  kernel_inception_distance, knn_radii, sliced_wasserstein_distance)

from .codec import load_codec
from .config import Config, Variant
from .data import load_manifest, load_split, table_rows
from .fid import FIDUnavailable, InceptionFeatures, reference_features, resolve_fid_weights
from .io import load_safetensors, read_json
from .paths import MODEL_FILE, classifier_dir, data_dir, fid_reference_file
from .runtime import resolve_device
from .sample import TrainedModel, schedule_from
from .tabular import HIGHER_IS_BETTER as TABULAR_HIGHER_IS_BETTER
from .tabular import metric_names, tabular_metrics

# Lower is better for all but these, whose best value is the real data's own.
HIGHER_IS_BETTER = frozenset({"precision", "recall", "class_entropy", *TABULAR_HIGHER_IS_BETTER})
REFERENCE_CAP = 10_000  # reference images (training split) for the statistics: enough, and bounded in time
COSTLY_RESAMPLES = 20  # intervals of metrics computed on images (Inception, SWD): seconds per resample
BASELINES = ("floor", "ceiling", "trivial", "copy")  # what every model is read against (the baselines stage)
HELD_OUT = "held_out_"  # prefix of the figures scored against the held-out split (images; arrays always are)
PROPORTION, DISTANCE = (0.0, 1.0), (0.0, math.inf)  # the ranges of bounded metrics, which intervals keep to


CEILING_RATIO_KEYS = ("ceiling_ratio", "ceiling_ratio_low", "ceiling_ratio_high")  # x ceiling and its interval


def format_ceiling_ratio(reading: dict) -> str:
    """``ceiling_ratio`` for tables: ``1.87 [1.57, 2.17]`` with the model's interval, ``n/a`` without a ceiling."""
    ratio, low, high = (reading.get(key) for key in CEILING_RATIO_KEYS)
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}" if low is None or high is None else f"{ratio:.2f} [{low:.2f}, {high:.2f}]"


def lower_is_better(metric: str) -> bool:
    return metric not in HIGHER_IS_BETTER


def subset(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` rows of ``values``, drawn without replacement with ``seed``, in stored order."""
    if len(values) <= n:
        return values
    return values[np.sort(np.random.default_rng(seed).choice(len(values), n, replace=False))]


@dataclass
class Measure:
    """Metrics computed from a per-sample representation (``embed``: samples -> rows), so that a bootstrap only
    resamples rows of it; ``resamples`` caps the bootstrap for metrics that cost seconds each; ``bounds`` the
    range of bounded metrics (a proportion in [0, 1], a distance >= 0), which their intervals keep to."""

    names: tuple[str, ...]
    embed: Callable[[np.ndarray], dict[str, np.ndarray]]
    measure: Callable[[dict[str, np.ndarray]], dict[str, float]]
    resamples: int | None = None
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Scorer:
    kind: str  # "image" | "array"
    size: int  # every set is scored at this many samples
    measures: list[Measure]
    champion: str  # the metric models are ranked and champions chosen by (lower is better)
    basis: str  # one line: what the champion metric is, and why this one
    bootstrap: int
    confidence: float
    seed: int
    notes: dict  # what a reader needs beside the figures (judge accuracy, why FID is missing, ...)

    @property
    def metrics(self) -> list[str]:
        return [name for measure in self.measures for name in measure.names]

    def score(self, samples: np.ndarray) -> dict:
        """``{metric: value, metric_low: ..., metric_high: ..., "sets": k}`` for a set of at least ``size`` samples,
        scored as ``k`` disjoint sets of ``size``. With ``k >= 2`` the value is their mean and the interval comes
        from their spread (Student t): independent draws, so it is the model's own sampling noise. One set is
        bootstrapped instead: ``value +- z * SE`` with the standard error over resampled rows (a percentile
        interval would sit off-centre: duplicates inflate a Fréchet distance, while its spread is estimated well).
        Where that interval leaves a bounded metric's range (a recall of 0.0003 +- 0.0005), it is the percentile
        interval of the bootstrap draws instead (over sets: of the mean of resampled sets), widened to hold the value."""
        if len(samples) < self.size:
            raise ValueError(f"scoring needs at least {self.size} samples (the sample size every set is scored "
                             f"at), got {len(samples)}; raise eval.num_samples")
        rng = np.random.default_rng(self.seed)
        sets = len(samples) // self.size
        scores: dict[str, float] = {"sets": sets}
        for measure in self.measures:
            rows = measure.embed(samples)
            per_set = self._per_set(measure, rows)
            values = {name: float(np.mean([s[name] for s in per_set])) for name in measure.names}
            scores.update(values)
            if self.bootstrap < 2:  # intervals are off
                continue
            if sets >= 2:
                half = {name: stats.t.ppf(0.5 + self.confidence / 2, sets - 1)
                        * float(np.std([s[name] for s in per_set], ddof=1)) / np.sqrt(sets)
                        for name in measure.names}

                def draws(name: str) -> np.ndarray:
                    return bootstrap_means([s[name] for s in per_set], self.bootstrap, rng)
            else:
                resamples = min(self.bootstrap, measure.resamples or self.bootstrap)
                z = NormalDist().inv_cdf(0.5 + self.confidence / 2)
                resampled = [self._per_set(measure, {k: v[idx] for k, v in rows.items()})[0]
                             for idx in rng.integers(0, len(samples), size=(resamples, len(samples)))]
                half = {name: z * float(np.std([d[name] for d in resampled], ddof=1)) for name in measure.names}

                def draws(name: str) -> list[float]:
                    return [d[name] for d in resampled]
            for name in measure.names:
                low, high = values[name] - half[name], values[name] + half[name]
                if name in measure.bounds and leaves_range(low, high, measure.bounds[name]):
                    low, high = percentile_interval(draws(name), self.confidence)
                    low, high = min(low, values[name]), max(high, values[name])
                scores[f"{name}_low"], scores[f"{name}_high"] = low, high
        return scores

    def _per_set(self, measure: Measure, rows: dict[str, np.ndarray]) -> list[dict[str, float]]:
        """The metrics of each disjoint set of ``size`` rows (a remainder smaller than ``size`` is left out)."""
        n = len(next(iter(rows.values())))
        return [measure.measure({k: v[i:i + self.size] for k, v in rows.items()})
                for i in range(0, n - self.size + 1, self.size)]

    def describe(self) -> dict:
        return {"champion_metric": self.champion, "basis": self.basis, "metric_sample_size": self.size,
                "confidence": self.confidence, "bootstrap": self.bootstrap, **self.notes}


def load_judge(cfg: Config) -> tuple[judges.Judge | None, dict]:
    """The classifier stage's judge (None when there is none) and its record, which says why not."""
    record = read_json(classifier_dir(cfg) / "record.json")
    if not record.get("available"):
        return None, record
    tensors, settings = load_safetensors(classifier_dir(cfg) / MODEL_FILE, "judge classifier")
    model = judges.Judge(**settings["init"])
    model.load_state_dict(tensors)
    return model.eval(), record


def _judge_measure(judge: judges.Judge, reference: np.ndarray, size: int, device) -> Measure:
    ref_features, _ = judges.predict(judge, reference, device=device)
    ref_stats = feature_statistics(ref_features)
    ref_subset = subset(ref_features, size, 0)  # precision/recall compare sets of equal size
    ref_radii = knn_radii(ref_subset)

    def measure(rows: dict[str, np.ndarray]) -> dict[str, float]:
        recall = covered(ref_subset, rows["features"], knn_radii(rows["features"])).mean()
        return {"fd_classifier": frechet_distance(*feature_statistics(rows["features"]), *ref_stats),
                "precision": float(rows["in_real"].mean()), "recall": float(recall),
                "class_entropy": class_entropy(rows["probabilities"])}

    def embed(images: np.ndarray) -> dict[str, np.ndarray]:
        features, probabilities = judges.predict(judge, images, device=device)
        # whether a sample looks real depends on it alone (the real manifold is fixed): computed once per sample
        return {"features": features, "probabilities": probabilities,
                "in_real": covered(features, ref_subset, ref_radii)}

    bounds = {"fd_classifier": DISTANCE, "precision": PROPORTION, "recall": PROPORTION,
              "class_entropy": (0.0, math.log(judge.head.out_features))}
    return Measure(("fd_classifier", "precision", "recall", "class_entropy"), embed, measure, bounds=bounds)


def _inception_measure(extractor: InceptionFeatures, reference_feats: np.ndarray) -> Measure:
    ref_stats = feature_statistics(reference_feats)

    def measure(rows: dict[str, np.ndarray]) -> dict[str, float]:
        kid, _ = kernel_inception_distance(rows["features"], reference_feats, num_subsets=20,
                                           subset_size=min(1000, len(rows["features"])))
        return {"fid": frechet_distance(*feature_statistics(rows["features"]), *ref_stats), "kid": kid}

    return Measure(("fid", "kid"), lambda images: {"features": extractor(images)}, measure, COSTLY_RESAMPLES,
                   bounds={"fid": DISTANCE})  # KID's unbiased estimate may be negative


def _swd_measure(reference: np.ndarray) -> Measure:
    return Measure(("swd_mean",), lambda images: {"images": images},
                   lambda rows: {"swd_mean": sliced_wasserstein_distance(rows["images"], reference)["swd_mean"]},
                   COSTLY_RESAMPLES, bounds={"swd_mean": DISTANCE})


def inception_or_reason(cfg: Config) -> tuple[InceptionFeatures | None, str | None]:
    """The Inception extractor when FID is wanted and its weights can be had; else why not (or an error when
    ``eval.fid_required``)."""
    if not cfg.eval.fid:
        return None, "eval.fid is false"
    try:
        return InceptionFeatures(resolve_fid_weights(cfg.eval.fid_weights), resolve_device(cfg.train.device)), None
    except FIDUnavailable as err:
        if cfg.eval.fid_required:
            raise FIDUnavailable(f"{err} (eval.fid_required is true)") from None
        return None, str(err)


def build_scorer(cfg: Config, bootstrap: int | None = None, max_size: int | None = None,
                 against: str = "train") -> Scorer:
    """The experiment's scorer: what its models, baselines and curves are measured with. ``bootstrap`` overrides
    the config's, ``max_size`` caps the sample size (training curves use no bootstrap and fewer samples).
    ``against="val"`` scores images against the held-out split instead of the training split (arrays are
    always scored against held-out)."""
    train, held_out = load_split(data_dir(cfg), "train"), load_split(data_dir(cfg), "val")
    n = cfg.eval.num_samples if max_size is None else min(cfg.eval.num_samples, max_size)
    bootstrap = cfg.eval.bootstrap if bootstrap is None else bootstrap
    common = dict(bootstrap=bootstrap, confidence=cfg.eval.confidence, seed=cfg.seed)
    if train.kind == "array":
        size = min(n, len(train.values))
        labels = cfg.diffusion.labels
        reference = table_rows(held_out, labels)
        measure = Measure(metric_names(labels), lambda values: {"values": values},
                          lambda rows: tabular_metrics(rows["values"], reference, labels, cfg.seed), COSTLY_RESAMPLES)
        chosen = _champion(cfg, measure.names, "c2st_auc")
        joint = " (features and label)" if labels else ""
        basis = (f"{chosen}: classifier two-sample test, the held-out AUC of gradient boosting telling generated rows"
                 f"{joint} from the held-out split's (0.5: indistinguishable); a metric that reads the whole joint "
                 "law, tails and dependence included, where per-feature distances read one margin at a time"
                 if chosen == "c2st_auc" else f"{chosen}: set by eval.champion_metric")
        return Scorer("array", size, [measure], chosen, basis, notes={"reference": "held-out split"}, **common)

    size = min(n, len(held_out.values))
    device = resolve_device(cfg.train.device)
    reference = subset((held_out if against == "val" else train).values, REFERENCE_CAP, cfg.seed)
    measures, notes = [], {"reference": f"{len(reference)} {'held-out' if against == 'val' else 'training'} images"}
    judge, judge_record = load_judge(cfg)
    if judge is not None:
        measures.append(_judge_measure(judge, reference, size, device))
        notes["judge_accuracy"] = judge_record["accuracy"]
        if "accuracy_low" in judge_record:  # judges trained before the interval was recorded have none
            notes["judge_accuracy_interval"] = [judge_record["accuracy_low"], judge_record["accuracy_high"]]
    else:
        notes["judge_unavailable"] = judge_record["reason"]
    extractor, fid_reason = inception_or_reason(cfg)
    if extractor is not None:
        content_hash = load_manifest(data_dir(cfg))["content_hash"]
        measures.append(_inception_measure(extractor, reference_features(
            reference, extractor, fid_reference_file(cfg, content_hash, len(reference), against))))
    else:
        notes["fid_unavailable"] = fid_reason
    if not measures or cfg.eval.champion_metric == "swd_mean":
        measures.append(_swd_measure(subset(reference, size, cfg.seed)))
    names = [name for measure in measures for name in measure.names]
    chosen = _champion(cfg, names, next(m for m in ("fid", "fd_classifier", "swd_mean") if m in names))
    return Scorer("image", size, measures, chosen, _image_basis(chosen, notes), notes=notes, **common)


def _champion(cfg: Config, computed: tuple[str, ...] | list[str], automatic: str) -> str:
    chosen = cfg.eval.champion_metric
    if chosen == "auto":
        return automatic
    if chosen not in computed:
        raise ValueError(f"eval.champion_metric={chosen} is not computed for this data; computed: "
                         f"{', '.join(computed)} (or auto)")
    if not lower_is_better(chosen):
        raise ValueError(f"eval.champion_metric={chosen}: champions need a distance (lower is better); "
                         f"{chosen} is reported beside it")
    return chosen


def _image_basis(chosen: str, notes: dict) -> str:
    if chosen == "fid":
        return "fid: standard FID (TF-ported Inception, uint8 images, float64 statistics)"
    if chosen == "fd_classifier":
        why = f" (FID unavailable: {notes['fid_unavailable']})" if "fid_unavailable" in notes else ""
        interval = ("" if "judge_accuracy_interval" not in notes
                    else " [{:.1%}, {:.1%}]".format(*notes["judge_accuracy_interval"]))
        return (f"fd_classifier: Fréchet distance in the penultimate features of a classifier trained on the "
                f"training labels, {notes['judge_accuracy']:.1%}{interval} held-out accuracy; not FID{why}")
    if chosen == "swd_mean":
        why = notes.get("judge_unavailable") or "set by eval.champion_metric"
        return f"swd_mean: multi-scale sliced Wasserstein distance on pixels; no judge classifier ({why})"
    return f"{chosen}: set by eval.champion_metric"


def curve_evaluator(cfg: Config, variant: Variant, num_samples: int = 256):
    """For training curves: the champion metric of the EMA model every ``train.eval_every`` steps, on fewer
    samples and without intervals (so not comparable with the final evaluation's figure, only with itself)."""
    scorer = build_scorer(cfg, bootstrap=0, max_size=num_samples)
    scorer = replace(scorer, measures=[next(m for m in scorer.measures if scorer.champion in m.names)])
    codec = load_codec(cfg, variant.transform)
    noise = noise_lib.get(variant.distribution, **cfg.diffusion.distributions[variant.distribution])
    schedule = noise.forward_schedule(schedule_from(cfg.to_dict()))

    def evaluate_now(ema_model: torch.nn.Module, step: int) -> dict:
        model = TrainedModel(ema_model, schedule, noise, codec, variant.distribution, cfg.to_dict())
        device = next(ema_model.parameters()).device
        generated = model.generate(scorer.size, seed=variant.seed + step, device=str(device), progress=False)
        return {f"curve_{scorer.champion}": scorer.score(generated)[scorer.champion]}

    return evaluate_now
