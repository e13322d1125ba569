"""The comparison report: every evaluated model (noise distribution x transform) side by side.

Reads the evaluate stage's metrics (``eval/<name>.json``) and writes ``report/report.md`` (a table per metric
with the best model marked and, for array data, the real-vs-real floor), ``report/report.json`` (the same figures
and the winners), a bar chart of the champion scores and, for images, every model's sample grid side by side; for
array data, per-feature histograms of the best model of each transform against the held-out split.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .config import Config, Variant
from .data import load_manifest, load_split
from .io import atomic_write_text, read_json, stage_output, write_json
from .paths import data_dir, eval_dir, report_dir, train_dir
from .visuals import plot_grids_side_by_side, plot_histograms, plot_scores, plot_training_curves

# What the table shows per data kind, lower is better for all; floors exist for array metrics.
COLUMNS = {"image": ("fid", "kid", "swd_mean"),
           "array": ("frac_non_positive", "wasserstein", "log_wasserstein", "correlation_distance")}


def _collect(cfg: Config) -> tuple[dict[Variant, dict], list[Variant]]:
    found, missing = {}, []
    for variant in cfg.variants():
        path = eval_dir(cfg, variant) / "record.json"
        if path.exists():
            found[variant] = read_json(path)
        else:
            missing.append(variant)
    return found, missing


def _format(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return f"{value:.4g}"


def _scored(rows: dict[Variant, dict], column: str) -> dict[Variant, float]:
    return {v: r[column] for v, r in rows.items() if isinstance(r.get(column), (int, float))}


def _best(rows: dict[Variant, dict], column: str) -> Variant | None:
    scored = _scored(rows, column)
    return min(scored, key=scored.get) if scored else None


def _ties_for_best(rows: dict[Variant, dict], column: str) -> set[str]:
    scored = _scored(rows, column)
    return {v.name for v, value in scored.items() if value == min(scored.values())} if scored else set()


def _by_transform(rows: dict[Variant, dict]) -> dict[str, dict[Variant, dict]]:
    groups: dict[str, dict[Variant, dict]] = {}
    for variant, record in rows.items():
        groups.setdefault(variant.transform, {})[variant] = record
    return groups


def _markdown(cfg: Config, rows: dict[Variant, dict], missing: list[Variant], columns: list[str],
              pictures: list[str]) -> str:
    first = next(iter(rows.values()))
    kind, metric = first["kind"], first["champion_metric"]
    lines = [f"# LogDiff comparison: {cfg.name} ({cfg.data.source})", "",
             f"{len(rows)} models, each sampled {first['num_samples']} times with "
             f"{cfg.sample.sampler} ({cfg.sample.steps} steps). Lower is better everywhere; **bold** is the best "
             f"in its column. Champions are chosen by `{metric}`.", ""]
    unavailable = next((r["fid_unavailable"] for r in rows.values() if "fid_unavailable" in r), None)
    if unavailable:
        lines += [f"No FID or KID: {unavailable}", ""]
    if kind == "array":
        lines += [f"Array metrics compare generated samples with the held-out split in chunks of "
                  f"{first.get('metric_sample_size', '?')} rows; the *floor* row is real training data against the "
                  "same held-out split at the same size, the best a perfect model could expect.", ""]
    bold = {column: _ties_for_best(rows, column) for column in columns}
    lines += ["| model | distribution | transform | " + " | ".join(columns) + " |",
              "| --- | --- | --- | " + " | ".join("---:" for _ in columns) + " |"]
    for variant, record in rows.items():
        cells = []
        for column in columns:
            text = _format(record.get(column))
            cells.append(f"**{text}**" if variant.name in bold[column] else text)
        lines.append(f"| {variant.label} | {variant.distribution} | {variant.transform} | " + " | ".join(cells) + " |")
    if kind == "array":
        lines.append("| *floor (real vs real)* | | | " +
                     " | ".join(_format(first.get(f"floor_{c}")) for c in columns) + " |")
    if missing:
        lines += ["", "Not evaluated (training failed or not run): " + ", ".join(v.label for v in missing) + "."]
    groups = _by_transform(rows)
    if len(groups) > 1:
        lines += ["", f"Per transform, over its {len(cfg.diffusion.distributions)} noise distributions:", "",
                  f"| transform | best model | best `{metric}` | mean `{metric}` | models with non-positive samples |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for transform, subset in sorted(groups.items()):
            best = _best(subset, metric)
            mean = float(np.mean(list(_scored(subset, metric).values())))
            negative = sum(1 for r in subset.values() if r.get("frac_non_positive", 0) > 0)
            lines.append(f"| {transform} | {best.label} | {_format(subset[best][metric])} | {_format(mean)} | "
                         f"{negative} of {len(subset)} |")
    lines += ["", *(f"![{Path(p).stem}]({p})" for p in pictures), ""]
    return "\n".join(lines)


def write_report(cfg: Config) -> dict:
    """Write the comparison of every evaluated model; returns the winners and the table."""
    rows, missing = _collect(cfg)
    if not rows:
        raise FileNotFoundError(f"no evaluated models under {eval_dir(cfg, cfg.variants()[0]).parent}; "
                                "run the evaluate stages first")
    first = next(iter(rows.values()))
    kind, metric = first["kind"], first["champion_metric"]
    columns = [c for c in COLUMNS[kind] if any(c in r for r in rows.values())]
    winners = {c: best.name for c in [*columns, metric] if (best := _best(rows, c)) is not None}
    summary = {"champion_metric": metric, "best": winners.get(metric), "winners": winners,
               "missing": [v.name for v in missing],
               "models": {v.name: {"distribution": v.distribution, "transform": v.transform,
                                   **{c: r.get(c) for c in columns},
                                   **({f"floor_{c}": r.get(f"floor_{c}") for c in columns} if kind == "array" else {})}
                          for v, r in rows.items()}}
    with stage_output(report_dir(cfg), "report") as out:
        pictures = [plot_scores({v.label: r[metric] for v, r in rows.items()}, {v.label: v.transform for v in rows},
                                metric, first.get(f"floor_{metric}"), out / "scores.png").name,
                    plot_training_curves({v.label: _read_csv(train_dir(cfg, v) / "history.csv") for v in rows},
                                         {v.label: _read_csv(train_dir(cfg, v) / "curve.csv") for v in rows},
                                         out / "curves.png").name]
        if kind == "image":
            grids = {v.label: eval_dir(cfg, v) / "samples.png" for v in rows
                     if (eval_dir(cfg, v) / "samples.png").exists()}
            if grids:
                pictures.append(plot_grids_side_by_side(grids, out / "samples.png").name)
        else:
            best_per_transform = {best.label: np.loadtxt(eval_dir(cfg, best) / "samples.csv", delimiter=",",
                                                         skiprows=1, ndmin=2)
                                  for subset in _by_transform(rows).values() if (best := _best(subset, metric))}
            held_out = load_split(data_dir(cfg), "val").values
            names = load_manifest(data_dir(cfg)).get("feature_names") or []
            pictures.append(plot_histograms(best_per_transform, held_out, names, out / "histograms.png").name)
        atomic_write_text(out / "report.md", _markdown(cfg, rows, missing, columns, pictures))
        write_json(out / "report.json", summary)
    return summary


def _read_csv(path: Path) -> list[dict]:
    """Rows of a history/curve CSV with numbers as floats; no rows when the file is missing or empty."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
