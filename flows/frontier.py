"""``logdiff frontier``: the NFE-quality frontier of an experiment's trained models (``tasks.frontier``), logged to
MLflow as a run of the experiment, and shown in the comparison report (which it writes again, and records with
DVC, so that ``dvc status`` stays clean).

An opt-in command, not a pipeline stage: on the demo it samples and scores 3,592 samples in 62 settings per model,
minutes of CPU (docs/sampling.md), where the whole ``make demo`` has five.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tasks import config
from tasks.config import Config


def frontier_command(preset: str, overrides: list[str], project_dir: str | Path, distributions: list[str] | None,
                     samplers: list[str] | None, time_schedules: list[str] | None, evaluations: list[int] | None,
                     num_samples: int | None) -> tuple[Path, list[str]]:
    """Measure, write, record; returns the frontier's folder and its summary table."""
    from tasks import frontier
    from tasks.paths import frontier_dir

    from flows import tracking
    from flows.project import dvc, project_lock
    from flows.stages import run_stage

    project = Path(project_dir).resolve()
    cfg = config.load(preset, overrides)
    cfg = replace(cfg, workdir=str(project / cfg.work))
    variants = [v for v in cfg.variants() if not distributions or v.distribution in distributions]
    if not variants:
        raise ValueError(f"--distribution {' '.join(distributions or [])}: none of them is in "
                         f"diffusion.distributions ({', '.join(cfg.diffusion.distributions)})")
    _check_choices(samplers, time_schedules, evaluations)
    with project_lock(project):
        result = frontier.run_frontier(cfg, variants, tuple(samplers or frontier.SAMPLERS),
                                       tuple(time_schedules or frontier.TIME_SCHEDULES),
                                       tuple(evaluations or frontier.EVALUATIONS), num_samples)
        if (cfg.work / "report" / "report.md").exists():
            run_stage(cfg, "report")
            if (cfg.work / "dvc.lock").exists():
                dvc(cfg.work, ["commit", "--force", "--quiet", "report"])
        if tracking.configured(project):
            _log(cfg, project, result, tracking)
    return frontier_dir(cfg), frontier.summary(result)


def _check_choices(samplers: list[str] | None, time_schedules: list[str] | None,
                   evaluations: list[int] | None) -> None:
    from logdiff_core import samplers as sampler_lib
    from logdiff_core import time_schedules as schedule_lib

    for name in samplers or []:
        sampler_lib.check_sampler(name)
    for name in time_schedules or []:
        if name not in schedule_lib.NAMES:
            raise ValueError(f"--time-schedules {name}: choose from {', '.join(schedule_lib.NAMES)}")
    if any(e < 1 for e in evaluations or []):
        raise ValueError(f"--evaluations {evaluations}: each must be at least 1")


def _log(cfg: Config, project: Path, result: dict, tracking) -> None:
    """One MLflow run, ``frontier``, in the experiment: each setting's score as a metric named
    ``<model>.<sampler>.<time schedule>.<budget>`` (references by name), the tables and the plot as files."""
    from tasks.paths import frontier_dir

    metric = result["metric"]
    scores: dict = {}
    for row in result["rows"]:
        key = row["reference"].replace(" ", "_").replace("+", "plus") if row["reference"] else \
            f"{row['sampler']}.{row['time_schedule']}.{row['budget']}"
        scores.setdefault(row["label"], {})[key] = float(row[metric])
    params = {"samplers": sorted({r["sampler"] for r in result["rows"] if not r["reference"]}),
              "time_schedules": sorted({r["time_schedule"] for r in result["rows"] if not r["reference"]}),
              "evaluations": result["evaluations"], "num_samples": result["num_samples"], "metric": metric}
    with tracking.standalone_stage_run(cfg, project, "frontier", params, started_by="logdiff frontier") as run_id:
        tracking.log_stage_outputs(run_id, {metric: scores}, sorted(frontier_dir(cfg).glob("frontier.*")))
