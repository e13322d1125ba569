"""``logdiff serve``: the pipeline flow as a cron-scheduled Prefect deployment.

Cron schedules never fire on Prefect's ephemeral API, so serving needs a real server: the one at
``PREFECT_API_URL`` if set, else ``prefect server start`` on 127.0.0.1 as a child process that lives exactly as
long as the serving does (serving stops first, so the runner can still pause its schedule on the server).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


HEALTH_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


class ServerStartError(RuntimeError):
    """The local Prefect server did not come up; the message names the cause."""


def check_cron(cron: str) -> None:
    """Raise a one-line ValueError unless Prefect accepts ``cron`` as a schedule."""
    import pydantic
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except pydantic.ValidationError:
        raise ValueError(f"invalid cron expression {cron!r}: expected 5 fields "
                         "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'") from None


def start_local_server(port: int, home: Path) -> tuple[subprocess.Popen, str]:
    """Start ``prefect server start`` on 127.0.0.1:``port`` with ``PREFECT_HOME=home``; wait until it is healthy."""
    with socket.socket() as probe:  # another server on the port would answer our health checks
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServerStartError(f"port {port} is in use: pass another --port, or set PREFECT_API_URL "
                                   "to use the server that is running there") from None
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # own process group: a terminal's Ctrl-C reaches only us, and we stop the server after serving
            start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_until_healthy(process, api_url, log_path)
    except BaseException:  # Ctrl-C while waiting included
        stop_server(process)
        raise
    return process, api_url


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the server, then SIGKILL it if it has not exited within STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_healthy(api_url: str) -> bool:
    """Whether the Prefect API at ``api_url`` (``http://host:port/api``) answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serve(preset: str, overrides: list[str], *, cron: str, name: str | None, project_dir: str,
          port: int = 4200) -> None:
    """Serve the pipeline for ``preset`` + ``overrides`` as deployment ``name`` (default ``logdiff-<preset>``)
    on schedule ``cron`` until Ctrl-C or SIGTERM."""
    from flows.pipeline import check_before_running

    check_before_running(preset, overrides)  # config, data and cron mistakes: one-line errors before anything starts
    check_cron(cron)
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline

    project = Path(project_dir).resolve()
    server = None
    with _exit_on_sigterm():
        try:
            api_url = os.environ.get("PREFECT_API_URL")
            if not api_url:
                home = Path(os.environ.get("PREFECT_HOME") or project / ".prefect")
                print(f"starting a Prefect server on 127.0.0.1:{port} (PREFECT_HOME={home}) ...", flush=True)
                server, api_url = start_local_server(port, home)
                os.environ["PREFECT_API_URL"] = api_url  # for any process started from here
            elif not server_healthy(api_url):
                raise ServerStartError(f"no Prefect server answers at PREFECT_API_URL={api_url}; "
                                       "unset it to start one")
            print(f"Prefect UI: {api_url.removesuffix('/api')}\n"
                  f"deployments: PREFECT_API_URL={api_url} prefect deployment ls", flush=True)
            # Prefect read its settings when imported, possibly before PREFECT_API_URL was set
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                pipeline.serve(name=name or f"logdiff-{preset}", cron=cron,
                               parameters={"preset": preset, "overrides": list(overrides),
                                           "project_dir": str(project)},
                               # by module, not file: `flows` stays a package in the flow-run process
                               entrypoint_type=EntrypointType.MODULE_PATH,
                               limit=1)  # runs share the project's DVC lock and artifacts: one at a time
        finally:
            _stop_flow_runs()  # while the server is up, so the runs are recorded as crashed, not left running
            if server is not None:
                stop_server(server)


@contextmanager
def prefect_api() -> Iterator[str]:
    """A Prefect API for a run of the flow from this process: ``PREFECT_API_URL`` if set, else a server of our own
    on a free loopback port, in its own session: a Ctrl-C in the terminal then stops the run, not the server, so
    Prefect can still record how the run ended (its ephemeral server would die first)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    from prefect.logging.handlers import APILogWorker

    server, api_url = start_local_server(_free_port(), home)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield api_url
            finally:  # the run's last log lines, while the server is there to take them (also after Ctrl-C)
                APILogWorker.drain_all(timeout=5)
    finally:
        stop_server(server)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Make SIGTERM unwind through ``finally`` blocks until Prefect's runner installs its own handler."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_until_healthy(process: subprocess.Popen, api_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not server_healthy(api_url):
        if process.poll() is not None:
            why = f"exited with code {process.returncode}"
        elif time.monotonic() > deadline:
            why = f"was not healthy after {HEALTH_TIMEOUT_S:.0f} s"
        else:
            time.sleep(0.5)
            continue
        raise ServerStartError(f"Prefect server at {api_url} {why}: {_last_line(log_path)} (log: {log_path})")


def _stop_flow_runs() -> None:
    """Terminate flow runs still in flight: Prefect's runner leaves its flow-run processes running on shutdown."""
    runs = multiprocessing.active_children()  # the runner starts each flow run as a spawned child process
    for run in runs:
        run.terminate()
    for run in runs:
        run.join(STOP_TIMEOUT_S)
        if run.is_alive():
            run.kill()
            run.join()


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


def _die_with_parent() -> None:
    """In the server child, before exec: get SIGTERM when the serving process dies, even by SIGKILL."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
