"""Model files and checkpoints are loaded without unpickling anything: a crafted file cannot run code."""
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from flows import tracking
from tasks.io import load_checkpoint, load_safetensors, save_safetensors, sha256_file
from tasks.sample import load_trained


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.safetensors"
    torch.save({"format": "logdiff-model/2", "state": {}, "payload": Payload(marker)}, path)
    return path, marker


def test_the_payload_runs_when_unpickled(crafted):
    path, marker = crafted
    with open(path, "rb") as file:
        torch.load(file, weights_only=False)  # what the loaders used to do
    assert marker.exists()


def test_a_model_file_carrying_a_pickle_is_refused(crafted):
    path, marker = crafted
    with pytest.raises(ValueError, match="is not a LogDiff diffusion model file") as err:
        load_trained(path)
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_checkpoint_carrying_a_pickle_is_refused(crafted):
    path, marker = crafted
    checkpoint = path.rename(path.with_name("checkpoint.pt"))
    with pytest.raises(ValueError, match="unreadable or unsafe") as err:
        load_checkpoint(checkpoint, "diffusion")
    assert "\n" not in str(err.value) and not marker.exists()


def test_safetensors_round_trip_is_byte_reproducible(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "scalar": torch.tensor(2.0)}
    paths = [save_safetensors(tmp_path / f"{i}.safetensors", tensors, {"kind": "conv", "n": i % 1}) for i in range(2)]
    assert sha256_file(paths[0]) == sha256_file(paths[1])
    loaded, settings = load_safetensors(paths[0], "test")
    assert settings == {"kind": "conv", "n": 0} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.safetensors", "1.safetensors"]  # no temp files left


class PickledModel(mlflow.pyfunc.PythonModel):
    def __init__(self, marker: Path):
        self.payload = Payload(marker)

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_registered_model_with_a_pickled_python_model_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    marker = tmp_path / "code-ran"
    tracking.use_store(tmp_path)
    experiment = MlflowClient().create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=PickledModel(marker),
                                       input_example=pd.DataFrame({"n": [1]}), pip_requirements=["pandas"])
    mlflow.register_model(info.model_uri, "ngldm-x-gaussian")
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
    marker.unlink(missing_ok=True)  # logging validated the input example by loading the model once
    with pytest.raises(ValueError, match="not a LogDiff model .*pickled python_model.*refusing") as err:
        tracking.load_registered("models:/ngldm-x-gaussian/1", project_dir=tmp_path)
    assert "\n" not in str(err.value) and not marker.exists()
