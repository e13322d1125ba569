"""Outputs through a store (``cluster.storage``): published whole, fetched whole and checked, checkpoints mirrored so
a training resumes on another node; and the one-line errors of a cluster set up wrong. A ``file://`` store here
(the same code as ``s3://``, which ``make test-cluster`` runs against an S3 server)."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from flows.cluster import ClusterError, check_cluster, publish_inputs
from flows.distributed import fetch_trained
from flows.stages import STAGES, run_stage
from tasks import config
from tasks.config import ConfigError, Variant
from tasks.io import load_safetensors, stage_output
from tasks.paths import MODEL_FILE, checkpoint_file, metrics_file, train_dir
from tasks.storage import Store, StoreError, node_local

WINE = ["data.limit=120", "train.steps=20", "train.checkpoint_every=10", "train.log_every=10", "train.eval_every=0",
        "network.hidden=16", "diffusion.distributions={laplace: {}}", "diffusion.transforms=[identity]"]
LAPLACE = Variant("laplace", "identity")


def wine(workdir: Path, store: Path, *extra: str):
    return replace(config.load("wine", [*WINE, f"cluster.storage=file://{store}", *extra]), workdir=str(workdir))


def stored_files(store: Path) -> set[str]:
    return {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}


def test_a_unit_is_published_whole_fetched_whole_and_checked(tmp_path):
    cfg = wine(tmp_path / "driver", tmp_path / "store")
    unit, paths = STAGES["baselines"].output(cfg, "identity")
    with stage_output(paths[0], "baselines") as out:
        (out / "a.json").write_text("1")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(b"x" * 1000)
    paths[1].parent.mkdir(parents=True)
    paths[1].write_text("{}")
    Store(cfg).publish(unit, paths)
    assert stored_files(tmp_path / "store") == {
        "wine/baselines/identity/.logdiff-stage", "wine/baselines/identity/a.json", "wine/baselines/identity/sub/b.bin",
        "wine/metrics/baselines/identity.json", "wine/.logdiff/published/baselines@identity.json"}

    node = replace(cfg, workdir=str(tmp_path / "node"))
    Store(node).fetch(unit, STAGES["baselines"].output(node, "identity")[1])
    assert (tmp_path / "node" / "baselines" / "identity" / "sub" / "b.bin").read_bytes() == b"x" * 1000
    assert (tmp_path / "node" / "metrics" / "baselines" / "identity.json").read_text() == "{}"

    # published again with a file less: the store drops it; a reader of a changed object refuses it
    (paths[0] / "sub" / "b.bin").unlink()
    Store(cfg).publish(unit, paths)
    assert "wine/baselines/identity/sub/b.bin" not in stored_files(tmp_path / "store")
    (tmp_path / "store" / "wine" / "baselines" / "identity" / "a.json").write_text("2")
    shutil.rmtree(tmp_path / "node" / "baselines")
    with pytest.raises(StoreError, match="does not match its manifest"):
        Store(node).fetch(unit, STAGES["baselines"].output(node, "identity")[1])
    assert not (tmp_path / "node" / "baselines" / "identity").exists()  # nothing half-fetched


def test_the_manifest_comes_last_so_a_broken_publish_reads_as_absent(tmp_path, monkeypatch):
    cfg = wine(tmp_path / "driver", tmp_path / "store")
    unit, paths = STAGES["report"].output(cfg)
    with stage_output(paths[0], "report") as out:
        (out / "report.md").write_text("# report")
    store = Store(cfg)

    def lost_connection(*args):
        raise OSError("connection lost")

    monkeypatch.setattr(store, "_upload", lost_connection)
    with pytest.raises(OSError):
        store.publish(unit, paths)
    with pytest.raises(FileNotFoundError, match="report is not in the store"):
        Store(replace(cfg, workdir=str(tmp_path / "node"))).fetch(unit, paths)


def test_training_on_an_empty_node_fetches_its_inputs_publishes_and_resumes_elsewhere(tmp_path, capsys):
    """The driver runs the upstream stages; a 'node' with nothing of the project trains from the store; its
    checkpoint lets a second node resume, and the driver gets back byte-identical outputs."""
    driver = wine(tmp_path / "driver", tmp_path / "store")
    for stage, item in (("ingest", None), ("autoencoder", None), ("encode", "identity"), ("classifier", None)):
        run_stage(driver, stage, item)
    publish_inputs(driver, "train", [LAPLACE])  # published as they ran: nothing sent again
    assert "published" not in capsys.readouterr().out.split("classifier")[-1]

    class NodeDied(Exception):
        pass

    def die_at_step_20(step, metrics):  # before that step's checkpoint: the last one is step 10's
        if step == 20:
            raise NodeDied

    with node_local(driver) as first_node, pytest.raises(NodeDied):
        run_stage(first_node, "train", LAPLACE, callback=die_at_step_20)
    assert not Path(first_node.work).exists()  # the node's scratch folder is gone with it
    assert "wine/.logdiff/checkpoints/laplace-identity-0.pt" in stored_files(tmp_path / "store")

    with node_local(driver) as second_node:
        record = run_stage(second_node, "train", LAPLACE)
    assert record["resumed_from"] == 10
    assert "laplace-identity-0: resuming from its checkpoint at step 10 of 20" in capsys.readouterr().out
    assert not train_dir(driver, LAPLACE).exists()
    fetch_trained(driver, LAPLACE)
    stored = tmp_path / "store" / "wine" / "train" / "laplace-identity-0" / MODEL_FILE
    assert (train_dir(driver, LAPLACE) / MODEL_FILE).read_bytes() == stored.read_bytes()
    assert metrics_file(driver, "train", LAPLACE.name).is_file()

    # the same training without a store, uninterrupted, writes the same model: the store changes no byte
    local = replace(driver, workdir=str(tmp_path / "driver"), cluster=replace(driver.cluster, storage=""))
    assert not checkpoint_file(local, LAPLACE.name).exists()  # this machine trained nothing
    shutil.rmtree(train_dir(local, LAPLACE))
    run_stage(local, "train", LAPLACE)
    a, b = (load_safetensors(p, "model")[0] for p in (train_dir(local, LAPLACE) / MODEL_FILE, stored))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cluster_settings_are_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="cluster.storage: '/data' is not a store"):
        config.load("demo", ["cluster.storage=/data"])
    with pytest.raises(ConfigError, match="'cauchy' is neither a model nor a distribution"):
        check_cluster(config.load("demo", ["cluster.placement={cauchy: node2}"]))
    with pytest.raises(ConfigError, match="train.num_workers > 1"):
        check_cluster(config.load("demo", ["cluster.placement={gaussian: node2}", "train.num_workers=2"]))
    with pytest.raises(StoreError, match="has no folder"):
        check_cluster(config.load("demo", [f"cluster.storage=file://{tmp_path}/absent/prefix"]))
    # nothing listens on port 18999 of this machine: a closed port answers at once
    with pytest.raises(StoreError, match="s3://bucket/prefix at http://127.0.0.1:18999 is unreachable"):
        check_cluster(config.load("demo", ["cluster.storage=s3://bucket/prefix",
                                           "cluster.endpoint=http://127.0.0.1:18999"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:18999")
    with pytest.raises(ClusterError, match="tracking server http://127.0.0.1:18999 .* is unreachable"):
        check_cluster(config.load("demo"))

    # a cluster of two nodes (Ray's answers stood in for): the SQLite store and the driver's disk will not do
    import flows.distributed

    two_nodes = [{"NodeID": "a" * 56, "Alive": True, "Resources": {"node:__internal_head__": 1.0}},
                 {"NodeID": "b" * 56, "Alive": True, "Resources": {"node2": 1.0}}]
    monkeypatch.setattr(flows.distributed, "init_ray", lambda: None)
    monkeypatch.setattr(flows.distributed, "alive_nodes", lambda: two_nodes)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:18100")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ClusterError, match="has 2 nodes, but MLflow tracks to the project SQLite file"):
        check_cluster(config.load("demo"))
    monkeypatch.setattr("flows.cluster.check_tracking_server", lambda uri: None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(ClusterError, match="set cluster.storage=s3://"):
        check_cluster(config.load("demo"))
    with pytest.raises(ValueError, match="no alive Ray node is 'gpu-box'.*bbbbbbbb \\(node2\\)"):
        check_cluster(config.load("demo", [f"cluster.storage=file://{tmp_path}", "cluster.placement={gaussian: gpu-box}"]))
    check_cluster(config.load("demo", [f"cluster.storage=file://{tmp_path}", "cluster.placement={gaussian: node2}"]))


def test_the_store_is_not_a_setting_of_any_output():
    plain, clustered = config.load("demo"), config.load("demo", ["cluster.storage=s3://b/p"])
    assert plain.model_settings(LAPLACE) == clustered.model_settings(LAPLACE)
    assert "cluster" in json.loads(json.dumps(clustered.to_dict()))  # params.yaml keeps it


def test_a_ddp_training_starts_again_only_when_a_worker_was_lost():
    """Ray Train reports a lost worker and a training's own exception alike; only the first is retried."""
    from ray.exceptions import RayActorError

    from flows.distributed import _lost_worker

    class TrainingFailed(Exception):
        def __init__(self, failures):
            self.worker_failures = failures

    assert _lost_worker(TrainingFailed({0: RayActorError(), 1: RuntimeError("gloo: connection closed")}))
    assert not _lost_worker(TrainingFailed({0: FloatingPointError("loss became nan"), 1: RuntimeError("gloo")}))
    assert not _lost_worker(ValueError("not a Ray Train failure"))
