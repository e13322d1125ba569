"""MLflow wiring: the project's tracking store, pipeline/stage runs, per-step metrics, and the model registry.

Store: ``sqlite:///<project_dir>/mlflow.db`` with artifacts in ``<project_dir>/mlartifacts`` unless
``MLFLOW_TRACKING_URI`` is set. Runs are made through ``MlflowClient`` with explicit run ids (no fluent "active run"),
so stages can log from threads, Ray workers or other processes given only the tracking URI and a run id.

Registry: one registered model ``ngldm-<dataset>-<label>`` per model, the label being the noise distribution,
suffixed with the transform unless it is identity (``ngldm-wine-laplace-log``). Each version is a pyfunc
``NGLDMSampler`` over the train stage's model file, loaded through this module's ``_load_pyfunc`` (MLflow's
``loader_module`` hook), so no registered model is ever unpickled; the alias ``champion`` moves only to a better
(lower) score.
"""
from __future__ import annotations

import json
import logging
import numbers
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

# Before mlflow is imported: no progress bars in stage logs, no telemetry calls from an offline machine.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # with a server: two lines per ended run

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import Model, ModelSignature  # noqa: E402
from mlflow.types import ColSpec, Schema, TensorSpec  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID  # noqa: E402
from mlflow.utils.time import get_current_time_millis  # noqa: E402

from tasks.config import Config, Variant, flatten  # noqa: E402
from tasks.io import read_safetensors_settings, sha256_file  # noqa: E402
from tasks.sample import TrainedModel, load_trained  # noqa: E402

log = logging.getLogger(__name__)

CHAMPION = "champion"  # per registered model (one per distribution x transform): its best version
BEST = "best"  # across the registered models of one dataset: the best champion
MODEL_NAME = "model"  # the logged model's name inside its run
# Explicit requirements: inferring them loads the model in a subprocess (~8 s) and lists unrelated packages.
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "logdiff"]
INPUT_SCHEMA = Schema([ColSpec("long", "n"), ColSpec("long", "seed", required=False),
                       ColSpec("string", "sampler", required=False), ColSpec("long", "steps", required=False),
                       ColSpec("string", "time_schedule", required=False), ColSpec("long", "restarts", required=False)])
# Shown in the UI as the input format; MLflow also checks at log time that the logged model loads and predicts it.
INPUT_EXAMPLE = pd.DataFrame({"n": [1], "steps": [1]})


def tracking_uri(project_dir: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def artifact_root(project_dir: str | Path) -> str:
    return str(Path(project_dir).resolve() / "mlartifacts")


def configured(project_dir: str | Path) -> bool:
    """Whether the project has a tracking store to log to: ``MLFLOW_TRACKING_URI``, or its ``mlflow.db``."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or (Path(project_dir) / "mlflow.db").is_file()


@contextmanager
def standalone_stage_run(cfg: Config, project_dir: str | Path, name: str, params: dict,
                         started_by: str = "logdiff stage (dvc)") -> Iterator[str | None]:
    """A run for a stage started outside the flow (``dvc repro``, ``dvc exp run``; or ``logdiff frontier``), when
    the project tracks: in the experiment's MLflow experiment, tagged with what started it. Yields its id, or None
    without a store."""
    if not configured(project_dir):
        yield None
        return
    experiment_id = setup(cfg.name, project_dir)
    with _run(experiment_id, name, {"logdiff.started_by": started_by}) as run_id:
        _log_params(MlflowClient(), run_id, params)
        yield run_id


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def use_store(project_dir: str | Path) -> str:
    """Make the project's store MLflow's current tracking and registry store; return its URI."""
    uri = tracking_uri(project_dir)
    override = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if override is None:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI, which would then read as a user override and pin
        # every later project in this process to this store.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return uri


def setup(experiment_name: str, project_dir: str | Path) -> str:
    """Point MLflow at the project's store and return the id of experiment ``experiment_name`` (made if missing)."""
    uri = use_store(project_dir)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        # A server picks its own artifact store; a local store keeps artifacts beside the project.
        return client.create_experiment(experiment_name,
                                        artifact_location=None if _is_remote(uri) else artifact_root(project_dir))
    if experiment.lifecycle_stage == "deleted":  # deleted in the UI: runs cannot be created in it until restored
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def git_commit(project_dir: str | Path) -> str:
    try:
        result = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, or no commit yet
        return "unknown"
    return result.stdout.strip()


def _metrics(values: dict, step: int) -> list[Metric]:
    """The real-valued entries of ``values`` (nested dicts flattened) as MLflow metrics at ``step``."""
    timestamp = get_current_time_millis()
    return [Metric(key, float(value), timestamp, step) for key, value in flatten(values).items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)]


class MetricLogger:
    """Per-step metric callback ``logger(step, {"loss": ..., "lr": ...})`` usable from any process.

    Only the tracking URI and run id are pickled; each process opens its own client on first use.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, step: int, metrics: dict) -> None:
        self._open().log_batch(self.run_id, metrics=_metrics(metrics, step))

    def set_tag(self, key: str, value: str) -> None:
        self._open().set_tag(self.run_id, key, value)

    def _open(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client


def _log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in flatten(params).items()])


# Tags that say which process a run belongs to, so a later run can tell a live run from one whose process died.
PID_TAG, HOST_TAG = "logdiff.pid", "logdiff.host"


class RunFailed(Exception):
    """Raised inside a run's block to end the run FAILED without an exception escaping to the caller."""


@contextmanager
def _run(experiment_id: str, name: str, tags: dict, run_id: str | None = None) -> Iterator[str]:
    """A run that ends FINISHED; FAILED if the block raises (the exception propagates, except ``RunFailed``);
    KILLED on Ctrl-C. ``run_id`` reopens an unfinished run instead of creating one (a resumed training)."""
    client = MlflowClient()
    tags = {**{k: str(v) for k, v in tags.items()}, PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    status = RunStatus.FAILED
    try:
        yield run_id
        if ERROR_TAG not in client.get_run(run_id).data.tags:  # see mark_failed
            status = RunStatus.FINISHED
    except RunFailed:
        pass
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        client.set_terminated(run_id, RunStatus.to_string(status))


ERROR_TAG = "logdiff.error"


def mark_failed(run_id: str, error: str) -> None:
    """Record why the work of an open run failed; the run then ends FAILED, not FINISHED."""
    MlflowClient().set_tag(run_id, ERROR_TAG, error[:5000])


def close_orphans(experiment_name: str) -> list[str]:
    """Mark KILLED the runs of ``experiment_name`` still RUNNING whose process on this host is gone (killed
    outright, so nobody ended them); returns their ids."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    host, orphans = socket.gethostname(), []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
        pid = run.data.tags.get(PID_TAG)
        if run.data.tags.get(HOST_TAG) == host and pid and pid.isdigit() and not _alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            orphans.append(run.info.run_id)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def unfinished_run(run_id: str | None) -> str | None:
    """``run_id`` if that run exists and did not finish (a training to resume into), else None."""
    if not run_id:
        return None
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.status != "FINISHED" else None


@contextmanager
def start_parent_run(cfg: Config, project_dir: str | Path, tags: dict) -> Iterator[str]:
    """The pipeline run in experiment ``cfg.name``: the resolved config as params and ``config.yaml``, the
    project's git commit and the caller's lineage ``tags`` (e.g. DVC data hash, Prefect flow-run id)."""
    experiment_id = setup(cfg.name, project_dir)
    with _run(experiment_id, "pipeline", {MLFLOW_GIT_COMMIT: git_commit(project_dir), **tags}) as run_id:
        client = MlflowClient()
        config = cfg.to_dict()
        _log_params(client, run_id, config)
        client.log_dict(run_id, config, "config.yaml")
        yield run_id


@contextmanager
def child_run(parent_run_id: str, name: str, params: dict | None = None, tags: dict | None = None,
              resume_run_id: str | None = None) -> Iterator[str]:
    """A stage or model run nested under ``parent_run_id`` (same experiment); ``resume_run_id`` reopens an
    unfinished run of an earlier pipeline run, moved under this parent, so a resumed model keeps one curve."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, **(tags or {})}
    with _run(experiment_id, name, tags, run_id=resume_run_id) as run_id:
        if resume_run_id is None:
            _log_params(client, run_id, params or {})
        yield run_id


def log_dataset(run_ids: Iterable[str], manifest: dict, context: str = "training") -> None:
    """Record the ingested dataset as the runs' input (MLflow's Dataset column), with its content hash as digest."""
    dataset = Dataset(name=f"{manifest['source']}", digest=manifest["content_hash"][:16], source_type="logdiff",
                      source=json.dumps({"source": manifest["source"], "path": manifest.get("path")}),
                      profile=json.dumps({"counts": manifest["counts"], "shape": manifest["shape"]}))
    for run_id in run_ids:
        MlflowClient().log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])


def log_stage_outputs(run_id: str, record: dict, artifacts: Iterable[str | Path] = ()) -> None:
    """A stage's result and its files. Measurements (floats) become metrics; counts, names and flags (parameter
    counts, sample sizes, the metric a champion is chosen by) become tags, not one-point metric charts."""
    client = MlflowClient()
    flat = flatten(record)
    client.log_batch(run_id, metrics=_metrics({k: v for k, v in flat.items() if isinstance(v, float)}, step=0),
                     tags=[RunTag(k, str(v)) for k, v in flat.items()
                           if isinstance(v, (int, str, bool)) and not isinstance(v, float)])
    for path in artifacts:
        client.log_artifact(run_id, str(path))


class NGLDMSampler:
    """A LogDiff model file as an MLflow pyfunc model.

    Input: a DataFrame, one request per row: ``n`` (samples to draw) and optional ``seed`` (default 0),
    ``sampler``, ``steps``, ``time_schedule`` and ``restarts`` (default: the model's config). Output: the samples
    of all rows in row order, as a DataFrame with float columns ``x0 .. x{F-1}`` for array data, or one column ``image`` holding a
    uint8 [C, H, W] array per sample for image data (``np.stack(df["image"])`` gives the batch back).
    """

    def __init__(self, trained: TrainedModel) -> None:
        self.trained = trained

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return pd.concat([self._frame(self._generate(row)) for row in model_input.to_dict("records")],
                         ignore_index=True)

    def _generate(self, request: dict) -> np.ndarray:
        given = {key: value for key, value in request.items() if value is not None and not pd.isna(value)}
        counts = {key: int(given[key]) for key in ("steps", "restarts") if key in given}
        return self.trained.generate(int(given["n"]), seed=int(given.get("seed", 0)), sampler=given.get("sampler"),
                                     time_schedule=given.get("time_schedule"), progress=False, **counts)

    def _frame(self, samples: np.ndarray) -> pd.DataFrame:
        if self.trained.codec.kind == "image":
            return pd.DataFrame({"image": list(samples)})
        return pd.DataFrame(samples, columns=[f"x{i}" for i in range(samples.shape[1])])


def _load_pyfunc(data_path: str) -> NGLDMSampler:
    """MLflow's ``loader_module`` hook: the logged model file (safetensors, never unpickled) as a sampler."""
    return NGLDMSampler(load_trained(data_path))


def registered_name(dataset: str, variant: Variant) -> str:
    return f"ngldm-{dataset}-{variant.label}"


def _version_with_sha(client: MlflowClient, name: str, sha: str) -> ModelVersion | None:
    """The oldest version of ``name`` registered from a file with this sha256."""
    found = client.search_model_versions(f"name = '{name}' and tags.model_sha256 = '{sha}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _log_and_register(client: MlflowClient, model_path: Path, name: str, run_id: str, tags: dict) -> ModelVersion:
    experiment_id = client.get_run(run_id).info.experiment_id
    # Made here, not by Model.log: without an active fluent run Model.log files the model under the
    # default experiment (and a ./mlruns folder) instead of the run's experiment.
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    # Model.log rather than pyfunc.log_model: only it takes a run_id (artifact_path: deprecated, without default).
    info = Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, loader_module=__name__,
                     data_path=str(model_path),
                     signature=ModelSignature(inputs=INPUT_SCHEMA, outputs=output_schema(model_path)),
                     input_example=INPUT_EXAMPLE, pip_requirements=PIP_REQUIREMENTS, run_id=run_id,
                     model_id=logged.model_id)
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=(
            f"LogDiff latent diffusion model with {tags['distribution']} forward noise (mean 0, variance 1) under "
            f"the {tags['transform']} transform, trained on {tags['dataset']}. Alias '{CHAMPION}': the version with "
            f"the lowest {tags['champion_metric']} (lower is better); '{BEST}' marks the best model across noise "
            f"distributions. Sample: logdiff sample --model models:/{name}@{CHAMPION} -n 64 -o samples.png"))
    return version


def output_schema(model_path: str | Path) -> Schema:
    """What ``predict`` returns for this model: a uint8 [C, H, W] image per row, or one float column per feature."""
    settings = read_safetensors_settings(model_path, "diffusion model")
    codec = settings["codec"]
    if codec["kind"] == "image":
        shape = list(codec["latent_shape"])
        if codec["autoencoder"] is not None:  # latents are the image downsampled, with the latent channels
            factor = codec["autoencoder"]["downsample"]
            shape = [codec["autoencoder"]["in_channels"], shape[1] * factor, shape[2] * factor]
        return Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape), "image")])
    return Schema([ColSpec("double", f"x{i}") for i in range(codec["latent_shape"][0])])


def _promote_if_better(client: MlflowClient, name: str, version: ModelVersion) -> int:
    """Move ``champion`` to ``version`` when its score is lower on the same metric; return the champion version."""
    aliases = client.get_registered_model(name).aliases
    if CHAMPION in aliases:
        current = client.get_model_version(name, aliases[CHAMPION])
        if current.tags.get("champion_metric") != version.tags["champion_metric"]:
            log.warning("%s: champion v%s is scored on %r, v%s on %r; not comparable, champion kept", name,
                        current.version, current.tags.get("champion_metric"), version.version,
                        version.tags["champion_metric"])
            return int(current.version)
        if not float(version.tags["score"]) < float(current.tags["score"]):
            return int(current.version)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return int(version.version)


def _summary(client: MlflowClient, name: str, version: ModelVersion) -> dict:
    champion = client.get_registered_model(name).aliases.get(CHAMPION)
    champion_version = int(champion) if champion is not None else None
    return {"name": name, "version": int(version.version), "champion": champion_version == int(version.version),
            "champion_version": champion_version, "score": float(version.tags["score"]),
            "metric": version.tags["champion_metric"]}


def registered_version(model_path: str | Path, dataset: str, variant: Variant) -> dict | None:
    """What ``register_model`` would return for this file, if it is registered already; None otherwise."""
    model_path = Path(model_path)
    if not model_path.is_file():
        return None
    client = MlflowClient()
    name = registered_name(dataset, variant)
    try:
        version = _version_with_sha(client, name, sha256_file(model_path))
    except MlflowException:  # no such registered model
        return None
    return None if version is None else _summary(client, name, version)


def register_model(model_path: str | Path, *, dataset: str, variant: Variant, run_id: str, score: float,
                   metric: str, tags: dict) -> dict:
    """Register a model file (logged as a pyfunc in run ``run_id``) as a new version of
    ``ngldm-<dataset>-<label>``, tagged with its sha256, score and lineage ``tags``.

    A file already registered (same sha256) returns its existing version, so reruns are idempotent, also when two
    runs register the same file at once (the later version is removed). ``champion`` moves to the version only
    when its score is lower than the champion's. Call ``setup`` first.
    """
    client = MlflowClient()
    model_path = Path(model_path)
    name = registered_name(dataset, variant)
    sha = sha256_file(model_path)
    version = _version_with_sha(client, name, sha)
    if version is None:
        version_tags = {**tags, "model_sha256": sha, "champion_metric": metric, "score": repr(float(score)),
                        "dataset": dataset, "distribution": variant.distribution, "transform": variant.transform,
                        "seed": variant.seed}
        version = _log_and_register(client, model_path, name, run_id, version_tags)
        client.update_model_version(name, version.version, description=(
            f"{variant.distribution} noise, {variant.transform} transform, seed {variant.seed}, on {dataset}; "
            f"{metric} = {score:.4g} (lower is better)"))
        first = _version_with_sha(client, name, sha)  # the oldest version of this file, should another run race us
        if int(first.version) < int(version.version):
            client.delete_model_version(name, version.version)
            version = first
    champion_version = _promote_if_better(client, name, version)
    return {"name": name, "version": int(version.version), "champion": champion_version == int(version.version),
            "champion_version": champion_version, "score": float(version.tags["score"])}


def best_uri(names: list[str]) -> str | None:
    """``models:/<name>@best`` for the one among the registered models ``names`` that holds alias ``best``."""
    client = MlflowClient()
    return next((f"models:/{name}@{BEST}" for name in names if BEST in client.get_registered_model(name).aliases),
                None)


def promote_best(dataset: str, names: list[str]) -> str | None:
    """Point alias ``best`` at the champion with the lowest score among the registered models ``names`` (all on
    one metric), remove it from the others, and return the winner's ``models:/`` URI (None if not comparable)."""
    client = MlflowClient()
    champions = {}
    for name in names:
        aliases = client.get_registered_model(name).aliases
        if CHAMPION in aliases:
            champions[name] = client.get_model_version(name, aliases[CHAMPION])
    if not champions or len({v.tags.get("champion_metric") for v in champions.values()}) != 1:
        return None
    winner = min(champions, key=lambda name: float(champions[name].tags["score"]))
    for name in names:
        if name == winner:
            client.set_registered_model_alias(name, BEST, champions[name].version)
        elif BEST in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, BEST)
    return f"models:/{winner}@{BEST}"


def _check_registry_uri(client: MlflowClient, uri: str) -> None:
    """One-line ValueErrors for a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` naming an unknown model or
    alias; ``models:/m-<id>`` (a logged model, not a registered one) passes."""
    path = uri.removeprefix("models:/")
    name, has_alias, alias = path.partition("@")
    if not has_alias:
        name, has_version, _ = path.partition("/")
        if not has_version:
            return
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        registered = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise ValueError(f"no model {name!r} in the registry at {mlflow.get_registry_uri()}; "
                         f"registered: {registered}") from None
    if has_alias and alias not in aliases:
        known = ", ".join(f"{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
        raise ValueError(f"model {name!r} has no alias {alias!r}; aliases: {known}")


def load_registered(uri: str, project_dir: str | Path | None = None) -> TrainedModel:
    """The TrainedModel behind ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a ``runs:/`` / artifact URI.

    ``project_dir`` picks the project's store (else MLflow's current tracking URI is used).
    """
    if project_dir is not None:
        use_store(project_dir)
    if uri.startswith("models:/"):
        _check_registry_uri(MlflowClient(), uri)
    try:
        # the MLmodel description first: what would load the model, before anything of it is loaded
        description = Model.load(uri)
    except (MlflowException, OSError) as err:
        message = err.message if isinstance(err, MlflowException) else str(err)
        raise ValueError(f"cannot load {uri}: {message.splitlines()[0]}") from None
    pyfunc = description.flavors.get("python_function", {})
    if pyfunc.get("loader_module") != __name__ or "data" not in pyfunc:
        found = "a pickled python_model" if "python_model" in pyfunc else pyfunc.get("loader_module") or "none"
        raise ValueError(f"{uri} is not a LogDiff model (it loads through {found}, not {__name__}); "
                         "refusing to load it")
    local = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/{pyfunc['data']}")
    return load_trained(local)


def ui_command(project_dir: str | Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """argv for ``mlflow ui`` on the project's store and artifact root."""
    uri = tracking_uri(project_dir)
    if _is_remote(uri):
        raise ValueError(f"MLFLOW_TRACKING_URI is a server ({uri}): open it in a browser instead")
    # One worker serves one user; the default four start slower and weigh more on a small machine.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--default-artifact-root", artifact_root(project_dir), "--host", host, "--port", str(port),
            "--workers", "1"]
