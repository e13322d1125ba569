"""A real two-node Ray cluster on one machine, with an S3 server and an MLflow tracking server, all on 127.0.0.1:
what ``make test-cluster`` and ``bench/cluster_demo.py`` run the pipeline on (docs/cluster.md).

- S3: moto's server mode (``moto_server``), one bucket: outputs, checkpoints, MLflow artifacts, the DVC remote.
- MLflow: ``logdiff tracking-server`` with its artifacts in that bucket.
- Ray: a head and a second node (custom resource ``node2``) joined with the head's token (``RAY_AUTH_MODE=token``),
  each with its own ``--temp-dir`` and every port pinned in 18000-18999. As root the second node runs in its own
  mount namespace with ``hidden`` folders (the repository, the projects) under empty tmpfs mounts and the
  virtualenv bound back in, so it cannot read the driver's disk; not root, from an empty working directory.

Everything is started in a process group of its own and stopped by that group's id (never ``ray stop``, which
would end every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV = Path(sys.prefix)
S3_PORT, MLFLOW_PORT, RAY_PORT = 18010, 18020, 18100
S3 = f"http://127.0.0.1:{S3_PORT}"
BUCKET = "logdiff"
HEAD_TMP, NODE2_TMP = "/tmp/r24h", "/tmp/r24w"  # Ray temp dirs of our own: no one else's ray.init finds them
HEAD_PORTS = ["--port", str(RAY_PORT), "--node-manager-port=18101", "--object-manager-port=18102",
              "--ray-client-server-port=18103", "--dashboard-agent-listen-port=18104",
              "--dashboard-agent-grpc-port=18105", "--runtime-env-agent-port=18106", "--metrics-export-port=18107",
              "--min-worker-port=18200", "--max-worker-port=18299"]
NODE2_PORTS = ["--node-manager-port=18111", "--object-manager-port=18112", "--dashboard-agent-listen-port=18114",
               "--dashboard-agent-grpc-port=18115", "--runtime-env-agent-port=18116", "--metrics-export-port=18117",
               "--min-worker-port=18300", "--max-worker-port=18399"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_until(check, what: str, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def raylet_pids(temp_dir: str) -> list[int]:
    """The raylets started with ``temp_dir``: the process to kill to lose that node."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[0].endswith(b"/raylet") and any(temp_dir.encode() in arg for arg in cmdline):
                found.append(int(entry.name))
    return found


class LocalCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` is what a driver (``logdiff run``) needs."""

    def __init__(self, base: Path, hidden: list[Path]) -> None:
        self.base, self.hidden, self.logs = Path(base), [Path(p) for p in hidden], Path(base) / "logs"
        self.started: list[subprocess.Popen] = []
        self.isolation = ""
        self.env = {**os.environ, **CREDENTIALS, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    "DVC_NO_ANALYTICS": "1", "PREFECT_HOME": str(self.base / "prefect"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                    "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}", "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}",
                    "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}"}
        self.env.pop("PREFECT_API_URL", None)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=S3, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def objects(self, prefix: str = "") -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def _start(self, name: str, argv: list[str], cwd: Path | str | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(argv, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        busy = [port for port in (S3_PORT, MLFLOW_PORT, RAY_PORT, 18101, 18111) if _listening(port)]
        if busy:
            raise RuntimeError(f"ports {busy} are in use: another cluster test or bench running? (18000-18999)")
        self._start("s3", [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)])
        wait_until(lambda: answers(S3), "the S3 server answers")
        self.s3().create_bucket(Bucket=BUCKET)
        server = self.base / "tracking-server"
        server.mkdir(exist_ok=True)
        self._start("mlflow", [str(VENV / "bin" / "logdiff"), "tracking-server", "--project-dir", str(server),
                               "--port", str(MLFLOW_PORT), "--artifacts", f"s3://{BUCKET}/mlartifacts",
                               "--endpoint", S3])
        for folder in (HEAD_TMP, NODE2_TMP):
            shutil.rmtree(folder, ignore_errors=True)
        ray = str(VENV / "bin" / "ray")
        self._start("ray-head", [ray, "start", "--head", f"--temp-dir={HEAD_TMP}", "--num-cpus=1",
                                 "--include-dashboard=false", "--disable-usage-stats", *HEAD_PORTS, "--block"])
        wait_until(lambda: list(Path(HEAD_TMP).glob("session_*/logs/raylet.out")), "the Ray head starts")
        node2 = [ray, "start", f"--address=127.0.0.1:{RAY_PORT}", f"--temp-dir={NODE2_TMP}", "--num-cpus=1",
                 "--resources", json.dumps({"node2": 1}), "--disable-usage-stats", *NODE2_PORTS, "--block"]
        if os.geteuid() == 0 and shutil.which("unshare"):
            self.isolation = (f"own mount namespace: {', '.join(map(str, self.hidden))} are empty tmpfs mounts on "
                              "the second node (its virtualenv bound back in)")
            spot = Path(f"{NODE2_TMP}-venv")  # where the venv waits while the folder holding it is hidden
            spot.mkdir(exist_ok=True)
            hide = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in self.hidden)
            script = (f"mount --bind {VENV} {spot} && {hide} && mkdir -p {VENV} && mount --bind {spot} {VENV} && "
                      'exec "$@"')
            self._start("ray-node2", ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *node2],
                        cwd="/")
        else:
            self.isolation = "separate working directory only (not root: no mount namespace)"
            (self.base / "node2-cwd").mkdir(exist_ok=True)
            self._start("ray-node2", node2, cwd=self.base / "node2-cwd")
        wait_until(lambda: answers(f"http://127.0.0.1:{MLFLOW_PORT}/health"), "the tracking server answers")
        wait_until(lambda: self.nodes_alive() == 2, "two Ray nodes are alive", every=2)

    def nodes_alive(self) -> int:
        code = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
        result = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
        return int((result.stdout.strip().splitlines() or ["0"])[-1])

    def stop(self) -> None:
        """SIGTERM to each process group started here, SIGKILL to those still there 30 s later."""
        for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            for proc in self.started:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for proc in self.started:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if all(proc.poll() is not None for proc in self.started):
                break
        self.started.clear()
        for folder in (HEAD_TMP, NODE2_TMP, f"{NODE2_TMP}-venv"):
            shutil.rmtree(folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
