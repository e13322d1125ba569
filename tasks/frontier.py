"""The NFE-quality frontier of an experiment's trained models: the pipeline's metric (with its interval, against
the baselines) at a few network-evaluation budgets for each sampler and time schedule, beside two references
(1000-step DDPM ancestral, and the demo's sampler until this frontier moved it), with sampling throughput.

``logdiff frontier`` runs it after ``logdiff run`` (minutes, not seconds: an opt-in command, see
docs/sampling.md); it writes ``frontier/`` in the experiment folder (``frontier.json``, ``frontier.md``,
``frontier.png``), and the report shows it as a section while the models it measured are the ones trained.

Every setting of a model draws the same samples' initial noise (``seed`` and index, ``streams.SampleStreams``),
so settings are compared on the same starting points, and is scored exactly as the evaluate stage scores.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from logdiff_core import samplers
from logdiff_core.progress import progress_bar

from .config import Config, Variant
from .evaluate import read_against_baselines
from .io import atomic_write_text, read_json, sha256_file, write_json
from .paths import MODEL_FILE, baselines_dir, frontier_dir, train_dir
from .runtime import resolve_device
from .sample import load_trained
from .scoring import build_scorer
from .visuals import plot_frontier

SAMPLERS = ("ddim", "heun", "dpmpp2m", "dpmpp3m", "unipc")
TIME_SCHEDULES = ("uniform", "edm", "fitted")
EVALUATIONS = (5, 10, 20, 50)  # network evaluations per sample
# the references: where a few-step setting is read against (name -> sample settings)
REFERENCES = {
    "ddpm 1000": {"sampler": "ddpm", "steps": 1000, "time_schedule": "uniform", "restarts": 0},
    "heun 25 + 2 restarts": {"sampler": "heun", "steps": 25, "time_schedule": "uniform", "restarts": 2,
                             "restart_t": 200, "restart_steps": 10},
}
BASELINE_REFERENCE = "heun 25 + 2 restarts"  # the demo's sampler before the frontier: the targets' yardstick


@dataclass(frozen=True)
class Setting:
    sampler: str
    time_schedule: str
    evaluations: int  # the budget; a step of heun costs two

    @property
    def options(self) -> dict:
        return {"sampler": self.sampler, "time_schedule": self.time_schedule,
                "steps": samplers.steps_for(self.sampler, self.evaluations), "restarts": 0}


def measure(model, scorer, options: dict, n: int, seed: int, device: str) -> dict:
    """Sample ``n`` with ``options`` (nothing else from the model's config: no corrector, no restarts unless
    asked), score them, and time the sampling (decoding included, scoring not)."""
    settings = {"options": {}, "langevin_steps": 0, "restarts": 0, **options}
    wall, cpu = time.perf_counter(), time.process_time()
    generated = model.sample(n, seed=seed, device=device, progress=False, **settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {**{k: settings[k] for k in ("sampler", "time_schedule", "steps", "restarts")},
            "evaluations": generated.evaluations, "samples_per_s": n / wall, "samples_per_cpu_s": n / cpu,
            **scorer.score(generated.data)}


def model_frontier(cfg: Config, variant: Variant, settings: list[Setting], n: int, device: str,
                   done: Callable[[], None]) -> tuple[list[dict], dict]:
    """One model's rows (the references first, then every setting) and what the frontier records of it; calls
    ``done`` after each row."""
    scorer = build_scorer(cfg)
    baselines = read_json(baselines_dir(cfg, variant.transform) / "record.json")
    model = load_trained(train_dir(cfg, variant))
    fit_seconds = time.process_time()
    model.fitted_schedule(device)
    info = {"label": variant.label, "variant": [variant.distribution, variant.transform, variant.seed],
            "model_sha256": sha256_file(train_dir(cfg, variant) / MODEL_FILE),
            "fit_cpu_seconds": time.process_time() - fit_seconds,
            "fitted_grids": {e: model.grid("fitted", samplers.steps_for("ddim", e))
                             for e in sorted({s.evaluations for s in settings})}}
    jobs = ([(name, None, options) for name, options in REFERENCES.items()]
            + [(None, s.evaluations, s.options) for s in settings])
    rows = []
    for reference, budget, options in jobs:
        row = measure(model, scorer, options, n, variant.seed, device)
        row |= read_against_baselines(row, baselines, scorer.champion)
        rows.append({"model": variant.name, "label": variant.label, "reference": reference, "budget": budget, **row})
        done()
    return rows, info


def run_frontier(cfg: Config, variants: list[Variant] | None = None, samplers_: tuple[str, ...] = SAMPLERS,
                 time_schedules: tuple[str, ...] = TIME_SCHEDULES, evaluations: tuple[int, ...] = EVALUATIONS,
                 num_samples: int | None = None, progress: bool = True) -> dict:
    """Measure the frontier of ``variants`` (default: every trained model of ``cfg``) on ``num_samples`` samples
    per setting (default ``eval.num_samples``); write ``frontier/`` and return what ``frontier.json`` holds.

    On CPU the models are measured side by side, one process and one thread each, as many at once as there are
    cores (one thread per process: two OpenMP threads per process on shared cores spin and slow everything)."""
    variants = [v for v in (variants or cfg.variants()) if (train_dir(cfg, v) / MODEL_FILE).exists()]
    if not variants:
        raise FileNotFoundError(f"no trained models under {train_dir(cfg, cfg.variants()[0]).parent}; run "
                                "logdiff run first")
    scorer = build_scorer(cfg)
    n = num_samples or cfg.eval.num_samples
    if n < scorer.size:
        raise ValueError(f"--num-samples {n} is below the metric's sample size {scorer.size}")
    device = str(resolve_device(cfg.train.device))
    settings = [Setting(s, ts, e) for s in samplers_ for ts in time_schedules for e in evaluations]
    workers = min(len(variants), os.cpu_count() or 1) if device == "cpu" else 1
    bar = progress_bar(total=len(variants) * (len(settings) + len(REFERENCES)), desc="frontier", disable=not progress)
    if workers == 1:
        measured = [model_frontier(cfg, v, settings, n, device, bar.update) for v in variants]
    else:
        measured = _side_by_side(workers, [(cfg, v, settings, n, device) for v in variants], bar)
    bar.close()
    rows = [row for model_rows, _ in measured for row in model_rows]
    first = read_json(baselines_dir(cfg, variants[0].transform) / "record.json")
    result = {"metric": scorer.champion, "metric_sample_size": scorer.size, "num_samples": n,
              "sets": n // scorer.size, "confidence": scorer.confidence, "device": device,
              "threads": 1 if workers > 1 else torch.get_num_threads(), "processes": workers,
              "evaluations": list(evaluations),
              "baselines": {t: {name: read_json(baselines_dir(cfg, t) / "record.json").get(name)
                                for name in ("floor", "ceiling")} for t in {v.transform for v in variants}},
              "models": {v.name: info for v, (_, info) in zip(variants, measured)}, "rows": rows,
              "floor": first["floor"][scorer.champion]}
    folder = frontier_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    plot_frontier(result, folder / "frontier.png")
    atomic_write_text(folder / "frontier.md", "\n".join(markdown(result)) + "\n")
    write_json(folder / "frontier.json", result)
    return result


def _side_by_side(workers: int, jobs: list[tuple], bar) -> list[tuple[list[dict], dict]]:
    """``model_frontier`` of each job in ``workers`` processes of one thread each, the bar kept current."""
    context = multiprocessing.get_context("spawn")  # a fork would inherit torch's thread pool mid-use
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                                                            initargs=(1,)) as pool:
        finished = manager.Queue()
        futures = [pool.submit(model_frontier, *job, partial(finished.put, 1)) for job in jobs]
        while not all(f.done() for f in futures) or not finished.empty():
            try:
                bar.update(finished.get(timeout=0.5))
            except queue.Empty:
                pass
        return [f.result() for f in futures]  # a worker's error is raised here


def _row_label(row: dict) -> str:
    return row["reference"] or f"{row['sampler']} {row['time_schedule']}"


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return ""
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    return f"{row[metric]:.3g}" + (f" [{low:.3g}, {high:.3g}]" if low is not None else "")


def best_rows(result: dict) -> dict[str, dict[int, dict]]:
    """Per model, the best setting (lowest metric) at each evaluation budget."""
    metric, best = result["metric"], {}
    for row in result["rows"]:
        if row["reference"] is None:
            current = best.setdefault(row["model"], {}).get(row["budget"])
            if current is None or row[metric] < current[metric]:
                best[row["model"]][row["budget"]] = row
    return best


def gap_ratio(row: dict, reference: dict, floor: float, metric: str) -> float:
    """``row``'s distance above the floor as a multiple of ``reference``'s (1.10: 10% farther)."""
    return (row[metric] - floor) / (reference[metric] - floor)


def _by_model(result: dict) -> dict[str, list[dict]]:
    by_model: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_model.setdefault(row["model"], []).append(row)
    return by_model


def summary(result: dict) -> list[str]:
    """Markdown: per model, the references and the best setting at each budget, against the baseline reference."""
    metric, floor = result["metric"], result["floor"]
    evaluations = result["evaluations"]
    best = best_rows(result)
    out = [f"{metric} (lower is better) of {result['num_samples']} samples per setting, the mean of "
           f"{result['sets']} sets of {result['metric_sample_size']} with its {result['confidence']:.0%} interval; "
           f"every setting of a model starts from the same noise. Floor {floor:.3g}. 'vs default' is the distance "
           f"above the floor as a multiple of the '{BASELINE_REFERENCE}' reference's (1.10: 10% farther).", "",
           "| model | " + " | ".join(REFERENCES) + " | " + " | ".join(f"best at {e}" for e in evaluations) + " |",
           "| --- | " + " | ".join("---:" for _ in REFERENCES) + " | " + " | ".join("---" for _ in evaluations) + " |"]
    for model, rows in _by_model(result).items():
        refs = {row["reference"]: row for row in rows if row["reference"]}
        default = refs[BASELINE_REFERENCE]
        cells = [f"{_cell(refs[name], metric)}, {refs[name]['evaluations']} evals" for name in REFERENCES]
        for e in evaluations:
            row = best[model].get(e)
            cells.append("" if row is None else f"{_row_label(row)}: {_cell(row, metric)}, vs default "
                         f"x{gap_ratio(row, default, floor, metric):.2f}")
        out.append(f"| {rows[0]['label']} | " + " | ".join(cells) + " |")
    return out


def markdown(result: dict) -> list[str]:
    """The frontier as markdown: the summary, each model's full table, the throughput."""
    metric, evaluations = result["metric"], result["evaluations"]
    out = summary(result)
    for model, rows in _by_model(result).items():
        out += ["", f"### {rows[0]['label']}", "",
                "| sampler, time schedule | " + " | ".join(f"{e} evals" for e in evaluations) + " |",
                "| --- | " + " | ".join("---:" for _ in evaluations) + " |"]  # throughput: its own table below
        lines: dict[str, dict[int, dict]] = {}
        for row in rows:
            if row["reference"] is None:
                lines.setdefault(_row_label(row), {})[row["budget"]] = row
        out += [f"| {label} | " + " | ".join(_cell(cells.get(e), metric) for e in evaluations) + " |"
                for label, cells in lines.items()]
        out += [f"| {row['reference']} ({row['evaluations']} evals) | {_cell(row, metric)} |"
                + " |" * (len(evaluations) - 1) for row in rows if row["reference"]]
    return out + ["", *throughput(result)]


def throughput(result: dict) -> list[str]:
    """Samples per CPU-second (sampling and decoding; steadier than wall-clock time on a shared machine) by
    budget and sampler, the mean over models and time schedules, and the references'."""
    by: dict[tuple, list[float]] = {}
    for row in result["rows"]:
        by.setdefault((row["reference"] or row["sampler"], row["budget"]), []).append(row["samples_per_cpu_s"])
    names = list(dict.fromkeys(name for name, _ in by))
    budgets = result["evaluations"]
    out = [f"Samples per CPU-second on {result['device']} ({result['threads']} threads), sampling and decoding, "
           "mean over models and time schedules:", "",
           "| sampler | " + " | ".join(f"{e} evals" for e in budgets) + " |",
           "| --- | " + " | ".join("---:" for _ in budgets) + " |"]
    for name in names:
        if name in REFERENCES:
            out.append(f"| {name} | {np.mean(by[(name, None)]):,.0f} |" + " |" * (len(budgets) - 1))
        else:
            out.append(f"| {name} | " + " | ".join(f"{np.mean(by[(name, e)]):,.0f}" if (name, e) in by else ""
                                                   for e in budgets) + " |")
    return out


def report_section(cfg: Config, out: Path) -> str:
    """The report's frontier section (its picture copied into ``out``), or nothing when no frontier was measured
    or the models it measured were trained again since (then a line says so)."""
    path = frontier_dir(cfg) / "frontier.json"
    if not path.exists():
        return ""
    result = read_json(path)
    files = {name: train_dir(cfg, Variant(*info["variant"])) / MODEL_FILE for name, info in result["models"].items()}
    changed = [name for name, file in files.items()
               if not file.exists() or sha256_file(file) != result["models"][name]["model_sha256"]]
    if changed:
        return ("\n## Sampling frontier\n\nThe frontier in frontier/ measured models trained again since ("
                + ", ".join(changed) + "): rerun `logdiff frontier` for the current ones.\n")
    shutil.copyfile(frontier_dir(cfg) / "frontier.png", out / "frontier.png")
    return "\n".join(["", "## Sampling frontier", "", *markdown(result), "", "![frontier](frontier.png)", ""])

