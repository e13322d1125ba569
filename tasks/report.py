"""The comparison report: every evaluated model against the baselines, with intervals, the spread across seeds, and a
verdict a researcher can quote: which noise distribution is best, by how much, and which differences are larger
than the noise.

Writes ``report/report.md`` (verdict, tables, pictures), ``report/report.json`` (the same figures) and the
compact ``metrics/report.json`` (each model's mean score, for ``dvc exp show``).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config
from . import timings
from .config import Config, Variant
from .copying import copying_pictures, copying_section, copying_verdict
from .data import column_names, load_manifest, load_split, table_rows
from .frontier import report_section
from .io import atomic_write_text, read_json, stage_output, write_json
from .paths import baselines_dir, data_dir, eval_dir, metrics_file, report_dir, train_dir
from .scoring import BASELINES, CEILING_RATIO_KEYS, HELD_OUT, format_ceiling_ratio, lower_is_better
from .visuals import plot_grids_side_by_side, plot_histograms, plot_ranking, plot_tails, plot_training_curves

BASELINE_WORDS = {"floor": "floor (real vs real)", "ceiling": "ceiling (autoencoder reconstructions)",
                  "trivial": "trivial (Gaussian fitted to the latents)",
                  "copy": "copy (the optimal denoiser: returns training data)"}


@dataclass
class Group:
    """One noise distribution under one transform: its replicates (one model per seed)."""

    label: str
    distribution: str
    transform: str
    records: list[dict]
    metric: str

    @property
    def scores(self) -> list[float]:
        return [r[self.metric] for r in self.records]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def spread(self) -> float | None:
        """Standard deviation across seeds (None with one seed)."""
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The model's interval (across its scored sets, or bootstrapped), with one seed."""
        record = self.records[0]
        if len(self.records) > 1 or f"{self.metric}_low" not in record:
            return None
        return record[f"{self.metric}_low"], record[f"{self.metric}_high"]


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _with_interval(scores: dict, metric: str) -> str:
    if f"{metric}_low" not in scores:
        return _fmt(scores.get(metric))
    return f"{_fmt(scores[metric])} [{_fmt(scores[f'{metric}_low'])}, {_fmt(scores[f'{metric}_high'])}]"


def _across_seeds(records: list[dict], metric: str) -> str:
    values = [r[metric] for r in records if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if len(values) < 2:
        return _fmt(values[0]) if values else "n/a"
    return f"{_fmt(float(np.mean(values)))} ± {_fmt(float(np.std(values, ddof=1)))}"


def _interval_basis(record: dict) -> str:
    if record["bootstrap"] < 2:
        return "none (eval.bootstrap is 0)"
    sets = record.get("sets", 1)
    model = (f"a model's figure is the mean over {sets} independent sets of its samples, its interval from their "
             "spread" if sets > 1 else f"a model's interval is bootstrapped ({record['bootstrap']} resamples)")
    return model + (f"; a baseline scored on one set (the floor, the ceiling) is bootstrapped ({record['bootstrap']} "
                    "resamples)")


def _direction(metrics: list[str]) -> str:
    higher = [m.replace("_", " ") for m in metrics if not lower_is_better(m)]
    if not higher:
        return "Lower is better."
    return (f"Lower is better, except {', '.join(higher[:-1]) + ' and ' if len(higher) > 1 else ''}{higher[-1]} "
            "(higher, up to the floor's: real data scores those).")


def differs(a: Group, b: Group) -> bool:
    """Whether the gap between two groups is larger than the noise: with seeds on both sides, more than twice the
    standard error of the difference of the means; with one seed, non-overlapping intervals."""
    if a.spread is not None and b.spread is not None:
        se = math.sqrt(a.spread**2 / len(a.scores) + b.spread**2 / len(b.scores))
        return abs(a.mean - b.mean) > 2 * se
    ia, ib = a.interval, b.interval
    if ia is None or ib is None:
        return False
    return ia[1] < ib[0] or ib[1] < ia[0]


def verdict(groups: list[Group], baselines: dict[str, dict], metric: str) -> list[str]:
    """The conclusion in sentences: the best distribution, by how much, which gaps exceed the noise, and how the
    models stand against the trivial generator and the autoencoder ceiling."""
    ranked = sorted(groups, key=lambda g: g.mean)
    best = ranked[0]
    seeds = len(best.scores)
    noise = (f"spread across {seeds} seeds ±{best.spread:.3g} (standard deviation)" if best.spread is not None
             else "one seed; interval " + "[{:.4g}, {:.4g}]".format(*best.interval) if best.interval
             else "one seed, no interval")
    lines = [f"**Best: {best.label}**, {metric} {best.mean:.4g} ({noise}; lower is better)."]
    for other in ranked[1:]:
        gap = other.mean - best.mean
        relative = f" ({gap / best.mean:+.0%})" if best.mean > 0 else ""
        real = ("larger than the noise" if differs(best, other)
                else "within the noise: not a real difference at this sample size")
        lines.append(f"- {other.label}: {other.mean:.4g}, {gap:+.3g}{relative} against {best.label}: {real}.")
    if seeds == 1:
        lines.append("With one seed per model, run-to-run variation is not measured: rerun with train.seeds=[0,1,2] "
                     "for the spread across seeds (the demo-replicates preset does this for the demo).")
    models = [r for g in groups for r in g.records]
    beaten = [r for r in models if r.get("beats_trivial") is False]
    trivials = {t: b["trivial"][metric] for t, b in baselines.items() if b.get("trivial")}
    if trivials:  # one per transform: each model is read against its own transform's
        trivial = (f"{next(iter(trivials.values())):.4g}" if len(set(trivials.values())) == 1
                   else ", ".join(f"{v:.4g} ({t})" for t, v in trivials.items()))
        if beaten:
            names = ", ".join(f"{r['distribution']}-{r['transform']} (seed {r['seed']})" for r in beaten)
            lines.append(f"**Not clearly better than the trivial generator** ({metric} {trivial}): {names}.")
        else:
            lines.append(f"Every model beats the trivial generator ({metric} {trivial}), intervals apart.")
    ratios = [r["ceiling_ratio"] for r in models if r.get("ceiling_ratio") is not None]
    if ratios:
        floor = next(iter(baselines.values()))["floor"][metric]
        lines.append(f"Distance above the real-vs-real floor ({floor:.4g}), in multiples of the autoencoder "
                     f"ceiling's: {min(ratios):.2f} to {max(ratios):.2f} (1 = as good as the autoencoder's own "
                     "reconstructions; a latent model cannot do much better).")
    invalid, words = next(((m, w) for m, w in _INVALID.items() if m in models[0]), (None, ""))
    non_positive = {t: [r for r in models if r["transform"] == t and r.get(invalid, 0) > 0]
                    for t in sorted({r["transform"] for r in models}) if invalid}
    for transform, bad in non_positive.items():
        total = sum(1 for r in models if r["transform"] == transform)
        worst = max((r[invalid] for r in bad), default=0.0)
        lines.append(f"{transform}: {len(bad)} of {total} models drew {words} values"
                     + (f" (at most {worst:.2%} of values)." if bad else "."))
    return lines


def common_metric(records: list[dict], baselines: dict[str, dict]) -> tuple[str, str | None]:
    """The metric to rank by: the models' champion metric, or when theirs differ (say FID weights appeared between
    two partial runs) one that every model and baseline has, with a sentence saying so: like with like."""
    chosen = sorted({r["champion_metric"] for r in records})
    if len(chosen) == 1:
        return chosen[0], None
    scored = [*records, *(b[name] for b in baselines.values() for name in BASELINES if b.get(name))]
    common = next((m for m in (*chosen, *_RANKABLE) if all(m in r for r in scored)), None)
    if common is None:
        raise ValueError(f"the evaluated models share no metric ({', '.join(chosen)}); rerun the evaluate stages "
                         "so all are scored alike (logdiff run --force, or dvc repro)")
    counts = ", ".join(f"{m} for {sum(r['champion_metric'] == m for r in records)}" for m in chosen)
    return common, (f"The models were ranked on different metrics ({counts}), so they are compared here on "
                    f"{common}, which every model and baseline has. Rerun the evaluate stages to rank all alike.")


# metrics a ranking can use when the models' own disagree, in order of preference (all lower is better)
_RANKABLE = ("fid", "fd_classifier", "swd_mean", "c2st_auc", "wasserstein")
# the share of values outside the data's support, in the verdict: non-positive (strictly positive data) or negative
_INVALID = {"frac_non_positive": "non-positive", "frac_negative": "negative or non-finite"}


def _collect(cfg: Config) -> tuple[dict[Variant, dict], list[Variant]]:
    found, missing = {}, []
    for variant in cfg.variants():
        path = eval_dir(cfg, variant) / "record.json"
        if path.exists():
            found[variant] = read_json(path)
        else:
            missing.append(variant)
    return found, missing


def _groups(rows: dict[Variant, dict], metric: str) -> list[Group]:
    by_label: dict[str, Group] = {}
    for variant, record in rows.items():
        group = by_label.setdefault(variant.label, Group(variant.label, variant.distribution, variant.transform, [],
                                                         metric))
        group.records.append(record)
    return list(by_label.values())


def _sampling(record: dict) -> str:
    """How an evaluation record's samples were drawn, in words."""
    words = f"{record['sampler']} ({record['steps']} steps, {record.get('time_schedule', 'uniform')} time schedule"
    if record.get("restarts"):
        times = "once" if record["restarts"] == 1 else f"{record['restarts']} times"
        words += (f", then {times} noised to t = {record['restart_t']} and sampled back in {record['restart_steps']} "
                  "steps")
    if "evaluations_per_sample" in record:
        words += f"; {record['evaluations_per_sample']} network evaluations per sample"
    return words + ")"


def _markdown(cfg: Config, rows: dict[Variant, dict], missing: list[Variant], groups: list[Group],
              baselines: dict[str, dict], metric: str, lines: list[str], pictures: list[str],
              sections: list[str]) -> str:
    first = next(iter(rows.values()))
    metrics = [m for m in _METRICS if all(m in r for r in rows.values())]
    held_out = metric.startswith(HELD_OUT) and metric not in metrics
    metrics = [metric] * held_out + metrics
    basis = first["basis"] if first["champion_metric"] == metric.removeprefix(HELD_OUT * held_out) else metric
    seeds = sorted({v.seed for v in rows})
    against = (f"Ranked against the **held-out split** ({HELD_OUT}{first['champion_metric']}: "
               f"{cfg.data.val_fraction:.0%} of the data, which neither the autoencoder, the diffusion models nor "
               "the judge trained on; there the floor is as many training images and the ceiling their "
               "reconstructions); the figures against the training split beside it. Against the training split "
               "alone, a model that returned its training images would beat the floor. " if held_out else "")
    out = [f"# LogDiff comparison: {cfg.name} ({cfg.data.source})", "",
           f"{len(groups)} noise distribution x transform pairs, {len(seeds)} seed(s) each ({len(rows)} models), "
           f"each sampled {first['num_samples']} times with {_sampling(first)}.", "",
           f"Ranked by **{basis}**.", "",
           f"{against}Every figure, baselines included, is computed at {first['metric_sample_size']} samples "
           f"against the same reference ({first['reference']}, or the held-out split), with "
           f"{first['confidence']:.0%} intervals: {_interval_basis(first)}. {_direction(metrics)}", ""]
    out += ["## Verdict", "", *lines, ""]
    out += ["## Baselines", "", "| baseline | transform | " + " | ".join(metrics) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for transform, record in baselines.items():
        for name in BASELINES:
            if record.get(name):
                cells = [_with_interval(record[name], m) for m in metrics]
                out.append(f"| {BASELINE_WORDS[name]} | {transform} | " + " | ".join(cells) + " |")
        if record.get("ceiling_note"):
            out.append(f"| ceiling | {transform} | {record['ceiling_note']} |" + " |" * (len(metrics) - 1))
    columns = [*(m for m in metrics if m != metric), *["x ceiling (training split)"] * held_out]
    out += ["", "## Models", "",
            "| model | seed | " + f"{metric} | beats trivial | x ceiling | " + " | ".join(columns) + " |",
            "| --- | ---: | ---: | :---: | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for variant, record in rows.items():
        others = [_with_interval(record, m) for m in metrics if m != metric]
        if held_out:
            others.append(format_ceiling_ratio({key: record[f"train_{key}"] for key in CEILING_RATIO_KEYS}))
        out.append(f"| {variant.label} | {variant.seed} | {_with_interval(record, metric)} | "
                   f"{_fmt(record.get('beats_trivial'))} | {format_ceiling_ratio(record)} | "
                   + " | ".join(others) + " |")
    if len(seeds) > 1:
        out += ["", "## Across seeds", "", "Mean ± standard deviation across the seeds.", "",
                "| model | seeds | " + " | ".join(metrics) + " |",
                "| --- | ---: | " + " | ".join("---:" for _ in metrics) + " |"]
        out += [f"| {g.label} | {len(g.scores)} | " + " | ".join(_across_seeds(g.records, m) for m in metrics) + " |"
                for g in sorted(groups, key=lambda g: g.mean)]
    out += _by_transform_and_noise(groups, metric)
    if missing:
        out += ["", "Not evaluated (training failed or not run): " + ", ".join(v.name for v in missing) + "."]
    out += ["", *sections]
    out += ["", *(f"![{Path(p).stem}]({p})" for p in pictures), ""]
    out += timings.markdown(cfg, running="report")
    return "\n".join(out)


def _by_transform_and_noise(groups: list[Group], metric: str) -> list[str]:
    """With more than one transform: the ranking metric as a noise x transform table (mean ± spread across seeds,
    or the one seed's interval), the best of each transform in bold, so which transform wins reads across a row."""
    transforms = sorted({g.transform for g in groups}, key=[g.transform for g in groups].index)
    if len(transforms) < 2:
        return []
    cells = {(g.distribution, g.transform): g for g in groups}
    best = {t: min((g for g in groups if g.transform == t), key=lambda g: g.mean) for t in transforms}

    def cell(group: Group | None) -> str:
        if group is None:
            return ""
        noise = (f" ± {group.spread:.3g}" if group.spread is not None else
                 " [{:.3g}, {:.3g}]".format(*group.interval) if group.interval else "")
        text = f"{group.mean:.3g}{noise}"
        return f"**{text}**" if group is best[group.transform] else text

    distributions = sorted({g.distribution for g in groups}, key=[g.distribution for g in groups].index)
    return ["", "## By noise and transform", "",
            f"{metric}: mean ± standard deviation across seeds (one seed: its interval); the best noise of each "
            "transform in bold.", "", "| noise | " + " | ".join(transforms) + " |",
            "| --- | " + " | ".join("---:" for _ in transforms) + " |",
            *(f"| {d} | " + " | ".join(cell(cells.get((d, t))) for t in transforms) + " |" for d in distributions)]


# what the tables show, in this order, when a record has them
_METRICS = ("fid", "kid", "fd_classifier", "precision", "recall", "class_entropy", "swd_mean", "c2st_auc",
            "wasserstein", "log_wasserstein", "ks", "quantile_01_error", "quantile_99_error", "zero_share_error",
            "correlation_distance", "frac_non_positive", "frac_negative", "frac_far_rows", "tstr_accuracy")


def write_report(cfg: Config) -> dict:
    """Write the comparison of every evaluated model; returns its summary (also ``report.json``)."""
    rows, missing = _collect(cfg)
    if not rows:
        raise FileNotFoundError(f"no evaluated models under {eval_dir(cfg, cfg.variants()[0]).parent}; "
                                "run the evaluate stages first")
    baselines = {t: read_json(baselines_dir(cfg, t) / "record.json") for t in cfg.diffusion.transforms
                 if (baselines_dir(cfg, t) / "record.json").exists()}
    metric, note = common_metric(list(rows.values()), baselines)
    records = rows
    if all(r.get("ranked_by") == f"{HELD_OUT}{metric}" for r in rows.values()):  # images: rank on held-out
        metric, rows = f"{HELD_OUT}{metric}", {v: reading_view(r, HELD_OUT) for v, r in rows.items()}
    groups = _groups(rows, metric)
    lines = ([note] if note else []) + verdict(groups, baselines, metric) + copying_verdict(records, baselines)
    best = min(groups, key=lambda g: g.mean)
    summary = {"champion_metric": metric, "lower_is_better": lower_is_better(metric), "best": best.label,
               "verdict": lines, "baselines": baselines, "missing": [v.name for v in missing],
               "groups": {g.label: {"mean": g.mean, "spread": g.spread, "seeds": len(g.scores)} for g in groups},
               "models": {v.name: {k: r.get(k) for k in ("distribution", "transform", "seed", metric,
                                                            f"{metric}_low", f"{metric}_high", "beats_trivial",
                                                            *CEILING_RATIO_KEYS)} for v, r in rows.items()}}
    with stage_output(report_dir(cfg), "report") as out:
        first_seed = {g.label: next(v for v in rows if v.label == g.label) for g in groups}
        pictures = [plot_ranking(groups, baselines, metric, out / "scores.png").name,
                    plot_training_curves({v.name: _read_csv(train_dir(cfg, v) / "history.csv") for v in rows},
                                         {v.name: _read_csv(train_dir(cfg, v) / "curve.csv") for v in rows},
                                         out / "curves.png").name]
        if next(iter(rows.values()))["kind"] == "image":
            grids = {label: eval_dir(cfg, v) / "samples.png" for label, v in first_seed.items()}
            for transform in baselines:
                for name in ("trivial", "ceiling", "copy"):
                    if (picture := baselines_dir(cfg, transform) / f"{name}.png").exists():
                        grids[name] = picture
            pictures.append(plot_grids_side_by_side(grids, out / "samples.png").name)
        else:
            best_per_transform = {}
            for transform in cfg.diffusion.transforms:
                candidates = [g for g in groups if g.transform == transform]
                if candidates:
                    top = min(candidates, key=lambda g: g.mean)
                    best_per_transform[top.label] = np.loadtxt(eval_dir(cfg, first_seed[top.label]) / "samples.csv",
                                                               delimiter=",", skiprows=1, ndmin=2)
            held_out = table_rows(load_split(data_dir(cfg), "val"), cfg.diffusion.labels)
            names = column_names(load_manifest(data_dir(cfg)), cfg.diffusion.labels)
            pictures.append(plot_histograms(best_per_transform, held_out, names, out / "histograms.png").name)
            real = {"held-out": held_out, "training rows": table_rows(load_split(data_dir(cfg), "train"),
                                                                      cfg.diffusion.labels)}
            pictures.append(plot_tails(best_per_transform, real, names, out / "tails.png").name)
        labelled = {v.label: (eval_dir(cfg, v), r) for v, r in records.items() if v in first_seed.values()}
        section = copying_section(labelled, baselines, copying_pictures(cfg, labelled, baselines, out))
        atomic_write_text(out / "report.md", _markdown(cfg, rows, missing, groups, baselines, metric, lines,
                                                       pictures, section) + report_section(cfg, out))
        write_json(out / "report.json", summary)
    write_json(metrics_file(cfg, "report"), experiment_metrics(cfg, groups))
    return summary


def experiment_metrics(cfg: Config, groups: list[Group]) -> dict:
    """The experiment in one row of ``dvc exp show``: each model's score (the mean over its seeds) and, when a preset
    has the experiment's name, what differs from it (``changed``, as ``dvc exp run -S`` would set it)."""
    figures = {g.label: g.mean for g in groups}
    if cfg.name not in config.preset_names():
        return figures
    changed = config.overrides_between(config.load(cfg.name), cfg)
    return {"changed": " ".join(changed) or "none", **figures}


def reading_view(record: dict, prefix: str) -> dict:
    """A model's record read against the baselines of another reference: ``beats_trivial`` and ``x ceiling``
    taken from its ``prefix``-ed figures (the held-out split's), its own kept as ``train_...``."""
    keys = ("beats_trivial", *CEILING_RATIO_KEYS)
    return (record | {f"train_{key}": record.get(key) for key in keys}
            | {key: record.get(f"{prefix}{key}") for key in keys})


def _read_csv(path: Path) -> list[dict]:
    """Rows of a history/curve CSV with numbers as floats; no rows when the file is missing or empty."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
