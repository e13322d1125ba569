"""The pipeline beyond one machine (docs/cluster.md): checks before a run, the tracking server, the DVC remote.

- ``check_cluster``: before any stage runs, one-line errors for what would fail later on a cluster: a store or
  tracking server that does not answer, several Ray nodes with a tracking store or outputs only one node can reach,
  a placement naming no model or no node.
- ``tracking_server_command``: ``mlflow server`` for ``logdiff tracking-server``: runs and the registry in a
  SQLite file of the project (only the server touches it), artifacts in the object store.
- ``use_remote`` / ``pull`` / ``push``: the DVC remote of the repository holding a pipeline folder, so a second
  machine or a fresh clone gets the outputs without running the stages again (``pull_outputs`` before a run and
  ``push_outputs`` after it, when ``cluster.dvc_remote`` is set).
"""
from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.project import dvc
from tasks.config import Config, ConfigError
from tasks.storage import store_for

REMOTE = "logdiff"  # the DVC remote's name in .dvc/config


class ClusterError(RuntimeError):
    """The cluster cannot run this as set up; the message says what to start or set."""


def _remote_tracking(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_cluster(cfg: Config) -> None:
    """One-line errors, before anything runs, for cluster settings that cannot work (see the module's doc)."""
    known = {v.name for v in cfg.variants()} | set(cfg.diffusion.distributions)
    if unknown := sorted(set(cfg.cluster.placement) - known):
        raise ConfigError(f"cluster.placement: {unknown[0]!r} is neither a model nor a distribution of this "
                          f"experiment; models: {', '.join(v.name for v in cfg.variants())}")
    if cfg.cluster.placement and cfg.train.num_workers > 1:
        raise ConfigError("cluster.placement places single-worker trainings; with train.num_workers > 1 Ray Train "
                          "places the workers: leave cluster.placement empty")
    if (store := store_for(cfg)) is not None:
        store.check()
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if _remote_tracking(uri):
        check_tracking_server(uri)
    if not os.environ.get("RAY_ADDRESS"):
        return  # a local Ray: one node, one disk
    from flows.distributed import alive_nodes, find_node, init_ray

    init_ray()
    nodes = alive_nodes()
    if len(nodes) > 1 and not _remote_tracking(uri):
        raise ClusterError(f"the Ray cluster at {os.environ['RAY_ADDRESS']} has {len(nodes)} nodes, but MLflow tracks "
                           f"to {uri or 'the project SQLite file'}, which workers on other nodes cannot reach: start a "
                           "tracking server (logdiff tracking-server) and set MLFLOW_TRACKING_URI=http://HOST:PORT")
    if len(nodes) > 1 and store is None:
        raise ClusterError(f"the Ray cluster at {os.environ['RAY_ADDRESS']} has {len(nodes)} nodes, but outputs live "
                           "only on this machine's disk: set cluster.storage=s3://bucket/prefix (and "
                           "cluster.endpoint for MinIO, Ceph or another S3-compatible server)")
    for wanted in cfg.cluster.placement.values():
        find_node(wanted)


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (OSError, urllib.error.URLError) as err:
        reason = getattr(err, "reason", err)
        raise ClusterError(f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ({reason}); "
                           "start it (logdiff tracking-server) or fix MLFLOW_TRACKING_URI") from None


def tracking_server_command(project: Path, host: str, port: int, artifacts: str | None,
                            endpoint: str = "") -> tuple[list[str], dict]:
    """(argv, environment) of ``mlflow server`` for the project: runs and registry in ``<project>/mlflow.db``,
    artifacts proxied to ``artifacts`` (an ``s3://`` URI for a cluster; default ``<project>/mlartifacts``)."""
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
            "--artifacts-destination", artifacts or str(project / "mlartifacts"), "--host", host, "--port",
            str(port), "--workers", "1"]
    if host not in ("127.0.0.1", "localhost"):  # workers on other machines name the server by this host
        argv += ["--allowed-hosts", f"{host},{host}:{port},localhost,127.0.0.1,localhost:{port},127.0.0.1:{port}"]
    env = {**os.environ, **({"MLFLOW_S3_ENDPOINT_URL": endpoint} if endpoint else {})}
    return argv, env


# --- the DVC remote: functions of a pipeline folder, wherever it lies in the repository


def use_remote(folder: Path, url: str, endpoint: str = "") -> None:
    """``url`` as the default DVC remote of the repository holding ``folder`` (in .dvc/config, which git keeps,
    so a clone knows it; credentials stay in the environment)."""
    dvc(folder, ["remote", "add", "--default", "--force", REMOTE, url])
    if endpoint:
        dvc(folder, ["remote", "modify", REMOTE, "endpointurl", endpoint])


def pull(folder: Path) -> None:
    """The outputs of ``folder``'s pipeline that the remote holds and the folder lacks."""
    began = time.perf_counter()
    dvc(folder, ["pull", "--allow-missing", "dvc.yaml"])
    print(f"dvc: pulled {folder.name}'s outputs from the remote in {time.perf_counter() - began:.1f} s", flush=True)


def push(folder: Path) -> None:
    """The outputs recorded in ``folder``'s dvc.lock that the remote lacks."""
    began = time.perf_counter()
    dvc(folder, ["push", "dvc.yaml"])
    print(f"dvc: pushed {folder.name}'s outputs to the remote in {time.perf_counter() - began:.1f} s", flush=True)


def pull_outputs(cfg: Config, pipeline: Path) -> None:
    """With ``cluster.dvc_remote``: the remote set on the experiment's ``pipeline`` folder, its outputs pulled."""
    if cfg.cluster.dvc_remote:
        use_remote(pipeline, cfg.cluster.dvc_remote, cfg.cluster.endpoint)
        pull(pipeline)


def push_outputs(cfg: Config, pipeline: Path) -> None:
    if cfg.cluster.dvc_remote:
        push(pipeline)


def publish_inputs(cfg: Config, stage: str, items: list) -> None:
    """Make sure the store holds what ``stage`` reads for ``items`` as this machine has it (made before the store
    was set, or pulled from the DVC remote); a unit already there as it is here is not sent again."""
    from flows.stages import STAGES

    if (store := store_for(cfg)) is None:
        return
    units = {unit: paths for item in items for unit, paths in STAGES[stage].input_outputs(cfg, item)}
    for unit, paths in units.items():
        store.publish(unit, [p for p in paths if Path(p).exists()])
