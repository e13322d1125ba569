"""Where a run's time went: the wall time of each stage's last run, for the report and MLflow.

Kept in the experiment's state folder, not in the stages' outputs (a stage's folder holds what it made, identical
whoever runs it): ``timings/<stage>.json`` per stage run, ``{"started": epoch seconds, "seconds": wall seconds}``
(models train side by side, so each writes its own file), and ``timings/run.json``, when the current
``logdiff run`` started, so that the report can tell this run's stages from up-to-date ones and say what the
rest (start-up, Ray, MLflow, registering) took.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from .config import Config
from .io import read_json, write_json
from .paths import timings_dir

RUN = "run"  # the file that marks the current run's start


@contextmanager
def timed(cfg: Config, stage: str) -> Iterator[dict]:
    """Time the block as stage ``stage`` (its DVC name, e.g. ``train@gaussian-identity-0``); the yielded dict
    gets ``seconds`` when the block ends. A block that fails records nothing."""
    started, began, timing = time.time(), time.perf_counter(), {}
    yield timing
    timing["seconds"] = time.perf_counter() - began
    write_json(timings_dir(cfg) / f"{stage}.json", {"started": started, "seconds": timing["seconds"]})


def mark_run_start(cfg: Config, started: float | None) -> None:
    """Record when the current ``logdiff run`` started; None: stages run on their own now (``dvc repro``), so the
    report lists each stage's last time and no total."""
    if started is None:
        (timings_dir(cfg) / f"{RUN}.json").unlink(missing_ok=True)
    else:
        write_json(timings_dir(cfg) / f"{RUN}.json", {"started": started})


def _recorded(cfg: Config) -> tuple[float | None, dict[str, dict]]:
    folder = timings_dir(cfg)
    stages = {path.stem: read_json(path) for path in sorted(folder.glob("*.json")) if path.stem != RUN}
    run = folder / f"{RUN}.json"
    return (read_json(run)["started"] if run.exists() else None), stages


def phases(cfg: Config, running: str | None = None, now: float | None = None) -> dict:
    """The wall time of each stage in the current run, in the order they started, by base name (``train``): one
    stage's seconds, or for a stage run once per model or transform, from the first one's start to the last one's
    end (models train side by side), with the items' count and their range. Stages not run in this run are listed
    as up to date; ``running`` (the stage asking) is left out. With a run start: ``other`` (the time no stage
    accounts for) and ``total`` (the run's start to ``now``)."""
    run_start, stages = _recorded(cfg)
    now = time.time() if now is None else now
    groups: dict[str, list[dict]] = {}
    for name, timing in sorted(stages.items(), key=lambda item: item[1]["started"]):
        groups.setdefault(name.split("@")[0], []).append(timing)
    rows, up_to_date = {}, []
    for base, items in groups.items():
        fresh = [t for t in items if run_start is None or t["started"] >= run_start]
        if base == running:
            continue
        if not fresh:
            up_to_date.append(base)
            continue
        each = [t["seconds"] for t in fresh]
        rows[base] = {"seconds": max(t["started"] + t["seconds"] for t in fresh) - fresh[0]["started"],
                      "items": len(fresh), "each_min": min(each), "each_max": max(each)}
    summary = {"stages": rows, "up_to_date": up_to_date}
    if run_start is not None:
        total = now - run_start
        # stages that overlap (none do but the models) are counted once, by their phase
        summary |= {"total": total, "other": max(0.0, total - sum(r["seconds"] for r in rows.values()))}
    return summary


def duration(seconds: float) -> str:
    """``42 s``, ``4 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def markdown(cfg: Config, running: str) -> list[str]:
    """The report's section on where the time went, written by stage ``running`` (none when no stage recorded
    its time)."""
    summary = phases(cfg, running)
    if not summary["stages"]:
        return []
    out = ["## Where the time went", "",
           "Wall time of each stage in this run" + ("" if "total" in summary else " (the last run of each)")
           + "; the models train side by side, so their stage's time is from the first start to the last end.", "",
           "| stage | wall time | |", "| --- | ---: | --- |"]
    for base, row in summary["stages"].items():
        note = (f"{row['items']} runs, {duration(row['each_min'])} to {duration(row['each_max'])} each"
                if row["items"] > 1 else "")
        out.append(f"| {base} | {duration(row['seconds'])} | {note} |")
    if "total" in summary:
        out += [f"| other: start-up, Ray, MLflow, registering | {duration(summary['other'])} | |",
                f"| **total, from the command's start to this report** | **{duration(summary['total'])}** | |"]
    if summary["up_to_date"]:
        out += ["", "Up to date, not run: " + ", ".join(summary["up_to_date"]) + "."]
    return out + [""]
