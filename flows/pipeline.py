"""The LogDiff pipeline as a Prefect flow:

ingest -> autoencoder -> encode (per transform) -> train (Ray, one per distribution x transform) -> evaluate
-> register (MLflow) -> report

Each experiment (preset) is a DVC pipeline of its own in its folder (``artifacts/<name>/``). DVC decides what is
stale: a stage runs only when ``dvc status`` says its deps or params changed (or with ``force``), and is recorded
with ``dvc commit`` afterwards, so after a flow run ``dvc status`` is clean and ``dvc repro`` agrees with the flow.
One MLflow parent run per flow run (with the comparison report); a child run per stage and per model.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import tracking
from flows.project import StaleStages, prepare_experiment, project_lock
from flows.stages import STAGES, Item, run_stage, stage_names, stage_params, stage_pictures
from tasks import config
from tasks.config import Config, Variant
from tasks.io import read_json
from tasks.paths import MODEL_FILE, data_dir, eval_dir, report_dir, train_dir


@task(name="stage", retries=1, retry_delay_seconds=2, cache_policy=NONE, task_run_name="{stage}")
def stage_task(cfg: Config, stage: str, parent_run_id: str, item: Item = None) -> dict:
    with tracking.child_run(parent_run_id, STAGES[stage].dvc_name(item), params=stage_params(cfg, stage)) as run_id:
        record = run_stage(cfg, stage, item, callback=tracking.MetricLogger(mlflow_uri(), run_id))
        tracking.log_stage_outputs(run_id, record, stage_pictures(cfg, stage, item))
    return record


@task(name="train-all", cache_policy=NONE)
def train_task(cfg: Config, variants: list[Variant], run_ids: dict[str, str]) -> dict:
    from flows.distributed import train_variants

    uri = mlflow_uri()
    callbacks = {v.name: tracking.MetricLogger(uri, run_ids[v.name]) for v in variants}
    results = train_variants(cfg, variants, callbacks)
    for variant in variants:
        if isinstance(result := results[variant.name], dict):
            tracking.log_stage_outputs(run_ids[variant.name], result, stage_pictures(cfg, "train", variant))
    return results


@task(name="evaluate", retries=1, retry_delay_seconds=2, cache_policy=NONE,
      task_run_name="evaluate-{variant.name}")
def evaluate_task(cfg: Config, variant: Variant, run_id: str) -> dict:
    record = run_stage(cfg, "evaluate", variant)
    tracking.log_stage_outputs(run_id, record, stage_pictures(cfg, "evaluate", variant))
    return record


@task(name="register", retries=2, retry_delay_seconds=2, cache_policy=NONE,
      task_run_name="register-{variant.name}")
def register_task(cfg: Config, variant: Variant, run_id: str, tags: dict) -> dict:
    metrics = read_json(eval_dir(cfg, variant) / "record.json")
    registered = tracking.register_model(train_dir(cfg, variant) / MODEL_FILE, dataset=dataset_name(cfg),
                                         variant=variant, run_id=run_id, score=metrics["champion_score"],
                                         metric=metrics["champion_metric"], tags=tags)
    return {**registered, "metric": metrics["champion_metric"]}


def mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def lineage_hashes(cfg: Config) -> dict:
    """What data a model came from: the ingest manifest's content hash and DVC's hash of the data folder."""
    import yaml

    from tasks.data import load_manifest

    lock = cfg.work / "dvc.lock"
    outs = yaml.safe_load(lock.read_text()).get("stages", {}).get("ingest", {}).get("outs", []) if lock.exists() else []
    return {"data_content_hash": load_manifest(data_dir(cfg))["content_hash"],
            "dvc_data_md5": outs[0].get("md5", "") if outs else ""}


@contextmanager
def variant_runs(parent_id: str, cfg: Config, tags: dict) -> Iterator[dict[str, str]]:
    """One MLflow child run per model (training curves, evaluation, registered model), keyed by variant name and
    open together so Ray workers can log into them concurrently."""
    with ExitStack() as stack:
        yield {v.name: stack.enter_context(tracking.child_run(
                   parent_id, v.label,
                   params={**stage_params(cfg, "train", "evaluate"),
                           "noise": {v.distribution: cfg.diffusion.distributions[v.distribution]},
                           "transform": v.transform},
                   tags={**tags, "distribution": v.distribution, "transform": v.transform}))
               for v in cfg.variants()}


def dataset_name(cfg: Config) -> str:
    if cfg.data.source in ("folder", "arrays") and cfg.data.path:
        stem = Path(cfg.data.path).name.split(".")[0]
        return "".join(c if c.isalnum() else "-" for c in stem.lower()) or cfg.data.source
    return cfg.data.source


@flow(name="logdiff-pipeline", log_prints=True)
def pipeline(preset: str = "demo", overrides: list[str] | None = None, project_dir: str = ".",
             force: bool = False) -> dict:
    """Run every stale stage of the pipeline for ``preset`` + ``overrides`` in ``project_dir``."""
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    cfg = config.load(preset, overrides or [])
    with project_lock(project):
        return _run_stale_stages(cfg, preset, project, force, logger)


def _run_stale_stages(cfg: Config, preset: str, project: Path, force: bool, logger) -> dict:
    # stages resolve paths against the experiment folder, wherever Prefect or Ray run them
    run_cfg = replace(cfg, workdir=str(prepare_experiment(project, cfg)))
    variants = cfg.variants()
    stale = StaleStages(run_cfg.work, stage_names(cfg), force)
    logger.info("stale stages: %s", ", ".join(n for n in stage_names(cfg) if n in stale.stale) or "none")

    lineage = {"git_commit": tracking.git_commit(project), "prefect_flow_run_id": _flow_run_id(),
               "preset": preset}
    summary: dict = {"stages_run": [], "models": {}}

    def ran(name: str) -> None:
        stale.ran(name)
        summary["stages_run"].append(name)

    def run_if_stale(stage: str, item: Item, run) -> None:
        if (name := STAGES[stage].dvc_name(item)) in stale:
            run()
            ran(name)

    with tracking.start_parent_run(cfg, project, tags=lineage) as parent_id:
        for stage in ("ingest", "autoencoder", "encode"):
            for item in STAGES[stage].items(cfg):
                run_if_stale(stage, item, lambda: stage_task(run_cfg, stage, parent_id, item))
        lineage.update(lineage_hashes(run_cfg))
        with variant_runs(parent_id, cfg, lineage) as run_ids:
            to_train = [v for v in variants if STAGES["train"].dvc_name(v) in stale]
            if to_train:  # one call, so Ray trains them side by side
                results = train_task(run_cfg, to_train, run_ids)
                for v in to_train:
                    if isinstance(result := results[v.name], dict):
                        ran(STAGES["train"].dvc_name(v))
                    else:
                        failure = f"training failed: {type(result).__name__}: {result}"
                        summary["models"][v.label] = {"error": failure}
                        logger.error("%s: %s", v.label, failure)
            for v in variants:
                if "error" in summary["models"].get(v.label, {}):
                    continue
                run_if_stale("evaluate", v, lambda: evaluate_task(run_cfg, v, run_ids[v.name]))
                summary["models"][v.label] = register_task(run_cfg, v, run_ids[v.name], lineage)
        if any("error" not in info for info in summary["models"].values()):
            run_if_stale("report", None, lambda: stage_task(run_cfg, "report", parent_id))
            if "report" in summary["stages_run"]:
                tracking.log_stage_outputs(parent_id, {}, stage_pictures(run_cfg, "report"))
        report_file = report_dir(run_cfg) / "report.md"
        summary["report"] = str(report_file) if report_file.exists() else None
    return summary


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def run_pipeline(preset: str, overrides: list[str], project_dir: str = ".", force: bool = False) -> dict:
    config.load(preset, overrides)  # a config mistake is a one-line error before Prefect starts
    with project_lock(Path(project_dir)):  # and so is a busy project; the flow re-enters the lock
        return pipeline(preset, list(overrides), str(project_dir), force)


def print_summary(summary: dict) -> None:
    ran = ", ".join(summary["stages_run"]) or "nothing (everything up to date)"
    print(f"\nstages run: {ran}")
    print(f"{'model':<22}{'metric':<14}{'score':>12}  {'version':>7}  champion")
    for name, info in summary["models"].items():
        if "error" in info:
            print(f"{name:<22}{info['error']}")
            continue
        marker = "yes" if info["champion"] else f"no (v{info['champion_version']} is)"
        print(f"{name:<22}{info['metric']:<14}{info['score']:>12.4f}  {info['version']:>7}  {marker}")
    if summary["report"]:
        print(f"comparison report: {summary['report']}")
