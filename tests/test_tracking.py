"""MLflow tracking and registry (flows/tracking.py) against a throwaway SQLite store and tiny real model files."""
import multiprocessing
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from flows import tracking
from logdiff_core.transforms import IdentityTransform
from tasks.codec import Codec
from tasks.config import Variant, from_dict
from tasks.io import sha256_file
from tasks.sample import TrainedModel, build_network, network_spec, save_model, schedule_from

WINE = {"name": "wine", "data": {"source": "wine"}, "autoencoder": {"kind": "none"},
        "network": {"kind": "mlp", "hidden": 16, "layers": 1}, "sample": {"steps": 5},
        "diffusion": {"distributions": {"gaussian": {}}}}
DIGITS = {"name": "digits", "data": {"source": "digits"}, "autoencoder": {"kind": "none"},
          "network": {"kind": "unet", "base_channels": 8, "channel_mults": [1], "attention_resolution": 0,
                      "num_heads": 1}, "sample": {"steps": 3}, "diffusion": {"distributions": {"gaussian": {}}}}
CHAMPION_URI = "models:/ngldm-wine-gaussian@champion"


def write_model(path: Path, raw_config: dict = WINE, kind: str = "array", latent_shape: tuple = (3,),
                seed: int = 0) -> Path:
    """A real model file (untrained denoiser, identity codec); another seed gives another file."""
    config = from_dict(raw_config).to_dict()
    torch.manual_seed(seed)
    codec = Codec(kind, IdentityTransform(), None, torch.zeros(()), torch.ones(()), latent_shape)
    spec = network_spec(config, latent_shape)
    return save_model(path, build_network(spec, schedule_from(config)), spec, "gaussian", {}, codec, config)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty SQLite store: a copy costs milliseconds, a fresh one ~7 s of schema migrations."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def project(tmp_path, monkeypatch, empty_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def train_run(project):
    """The id of a running ``train-gaussian`` child run of a pipeline run."""
    with tracking.start_parent_run(from_dict(WINE), project, {}) as parent:
        with tracking.child_run(parent, "train-gaussian") as run_id:
            yield run_id


def register(project: Path, run_id: str, score: float, seed: int = 0, metric: str = "distance",
             transform: str = "identity") -> dict:
    return tracking.register_model(write_model(project / f"model-{seed}.safetensors", seed=seed), dataset="wine",
                                   variant=Variant("gaussian", transform), run_id=run_id, score=score, metric=metric,
                                   tags={"dvc_data_hash": "d41d8"})


def test_store_location_override_and_ui_command(project, monkeypatch):
    db = project.resolve() / "mlflow.db"
    assert tracking.tracking_uri(project) == f"sqlite:///{db}"
    argv = tracking.ui_command(project, port=5123)
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{db}"
    assert argv[argv.index("--default-artifact-root") + 1] == str(project.resolve() / "mlartifacts")
    assert argv[argv.index("--port") + 1] == "5123" and "ui" in argv

    tracking.setup("wine", project)  # a project's store must not stick to the next project's
    assert tracking.tracking_uri(project / "other") == f"sqlite:///{project.resolve() / 'other' / 'mlflow.db'}"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/store.db")
    assert tracking.tracking_uri(project) == "sqlite:////elsewhere/store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(ValueError, match="is a server"):
        tracking.ui_command(project)


def test_flatten_uses_dotted_keys_and_keeps_empty_sections():
    assert tracking.flatten({"train": {"lr": 0.1, "steps": 2}, "distributions": {"gaussian": {}}, "seed": 0}) == {
        "train.lr": 0.1, "train.steps": 2, "distributions.gaussian": {}, "seed": 0}


def test_git_commit_is_head_or_unknown(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head


def test_parent_and_child_runs_record_config_metrics_tags_and_artifacts(project):
    cfg = from_dict(WINE)
    picture = project / "samples.png"
    picture.write_bytes(b"png")
    with tracking.start_parent_run(cfg, project, {"dvc_data_hash": "d41d8", "prefect_flow_run_id": "fr-1"}) as parent:
        with tracking.child_run(parent, "evaluate-gaussian", params={"distribution": "gaussian"},
                                tags={"stage": "evaluate"}) as child:
            tracking.log_stage_outputs(child, {"distance": 0.25, "fid": {"value": 3.5}, "parameters": 1200,
                                               "note": "text", "ok": True}, [picture])
    client = MlflowClient()
    parent_run, child_run = client.get_run(parent), client.get_run(child)
    experiment = client.get_experiment(parent_run.info.experiment_id)
    assert experiment.name == "wine" and experiment.artifact_location == str(project.resolve() / "mlartifacts")
    assert parent_run.data.params["train.lr"] == str(cfg.train.lr)
    assert parent_run.data.params["network.kind"] == "mlp"
    assert parent_run.data.tags["mlflow.source.git.commit"] == "unknown"
    assert parent_run.data.tags["dvc_data_hash"] == "d41d8" and parent_run.data.tags["prefect_flow_run_id"] == "fr-1"
    assert "config.yaml" in [f.path for f in client.list_artifacts(parent)]
    assert child_run.data.tags["mlflow.parentRunId"] == parent and child_run.data.tags["stage"] == "evaluate"
    assert child_run.info.experiment_id == parent_run.info.experiment_id
    assert child_run.data.params == {"distribution": "gaussian"}
    assert child_run.data.metrics == {"distance": 0.25, "fid.value": 3.5}  # measurements: metrics
    assert {k: child_run.data.tags[k] for k in ("parameters", "note", "ok")} == {  # counts, names: tags
        "parameters": "1200", "note": "text", "ok": "True"}
    assert [f.path for f in client.list_artifacts(child)] == ["samples.png"]
    assert parent_run.info.status == child_run.info.status == "FINISHED"


def test_a_failing_stage_marks_its_run_failed(project):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.start_parent_run(from_dict(WINE), project, {}) as parent:
            with tracking.child_run(parent, "train-gaussian") as child:
                raise RuntimeError("boom")
    client = MlflowClient()
    assert client.get_run(child).info.status == client.get_run(parent).info.status == "FAILED"


def test_metric_logger_builds_a_step_curve_across_processes(project):
    experiment_id = tracking.setup("wine", project)
    run_id = MlflowClient().create_run(experiment_id).info.run_id
    logger = tracking.MetricLogger(tracking.tracking_uri(project), run_id)
    logger(1, {"loss": 1.0, "lr": 0.1})
    worker = multiprocessing.get_context("spawn").Process(target=logger, args=(2, {"loss": 0.5, "fid": None}))
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == 0
    logger(3, {"loss": np.float32(0.25)})
    history = MlflowClient().get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "lr")] == [1]


def test_champion_moves_only_on_a_better_score_and_reregistering_is_idempotent(project, train_run):
    first = register(project, train_run, score=1.0, seed=0)
    assert first == {"name": "ngldm-wine-gaussian", "version": 1, "champion": True, "champion_version": 1,
                     "score": 1.0}
    worse = register(project, train_run, score=2.0, seed=1)
    assert (worse["version"], worse["champion"], worse["champion_version"]) == (2, False, 1)
    better = register(project, train_run, score=0.5, seed=2)
    assert (better["version"], better["champion"], better["champion_version"]) == (3, True, 3)
    again = register(project, train_run, score=0.1, seed=1)  # same file as v2: its version and recorded score
    assert again == {**worse, "champion_version": 3}
    other_metric = register(project, train_run, score=0.01, seed=3, metric="fid")  # not comparable: kept
    assert (other_metric["version"], other_metric["champion"], other_metric["champion_version"]) == (4, False, 3)

    client = MlflowClient()
    assert len(client.search_model_versions("name = 'ngldm-wine-gaussian'")) == 4
    assert client.get_registered_model("ngldm-wine-gaussian").aliases == {"champion": 3}
    v2 = client.get_model_version("ngldm-wine-gaussian", 2)
    assert v2.run_id == train_run
    assert v2.tags["model_sha256"] == sha256_file(project / "model-1.safetensors")
    assert (v2.tags["champion_metric"], float(v2.tags["score"]), v2.tags["dvc_data_hash"]) == ("distance", 2.0, "d41d8")
    assert (v2.tags["distribution"], v2.tags["transform"]) == ("gaussian", "identity")

    log = register(project, train_run, score=5.0, seed=4, transform="log")  # its own model, its own champion
    assert (log["name"], log["version"], log["champion"]) == ("ngldm-wine-gaussian-log", 1, True)


def test_load_registered_champion_generates_and_pyfunc_predicts(project, train_run):
    register(project, train_run, score=1.0)
    model = tracking.load_registered(CHAMPION_URI, project_dir=project)
    assert isinstance(model, TrainedModel) and model.distribution == "gaussian"
    assert model.generate(4, steps=5, progress=False).shape == (4, 3)

    pyfunc = mlflow.pyfunc.load_model("models:/ngldm-wine-gaussian/1")
    out = pyfunc.predict(pd.DataFrame({"n": [2, 3], "seed": [0, 1]}))
    assert list(out.columns) == ["x0", "x1", "x2"] and out.dtypes.eq(np.float64).all()
    expected = np.concatenate([model.generate(2, seed=0, progress=False), model.generate(3, seed=1, progress=False)])
    np.testing.assert_allclose(out.to_numpy(), expected)


def test_unknown_model_alias_or_version_is_a_one_line_value_error(project, train_run):
    register(project, train_run, score=1.0)
    cases = {"models:/ngldm-wine-laplace@champion": "no model 'ngldm-wine-laplace' in the registry at sqlite:///.*"
                                                    "registered: ngldm-wine-gaussian",
             "models:/ngldm-wine-gaussian@best": "no alias 'best'; aliases: champion \\(v1\\)",
             "models:/ngldm-wine-gaussian/9": "cannot load models:/ngldm-wine-gaussian/9: .*not found"}
    for uri, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            tracking.load_registered(uri, project_dir=project)
        assert "\n" not in str(err.value)


def test_image_model_predicts_one_uint8_image_per_row(tmp_path):
    path = write_model(tmp_path / "model.safetensors", DIGITS, kind="image", latent_shape=(1, 8, 8))
    out = tracking._load_pyfunc(str(path)).predict(pd.DataFrame({"n": [3], "steps": [2]}))
    images = np.stack(out["image"])
    assert list(out.columns) == ["image"] and images.shape == (3, 1, 8, 8) and images.dtype == np.uint8
    restarted = tracking._load_pyfunc(str(path)).predict(pd.DataFrame({"n": [3], "steps": [2], "restarts": [1]}))
    assert not np.array_equal(np.stack(restarted["image"]), images)  # the same seed, sampled on
