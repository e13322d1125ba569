"""Failing early and honestly: one-line errors with the trace in a log file, data problems caught before any stage
runs, no retries of mistakes, interrupted and killed runs recorded as what they are, resumes that keep one run."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import tracking
from flows.cli import COMMANDS, main
from tasks import config
from tasks.config import ConfigError


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.use_store(tmp_path)
    return tmp_path


def test_a_failure_is_one_line_naming_the_log_that_holds_the_trace(tmp_path, monkeypatch, capsys):
    from flows.runlog import run_log

    def failing(args):
        with run_log(tmp_path, "run") as args.log_path:
            raise RuntimeError("the autoencoder diverged\nat step 12")

    monkeypatch.setitem(COMMANDS, "config", failing)
    assert main(["config", "demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unexpected error: RuntimeError: the autoencoder diverged at step 12" in err
    log = Path(err.split("full trace: ")[1].rstrip(")"))
    assert log.parent == tmp_path / ".logdiff" / "logs" and "Traceback" in log.read_text()
    assert "in failing" in log.read_text()  # the whole trace, where the console has one line


def test_a_users_mistake_exits_2_and_an_interrupt_130(monkeypatch, capsys):
    assert main(["config", "demo", "train.steps=0"]) == 2
    assert capsys.readouterr().err.startswith("logdiff config: error: train.steps: 0 is out of range")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "config", interrupted)
    assert main(["config", "demo"]) == 130
    assert "interrupted; training checkpoints are kept" in capsys.readouterr().err


def test_data_problems_known_from_the_source_fail_before_any_stage(tmp_path):
    from tasks.ingest import check_source

    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    cases = {f"data.path={tmp_path / 'missing.zip'}": (FileNotFoundError, "not found"),
             f"data.path={empty}": (ValueError, "no images found")}
    for override, (error, message) in cases.items():
        cfg = config.load("demo", ["data.source=folder", override])
        with pytest.raises(error, match=message) as err:
            check_source(cfg.data, cfg.diffusion.transforms, cfg.diffusion.log_floor)
        assert "\n" not in str(err.value)
    cfg = config.load("wine", ["data.source=breast_cancer"])  # has zeros: the log transform cannot take them
    with pytest.raises(ValueError, match=r"log transform needs values > 0.*diffusion.transforms=\[identity\]"):
        check_source(cfg.data, cfg.diffusion.transforms, cfg.diffusion.log_floor)


def test_the_pipeline_checks_the_source_before_touching_the_project(tmp_path):
    from flows.pipeline import run_pipeline

    with pytest.raises(FileNotFoundError, match="not found"):
        run_pipeline("demo", ["data.source=folder", f"data.path={tmp_path / 'nowhere'}"], project_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no DVC repo, no experiment folder, no store


def test_mistakes_are_not_retried_and_transient_failures_are():
    from prefect.states import Failed

    from flows.pipeline import RETRIED, _retry_unless_user_error

    assert RETRIED["retries"] == 1
    for error, retried in ((ValueError("bad data"), False), (ConfigError("train.lr"), False),
                           (FileNotFoundError("no data"), False), (RuntimeError("database is locked"), True)):
        assert _retry_unless_user_error(None, None, Failed(data=error)) is retried


def test_an_interrupted_run_is_killed_and_a_failed_one_failed(store):
    experiment = tracking.setup("demo", store)
    with pytest.raises(KeyboardInterrupt), tracking._run(experiment, "train", {}) as interrupted:
        raise KeyboardInterrupt
    with tracking._run(experiment, "train", {}) as failed:
        tracking.mark_failed(failed, "training failed: FloatingPointError: loss became nan")
    client = MlflowClient()
    assert client.get_run(interrupted).info.status == "KILLED"
    assert client.get_run(failed).info.status == "FAILED"
    assert client.get_run(failed).data.tags["logdiff.error"].startswith("training failed")


def test_runs_of_a_process_killed_outright_are_marked_killed(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    experiment = tracking.setup("demo", store)
    client = MlflowClient()
    orphan = client.create_run(experiment, tags={tracking.PID_TAG: str(dead.pid),
                                                 tracking.HOST_TAG: os.uname().nodename}).info.run_id
    alive = client.create_run(experiment, tags={tracking.PID_TAG: str(os.getpid()),
                                                tracking.HOST_TAG: os.uname().nodename}).info.run_id
    assert tracking.close_orphans("demo") == [orphan]
    assert client.get_run(orphan).info.status == "KILLED" and client.get_run(alive).info.status == "RUNNING"


def test_a_resumed_model_logs_into_its_unfinished_run(store):
    from flows.pipeline import _resume_file, variant_runs

    cfg = config.load("demo", ["diffusion.distributions={gaussian: {}}"])
    cfg = cfg.__class__(**{**cfg.__dict__, "workdir": str(store / "experiment")})
    experiment = tracking.setup("demo", store)
    parent = MlflowClient().create_run(experiment).info.run_id
    with pytest.raises(KeyboardInterrupt), variant_runs(parent, cfg, cfg.variants(), {}) as first:
        tracking.MetricLogger(tracking.tracking_uri(store), first["gaussian-identity-0"])(50, {"loss": 1.0})
        raise KeyboardInterrupt
    assert json.loads(_resume_file(cfg, cfg.variants()[0]).read_text())["run_id"] == first["gaussian-identity-0"]
    new_parent = MlflowClient().create_run(experiment).info.run_id
    with variant_runs(new_parent, cfg, cfg.variants(), {}) as second:
        tracking.MetricLogger(tracking.tracking_uri(store), second["gaussian-identity-0"])(100, {"loss": 0.5})
    run_id = second["gaussian-identity-0"]
    assert run_id == first["gaussian-identity-0"] and not _resume_file(cfg, cfg.variants()[0]).exists()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == new_parent
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "loss")] == [50, 100]  # one whole curve


def test_sampling_from_the_registry_outside_a_project_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["sample", "--model", "models:/ngldm-digits-gaussian@champion", "--project-dir", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
