"""The LogDiff pipeline as a Prefect flow:

ingest -> autoencoder -> encode (per transform) -> train (Ray, one per distribution x transform) -> evaluate
-> register (MLflow) -> report

Each experiment (preset) is a DVC pipeline of its own in its folder (``artifacts/<name>/``). DVC decides what is
stale: a stage runs only when ``dvc status`` says its deps or params changed (or with ``force``), and is recorded
with ``dvc commit`` afterwards, so after a flow run ``dvc status`` is clean and ``dvc repro`` agrees with the flow.
One MLflow parent run per flow run (with the comparison report); a child run per stage and per model.
"""
from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Failed

from flows import tracking
from flows.cluster import check_cluster, publish_inputs, pull_outputs, push_outputs
from flows.project import StaleStages, dvc_processes, prepare_experiment, project_lock
from flows.stages import STAGES, Item, run_stage, stage_names, stage_params, stage_pictures
from tasks import config, timings
from tasks.config import Config, Variant
from tasks.data import load_manifest
from tasks.io import read_json, write_json
from tasks.paths import MODEL_FILE, data_dir, eval_dir, report_dir, state_dir, train_dir
from tasks.scoring import BASELINES, CEILING_RATIO_KEYS, format_ceiling_ratio


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry what may pass a second time (a busy store, a lost worker), never a mistake in the data or config."""
    try:
        state.result()
    except USER_ERRORS:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


# Deterministic failures: the same input fails the same way, so a retry only doubles the noise.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError)
RETRIED = dict(retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_user_error, cache_policy=NONE)


@task(name="stage", task_run_name="{stage}", **RETRIED)
def stage_task(cfg: Config, stage: str, parent_run_id: str, item: Item = None) -> dict:
    with tracking.child_run(parent_run_id, STAGES[stage].dvc_name(item), params=stage_params(cfg, stage)) as run_id:
        record = run_stage(cfg, stage, item, callback=tracking.MetricLogger(mlflow_uri(), run_id))
        tracking.log_stage_outputs(run_id, record, stage_pictures(cfg, stage, item))
    return record


@task(name="train", task_run_name="train-{variant.name}", cache_policy=NONE)
def train_task(cfg: Config, variant: Variant, pending, run_id: str) -> dict:
    """One model's training, as its own task so each model's state shows in Prefect: ``pending`` is its Ray
    work, already running side by side with the others."""
    from flows.distributed import fetch_trained, wait_for

    record = wait_for(pending)
    fetch_trained(cfg, variant)
    tracking.log_stage_outputs(run_id, record, stage_pictures(cfg, "train", variant))
    return record


@task(name="evaluate", task_run_name="evaluate-{variant.name}", **RETRIED)
def evaluate_task(cfg: Config, variant: Variant, run_id: str) -> dict:
    record = run_stage(cfg, "evaluate", variant, callback=tracking.MetricLogger(mlflow_uri(), run_id))
    tracking.log_stage_outputs(run_id, record, stage_pictures(cfg, "evaluate", variant))
    return record


@task(name="register", task_run_name="register-{variant.name}", **RETRIED)
def register_task(cfg: Config, variant: Variant, run_id: str, tags: dict) -> dict:
    scored = evaluation(cfg, variant)
    registered = tracking.register_model(train_dir(cfg, variant) / MODEL_FILE, dataset=dataset_name(cfg),
                                         variant=variant, run_id=run_id, score=scored["score"],
                                         metric=scored["metric"], tags=tags)
    return {**registered, **scored}


def evaluation(cfg: Config, variant: Variant) -> dict:
    """A model's champion score as the summary shows it: value, interval, and against the baselines."""
    record = read_json(eval_dir(cfg, variant) / "record.json")
    metric = record.get("ranked_by", record["champion_metric"])  # images: against the held-out split
    prefix = metric[: len(metric) - len(record["champion_metric"])]
    return {"metric": metric, "score": record[metric], "low": record.get(f"{metric}_low"),
            "high": record.get(f"{metric}_high"), "beats_trivial": record.get(f"{prefix}beats_trivial"),
            "label": variant.label, "seed": variant.seed,
            **{key: record.get(f"{prefix}{key}") for key in CEILING_RATIO_KEYS}}


def mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def lineage_hashes(cfg: Config, lock: Path) -> dict:
    """What data a model came from: the ingest manifest's content hash and DVC's hash of the data folder (from the
    pipeline's ``lock``)."""
    import yaml

    outs = yaml.safe_load(lock.read_text()).get("stages", {}).get("ingest", {}).get("outs", []) if lock.exists() else []
    return {"data_content_hash": load_manifest(data_dir(cfg))["content_hash"],
            "dvc_data_md5": outs[0].get("md5", "") if outs else ""}


def _resume_file(cfg: Config, variant: Variant) -> Path:
    """Where a model's MLflow run id waits while its training may still be resumed after a kill."""
    return state_dir(cfg) / "runs" / f"{variant.name}.json"


@contextmanager
def variant_runs(parent_id: str, cfg: Config, variants: list[Variant], tags: dict) -> Iterator[dict[str, str]]:
    """One MLflow child run per model (training curves, evaluation, registered model), keyed by variant name and
    open together so Ray workers can log into them concurrently. A model whose training was killed gets its
    unfinished run back, so its loss curve is whole after the resume."""
    with ExitStack() as stack:
        run_ids = {}
        for v in variants:
            resume_file = _resume_file(cfg, v)
            resumed = tracking.unfinished_run(read_json(resume_file)["run_id"] if resume_file.exists() else None)
            run_ids[v.name] = stack.enter_context(tracking.child_run(
                parent_id, v.name, resume_run_id=resumed,
                params={**stage_params(cfg, "train", "evaluate"),
                        "noise": {v.distribution: cfg.diffusion.distributions[v.distribution]},
                        "transform": v.transform},
                tags={**tags, "distribution": v.distribution, "transform": v.transform, "seed": v.seed}))
            write_json(resume_file, {"run_id": run_ids[v.name]})
        yield run_ids
        for v in variants:  # finished: nothing left to resume into
            _resume_file(cfg, v).unlink(missing_ok=True)


def dataset_name(cfg: Config) -> str:
    if cfg.data.source in ("folder", "arrays") and cfg.data.path:
        stem = Path(cfg.data.path).name.split(".")[0]
        return "".join(c if c.isalnum() else "-" for c in stem.lower()) or cfg.data.source
    return cfg.data.source


@flow(name="logdiff-pipeline", log_prints=True)
def pipeline(preset: str = "demo", overrides: list[str] | None = None, project_dir: str = ".",
             force: bool = False, ray_dashboard: bool = False, started: float | None = None):
    """Run every stale stage of the pipeline for ``preset`` + ``overrides`` in ``project_dir``. Ends Failed (with
    the summary as its data) when a model failed. ``started``: when the command started (epoch seconds), for the
    report's timings (default: now)."""
    project = Path(project_dir).resolve()
    cfg = config.load(preset, overrides or [])
    with project_lock(project), dvc_processes():
        summary = _run_stale_stages(cfg, preset, project, force, ray_dashboard, get_run_logger(),
                                    started or time.time())
        push_outputs(cfg, Path(summary["pipeline"]))
    failed = [name for name, info in summary["models"].items() if "error" in info]
    if failed:
        return Failed(message=f"{len(failed)} model(s) failed: {', '.join(failed)}", data=summary)
    return summary


def _run_stale_stages(cfg: Config, preset: str, project: Path, force: bool, ray_dashboard: bool, logger,
                      started: float) -> dict:
    pipeline_files = prepare_experiment(project, cfg)
    # stages resolve paths against the experiment folder, wherever Prefect or Ray run them
    run_cfg = replace(cfg, workdir=str(pipeline_files.experiment))
    timings.mark_run_start(run_cfg, started)
    pull_outputs(run_cfg, pipeline_files.folder)  # from a DVC remote, if set: made elsewhere, not made again
    variants = cfg.variants()
    stale = StaleStages(pipeline_files.folder, stage_names(cfg), force)
    summary: dict = {"experiment": str(run_cfg.work), "pipeline": str(pipeline_files.folder), "stages_run": [],
                     "models": {}}
    report_file = report_dir(run_cfg) / "report.md"
    tracking.use_store(project)
    if not stale.stale and (registered := _all_registered(run_cfg)):
        logger.info("every stage is up to date and every model registered: nothing to run, nothing to log")
        return {**summary, "models": registered, "best": tracking.best_uri([i["name"] for i in registered.values()]),
                "report": str(report_file) if report_file.exists() else None}
    logger.info("stale stages: %s", ", ".join(n for n in stage_names(cfg) if n in stale.stale) or "none")
    tracking.setup(cfg.name, project)
    for orphan in tracking.close_orphans(cfg.name):
        logger.warning("MLflow run %s belonged to a run that was killed: marked KILLED", orphan)

    lineage = {"git_commit": tracking.git_commit(project), "prefect_flow_run_id": _flow_run_id(),
               "preset": preset}

    def run_if_stale(stage: str, item: Item, run) -> bool:
        if (name := STAGES[stage].dvc_name(item)) not in stale:
            return False
        run()
        stale.ran(name)
        summary["stages_run"].append(name)
        return True

    with tracking.start_parent_run(cfg, project, tags=lineage) as parent_id:
        for stage in (s for s in STAGES.values() if s.fan_out != "variant" and s.name != "report"):
            for item in stage.items(cfg):
                run_if_stale(stage.name, item, lambda: stage_task(run_cfg, stage.name, parent_id, item))
        lineage.update(lineage_hashes(run_cfg, pipeline_files.folder / "dvc.lock"))
        manifest = load_manifest(data_dir(run_cfg))
        with variant_runs(parent_id, run_cfg, variants, lineage) as run_ids:
            tracking.log_dataset([parent_id, *run_ids.values()], manifest)
            _train_stale(run_cfg, variants, run_ids, stale, summary, ray_dashboard, logger)
            for v in variants:
                if "error" in summary["models"].get(v.name, {}):
                    continue
                run_if_stale("evaluate", v, lambda: evaluate_task(run_cfg, v, run_ids[v.name]))
                summary["models"][v.name] = register_task(run_cfg, v, run_ids[v.name], lineage)
        registered = [info["name"] for info in summary["models"].values() if "name" in info]
        summary["best"] = tracking.promote_best(dataset_name(cfg), registered) if registered else None
        if any("error" not in info for info in summary["models"].values()):
            if run_if_stale("report", None, lambda: stage_task(run_cfg, "report", parent_id)):
                tracking.log_stage_outputs(parent_id, {}, stage_pictures(run_cfg, "report"))
                _report_artifact(cfg, report_file)
        tracking.log_stage_outputs(parent_id, {"stage_seconds": _stage_seconds(run_cfg)})
        summary["report"] = str(report_file) if report_file.exists() else None
        if any("error" in info for info in summary["models"].values()):
            raise tracking.RunFailed  # the pipeline run ends FAILED too
    return summary


def _stage_seconds(cfg: Config) -> dict:
    """The wall time of each stage this run ran (the models' training as one phase), of the rest and in all: the
    parent run's ``stage_seconds.*`` metrics."""
    summary = timings.phases(cfg)
    return {base: row["seconds"] for base, row in summary["stages"].items()} | {
        key: summary[key] for key in ("other", "total")}


def _all_registered(cfg: Config) -> dict | None:
    """Every model's registry entry (what registering it again would return), or None if one is not registered."""
    found = {}
    for v in cfg.variants():
        info = tracking.registered_version(train_dir(cfg, v) / MODEL_FILE, dataset_name(cfg), v)
        if info is None:
            return None
        found[v.name] = {**info, **evaluation(cfg, v)}
    return found


def _train_stale(cfg: Config, variants: list[Variant], run_ids: dict[str, str], stale: StaleStages, summary: dict,
                 ray_dashboard: bool, logger) -> None:
    """Start every stale model's training at once (Ray runs them side by side), then wait for each in a task of
    its own. A model that fails is recorded, in the summary and as a FAILED MLflow run, and the others go on."""
    from flows.distributed import cancel, start_training

    to_train = [v for v in variants if STAGES["train"].dvc_name(v) in stale]
    if not to_train:
        return
    uri = mlflow_uri()
    publish_inputs(cfg, "train", to_train)  # what the workers will fetch, whichever machine made it
    pending = start_training(cfg, to_train, {v.name: tracking.MetricLogger(uri, run_ids[v.name]) for v in to_train},
                             dashboard=ray_dashboard)
    try:
        futures = {v: train_task.submit(cfg, v, pending[v.name], run_ids[v.name]) for v in to_train}
        for v, future in futures.items():
            state = future.wait() or future.state
            if state.is_completed():
                stale.ran(STAGES["train"].dvc_name(v))
                summary["stages_run"].append(STAGES["train"].dvc_name(v))
                continue
            error = future.result(raise_on_failure=False)
            failure = f"training failed: {type(error).__name__}: {error}"
            summary["models"][v.name] = {"error": failure}
            logger.error("%s: %s", v.name, failure)
            tracking.mark_failed(run_ids[v.name], failure)
    except BaseException:  # Ctrl-C included: stop the training that is still going, keep its checkpoints
        cancel(pending.values())
        raise


def _report_artifact(cfg: Config, report_file: Path) -> None:
    """The comparison report as a Prefect markdown artifact, beside the flow run."""
    from prefect.artifacts import create_markdown_artifact

    key = "".join(c if c.isalnum() else "-" for c in f"logdiff-report-{cfg.name}".lower())
    create_markdown_artifact(markdown=report_file.read_text(), key=key,
                             description=f"LogDiff comparison report of experiment {cfg.name}")


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def check_before_running(preset: str, overrides: list[str]) -> Config:
    """The config, validated, and what can be known about its data source without ingesting it: mistakes in
    either are one-line errors before any server starts or any stage runs."""
    from tasks.ingest import check_source

    cfg = config.load(preset, overrides)
    check_source(cfg.data, cfg.diffusion.transforms, cfg.diffusion.log_floor)
    check_cluster(cfg)
    return cfg


def warn_if_over_budget(cfg: Config) -> None:
    """Say at start-up, in one line, when a fresh run will not fit the preset's budget on this machine."""
    from tasks.runtime import budget_warning

    if line := budget_warning(cfg.budget, cfg.train.device, cfg.train.bf16):
        print(f"logdiff: {line}", file=sys.stderr, flush=True)


def run_pipeline(preset: str, overrides: list[str], project_dir: str = ".", force: bool = False,
                 ray_dashboard: bool = False, started: float | None = None) -> dict:
    """Run the flow; its summary (also when a model failed, which the summary says). ``started``: when the
    command started (epoch seconds; default: now), so that the report's timings hold the start-up."""
    started = started or time.time()
    check_before_running(preset, overrides)
    with project_lock(Path(project_dir)):  # and so is a busy project; the flow re-enters the lock
        state = pipeline(preset, list(overrides), str(project_dir), force, ray_dashboard, started,
                         return_state=True)
    if state.is_failed() and isinstance(data := state.result(raise_on_failure=False), dict):
        return data
    return state.result()


def print_summary(summary: dict) -> None:
    """The end-of-run table: each model's score beside the baselines, with intervals, and the verdict."""
    ran = ", ".join(summary["stages_run"]) or "nothing (everything up to date)"
    print(f"\nstages run: {ran}")
    report = read_json(Path(summary["report"]).with_suffix(".json")) if summary.get("report") else {}
    scored = [info for info in summary["models"].values() if "error" not in info]
    if scored and report:
        metric = scored[0]["metric"]
        confidence = next(iter(report["baselines"].values()))["confidence"]
        print(f"{metric}, lower is better; [{confidence:.0%} intervals]; 'x ceiling' is the distance above the "
              "real-vs-real floor in multiples of the autoencoder ceiling's")
        for transform, baselines in report["baselines"].items():
            for name in BASELINES:
                if baselines.get(name):
                    print(f"  {name + ' (' + transform + ')':<26}{_interval(baselines[name], metric)}")
    print(f"{'model':<22}{'seed':>4}  {'score [interval]':<26}{'vs trivial':<12}{'x ceiling [interval]':<22}"
          f"{'version':>7}  champion")
    for name, info in summary["models"].items():
        if "error" in info:
            print(f"{name:<26}  {info['error']}")
            continue
        versus = {True: "better", False: "NOT better", None: "n/a"}[info["beats_trivial"]]
        marker = "yes" if info["champion"] else f"no (v{info['champion_version']} is)"
        interval = _interval({"v": info["score"], "v_low": info["low"], "v_high": info["high"]}, "v")
        print(f"{info['label']:<22}{info['seed']:>4}  {interval:<26}{versus:<12}{format_ceiling_ratio(info):<22}"
              f"{info['version']:>7}  {marker}")
    for line in report.get("verdict", []):
        print(line.replace("**", ""))
    if summary.get("best"):
        print(f"best model across distributions: {summary['best']}")
    if summary.get("report"):
        print(f"comparison report: {summary['report']}")


def _interval(scores: dict, metric: str) -> str:
    if scores.get(f"{metric}_low") is None:
        return f"{scores[metric]:.4g}"
    return f"{scores[metric]:.4g} [{scores[f'{metric}_low']:.3g}, {scores[f'{metric}_high']:.3g}]"
