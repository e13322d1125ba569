"""``logdiff serve``: argument checks before anything starts, and a cron schedule on a local Prefect server that
creates and completes a run of the real ``logdiff-pipeline`` flow."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import cli, schedule

REPO_ROOT = Path(__file__).resolve().parent.parent
CRON = "* * * * *"  # for the argument checks; the end-to-end test fires every 15 s (croniter's optional seconds)
EVERY_15_S = "* * * * * */15"
DEPLOYMENT = "schedule-test"
# The scheduled run does the whole pipeline once on a fresh project, at the smallest settings (~55 s here): cheaper
# in total than a first run in-process that would leave the scheduled run nothing to do.
TINY = ["data.limit=200", "autoencoder.steps=10", "autoencoder.base_channels=8", "autoencoder.batch_size=32",
        "network.base_channels=8", "network.num_heads=2", "train.steps=10", "train.batch_size=32",
        "train.log_every=5", "train.eval_every=0", "sample.steps=5", "eval.num_samples=32", "eval.fid=false",
        "sample.restart_steps=2", "eval.bootstrap=10", "classifier.steps=30", "classifier.base_channels=8",
        "diffusion.distributions={gaussian: {}}"]
STARTUP_TIMEOUT_S = 150  # imports (~13 s), server start on a fresh database (13-26 s), deployment creation
RUN_TIMEOUT_S = 240  # up to 15 s until the cron fires, then the pipeline run itself
SHUTDOWN_TIMEOUT_S = 60


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if serve gets as far as starting a server."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    def start_local_server(port: int, home: Path):
        raise AssertionError("a server was started")

    monkeypatch.setattr(schedule, "start_local_server", start_local_server)


def _serve_cli(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    code = cli.main(["serve", "demo", *args, "--project-dir", str(tmp_path)])
    return code, capsys.readouterr().err


def test_bad_cron_is_a_one_line_error(no_server, capsys, tmp_path):
    code, err = _serve_cli(capsys, tmp_path, "--cron", "61 * * * *")
    assert code == 2
    assert err.count("\n") == 1 and "invalid cron expression '61 * * * *'" in err
    with pytest.raises(ValueError, match="invalid cron expression 'every day'"):
        schedule.check_cron("every day")


def test_bad_config_key_fails_before_any_server_starts(no_server, capsys, tmp_path):
    code, err = _serve_cli(capsys, tmp_path, "train.stepz=10", "--cron", CRON)
    assert code == 2
    assert err.count("\n") == 1 and "stepz" in err
    assert not (tmp_path / ".prefect").exists()


def test_unreachable_api_url_is_a_one_line_error(monkeypatch, tmp_path):
    api_url = f"http://127.0.0.1:{_free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    with pytest.raises(schedule.ServerStartError, match=f"no Prefect server answers at PREFECT_API_URL={api_url}"):
        schedule.serve("demo", [], cron=CRON, name=None, project_dir=str(tmp_path))


def test_busy_port_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(schedule.ServerStartError, match=f"port {port} is in use") as err:
            schedule.start_local_server(port, tmp_path / "prefect")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cron_schedule_creates_and_completes_a_pipeline_run(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    project = tmp_path / "project"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serving = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "demo", *TINY, "--cron", EVERY_15_S, "--name", DEPLOYMENT,
             "--project-dir", str(project), "--port", str(port)],
            cwd=REPO_ROOT, env=_hermetic_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        _poll(lambda: schedule.server_healthy(api_url) or None, STARTUP_TIMEOUT_S, serving, log_path,
              "the Prefect server")
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            deployment = _poll(lambda: _deployment(client), STARTUP_TIMEOUT_S, serving, log_path,
                               "the deployment to be created")
            runs_filter = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            run = _poll(lambda: _completed(client.read_flow_runs(deployment_filter=runs_filter), log_path),
                        RUN_TIMEOUT_S, serving, log_path, "a scheduled run to complete")
    finally:
        _stop(serving)

    assert [s.schedule.cron for s in deployment.schedules] == [EVERY_15_S]
    assert deployment.parameters == {"preset": "demo", "overrides": TINY, "project_dir": str(project.resolve())}
    assert run.auto_scheduled and run.expected_start_time.second % 15 == 0  # made by the cron, not by hand
    assert (project / "dvc.lock").exists() and (project / "mlflow.db").exists()
    assert serving.returncode == 0, _tail(log_path)
    assert not schedule.server_healthy(api_url), "the Prefect server outlived serve"


def _deployment(client):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(f"logdiff-pipeline/{DEPLOYMENT}")
    except ObjectNotFound:
        return None


def _completed(runs, log_path: Path):
    for run in runs:
        if run.state.is_completed():
            return run
        if run.state.is_final():
            pytest.fail(f"flow run {run.name} ended {run.state.name}: {run.state.message}\n{_tail(log_path)}")
    return None


def _poll(probe, timeout_s: float, serving: subprocess.Popen, log_path: Path, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serving.poll() is not None:
            pytest.fail(f"serve exited with code {serving.returncode} waiting for {what}:\n{_tail(log_path)}")
        if (found := probe()) is not None:
            return found
        time.sleep(2)
    pytest.fail(f"no {what} within {timeout_s} s:\n{_tail(log_path)}")


def _stop(serving: subprocess.Popen) -> None:
    """SIGTERM, as a service manager would; serve then stops its runs and its server."""
    if serving.poll() is None:
        serving.send_signal(signal.SIGTERM)
        try:
            serving.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            serving.kill()  # the server child gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
            serving.wait()


def _hermetic_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0", "DVC_NO_ANALYTICS": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
