"""The orchestrated pipeline end to end on tiny settings: Prefect flow, Ray fan-out, DVC state, MLflow registry."""
import os

import pytest
from mlflow import MlflowClient

from flows import tracking
from flows.cli import main as cli
from flows.pipeline import run_pipeline

pytestmark = pytest.mark.slow

TINY = [
    "data.limit=200", "autoencoder.steps=10", "autoencoder.base_channels=8", "autoencoder.batch_size=32",
    "network.base_channels=8", "network.num_heads=2", "train.steps=10", "train.batch_size=32", "train.log_every=5",
    "train.eval_every=5", "sample.steps=5", "eval.num_samples=32", "eval.fid=false", "eval.bootstrap=10",
    "sample.restart_steps=2", "classifier.steps=30", "classifier.base_channels=8",
    "diffusion.distributions={gaussian: {}, student_t: {nu: 5}}",
]


@pytest.fixture(scope="module", autouse=True)
def hermetic_env(tmp_path_factory):
    """Prefect's home in a temp folder, its ephemeral API, the project's own MLflow store, a local Ray."""
    env = pytest.MonkeyPatch()
    env.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))
    env.delenv("PREFECT_API_URL", raising=False)
    env.delenv("MLFLOW_TRACKING_URI", raising=False)
    env.delenv("RAY_ADDRESS", raising=False)
    env.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    yield
    import ray
    from prefect.server.api.server import SubprocessASGIServer

    ray.shutdown()
    # stop the ephemeral Prefect server now, not at exit, when its goodbye log line meets closed streams
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
    env.undo()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh project directory after one pipeline run."""
    root = tmp_path_factory.mktemp("project")
    return root, run_pipeline("demo", TINY, project_dir=str(root))


def dvc_status(experiment):
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=experiment, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def test_first_run_trains_registers_and_leaves_dvc_clean(project):
    root, summary = project
    assert summary["stages_run"] == ["ingest", "autoencoder", "encode@identity", "classifier",
                                     "baselines@identity", "train@gaussian-identity-0", "train@student_t-identity-0",
                                     "evaluate@gaussian-identity-0", "evaluate@student_t-identity-0", "report"]
    assert dvc_status(root / "artifacts" / "demo") == {}
    tracking.use_store(root)
    client = MlflowClient()
    for distribution in ("gaussian", "student_t"):
        info = summary["models"][f"{distribution}-identity-0"]
        assert info["version"] == 1 and info["champion"] and info["metric"] == "fd_classifier"
        assert info["low"] < info["score"] < info["high"] and info["beats_trivial"] in (True, False)
        model = client.get_registered_model(f"ngldm-digits-{distribution}")
        assert model.aliases["champion"] == 1 and "lower is better" in model.description
    winner = min(("gaussian", "student_t"), key=lambda d: summary["models"][f"{d}-identity-0"]["score"])
    assert summary["best"] == f"models:/ngldm-digits-{winner}@best"  # across distributions, findable
    assert [d for d in ("gaussian", "student_t")
            if "best" in client.get_registered_model(f"ngldm-digits-{d}").aliases] == [winner]
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"pipeline", "ingest", "autoencoder", "encode@identity", "classifier", "baselines@identity",
            "gaussian-identity-0", "student_t-identity-0", "report"} <= names
    gaussian = next(r for r in runs if r.info.run_name == "gaussian-identity-0")
    assert [m.step for m in client.get_metric_history(gaussian.info.run_id, "loss")] == [5, 10]
    assert "curve_fd_classifier" in gaussian.data.metrics and "champion_score" in gaussian.data.metrics
    assert gaussian.data.tags["seed"] == "0" and gaussian.data.tags["champion_metric"] == "fd_classifier"
    assert gaussian.data.tags["data_content_hash"] and gaussian.data.tags["dvc_data_md5"]
    experiment = root / "artifacts" / "demo"
    assert (experiment / "params.yaml").exists() and (experiment / "dvc.yaml").exists()
    assert (experiment / "eval" / "gaussian-identity-0" / "samples.png").exists()
    assert (experiment / "metrics" / "evaluate" / "gaussian-identity-0.json").exists()
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "report.json", "scores.png", "samples.png"} <= logged
    # where the time went: each stage's wall time in its own run, the phases on the pipeline run, and in the report
    assert gaussian.data.metrics["stage_seconds.train"] > 0 and gaussian.data.metrics["stage_seconds.evaluate"] > 0
    assert {f"stage_seconds.{name}" for name in ("ingest", "train", "evaluate", "other", "total")} <= set(
        parent.data.metrics)
    assert "| train | " in (experiment / "report" / "report.md").read_text().split("## Where the time went")[1]


def test_rerun_skips_everything_and_logs_nothing(project):
    root, first = project
    tracking.use_store(root)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("demo").experiment_id
    runs_before = len(client.search_runs([experiment]))
    again = run_pipeline("demo", TINY, project_dir=str(root))
    assert again["stages_run"] == [] and again["best"] == first["best"]
    assert {d: i["version"] for d, i in again["models"].items()} == {"gaussian-identity-0": 1,
                                                                     "student_t-identity-0": 1}
    assert len(client.search_runs([experiment])) == runs_before  # a no-op run adds no MLflow runs


def test_another_experiment_has_its_own_folder_and_switching_back_retrains_nothing(project):
    root, _ = project
    other = run_pipeline("demo", [*TINY, "name=other", "diffusion.distributions={gaussian: {}}"], project_dir=str(root))
    assert other["stages_run"][:2] == ["ingest", "autoencoder"] and (root / "artifacts" / "other" / "dvc.lock").exists()
    back = run_pipeline("demo", TINY, project_dir=str(root))
    assert back["stages_run"] == []


def test_changing_one_distribution_reruns_only_it(project):
    root, _ = project
    changed = [o for o in TINY if not o.startswith("diffusion.distributions")]
    changed.append("diffusion.distributions={gaussian: {}, student_t: {nu: 8}}")
    summary = run_pipeline("demo", changed, project_dir=str(root))
    assert summary["stages_run"] == ["train@student_t-identity-0", "evaluate@student_t-identity-0", "report"]
    assert summary["models"]["student_t-identity-0"]["version"] == 2
    assert summary["models"]["gaussian-identity-0"]["version"] == 1
    assert dvc_status(root / "artifacts" / "demo") == {}


def test_dvc_repro_writes_what_the_flow_wrote(project):
    """dvc repro runs the same stage through `logdiff stage`: forcing one training leaves everything up to date."""
    import subprocess
    import sys
    from pathlib import Path

    root, _ = project
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    experiment = root / "artifacts" / "demo"
    subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "train@gaussian-identity-0"],
                   cwd=experiment, env=env, check=True, capture_output=True)
    assert dvc_status(experiment) == {}
    tracking.use_store(root)  # a stage DVC started reaches MLflow too
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                              "tags.`logdiff.started_by` = 'logdiff stage (dvc)'")
    assert [r.info.run_name for r in runs] == ["train@gaussian-identity-0"] and runs[0].info.status == "FINISHED"
    assert "final_loss" in runs[0].data.metrics and runs[0].data.params["train.steps"] == "10"


def test_sample_from_the_registry_via_the_cli(project, capsys):
    root, _ = project
    out = root / "grid.png"
    code = cli(["sample", "--model", "models:/ngldm-digits-gaussian@champion", "-n", "9", "-o", str(out),
                "--steps", "3", "--restarts", "1", "--project-dir", str(root)])
    assert code == 0 and out.stat().st_size > 0
    assert cli(["sample", "--model", "models:/ngldm-digits-cauchy@champion", "-o", str(out),
                "--project-dir", str(root)]) == 2
    assert "no model 'ngldm-digits-cauchy'" in capsys.readouterr().err


def test_one_distribution_across_two_ddp_workers(project):
    """Ray Train (TorchTrainer, gloo DDP on CPU) runs the same training stage across two workers."""
    from dataclasses import replace

    from flows.distributed import train_ddp
    from tasks import config
    from tasks.config import Variant

    root, _ = project
    experiment = root / "artifacts" / "demo"
    cfg = replace(config.load(str(experiment / "params.yaml"), ["train.num_workers=2", "train.eval_every=0"]),
                  workdir=str(experiment))
    record = train_ddp(cfg, Variant("gaussian", "identity"))
    assert record["world_size"] == 2 and record["steps"] == 10


def test_wine_preset_compares_identity_and_log_and_samples_positive_csv(tmp_path):
    """The LogDiff preset through the flow: one model per distribution x transform, a comparison report, and a
    registered log-space model whose samples, in the original units, are all positive."""
    import pandas as pd

    tiny = ["train.steps=40", "train.log_every=20", "train.eval_every=0", "network.hidden=32",
            "eval.num_samples=150", "sample.steps=5", "diffusion.distributions={laplace: {}}"]  # the stage test has more
    summary = run_pipeline("wine", tiny, project_dir=str(tmp_path))
    assert set(summary["models"]) == {"laplace-identity-0", "laplace-log-0"}
    assert "encode@identity" in summary["stages_run"] and "encode@log" in summary["stages_run"]
    assert dvc_status(tmp_path / "artifacts" / "wine") == {}
    report = (tmp_path / "artifacts" / "wine" / "report" / "report.md").read_text()
    assert "| laplace-log | 0 |" in report and "| laplace | 0 |" in report and "## Verdict" in report

    out = tmp_path / "samples.csv"
    assert cli(["sample", "--model", "models:/ngldm-wine-laplace-log@champion", "-n", "200", "-o", str(out),
                "--steps", "3", "--project-dir", str(tmp_path)]) == 0
    frame = pd.read_csv(out)
    assert frame.shape == (200, 13) and list(frame.columns[:2]) == ["alcohol", "malic_acid"]
    assert (frame.to_numpy() > 0).all()


def test_a_failing_model_is_reported_and_the_others_still_train(project, monkeypatch, capsys):
    """One model's failure (here an unconfigured distribution) comes back as its exception; the rest train, and
    `logdiff run` prints the failure and exits 1."""
    from dataclasses import replace

    from flows import pipeline
    from flows.distributed import train_variants
    from tasks import config
    from tasks.config import Variant

    root, _ = project
    experiment = root / "artifacts" / "demo"
    cfg = replace(config.load(str(experiment / "params.yaml"), ["train.eval_every=0"]), workdir=str(experiment))
    results = train_variants(cfg, [Variant("gaussian", "identity"), Variant("cauchy", "identity")], {})
    assert isinstance(results["gaussian-identity-0"], dict) and results["gaussian-identity-0"]["steps"] == 10
    assert isinstance(results["cauchy-identity-0"], ValueError)
    assert "'cauchy' is not in diffusion.distributions" in str(results["cauchy-identity-0"])

    summary = {"stages_run": ["train@gaussian-identity-0"], "report": None,
               "models": {"cauchy-identity-0": {"error": "training failed: ValueError: boom"}}}
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: summary)
    assert cli(["run", "demo", "--project-dir", str(root)]) == 1
    assert "cauchy-identity-0           training failed: ValueError: boom" in capsys.readouterr().out


def test_a_diverging_model_fails_in_mlflow_and_prefect_and_the_command_exits_1(project, capsys):
    """Last in this module: it leaves the project with failed trainings."""
    from prefect.client.orchestration import get_client

    root, _ = project
    summary = run_pipeline("demo", [*TINY, "train.lr=1.0e+30"], project_dir=str(root))
    assert set(summary["models"]) == {"gaussian-identity-0", "student_t-identity-0"}
    assert all("FloatingPointError" in info["error"] for info in summary["models"].values())
    tracking.use_store(root)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id], max_results=20,
                              order_by=["attributes.start_time DESC"])
    latest = {r.info.run_name: r.info.status for r in runs[::-1]}  # the newest run of each name wins
    assert latest["gaussian-identity-0"] == latest["student_t-identity-0"] == latest["pipeline"] == "FAILED"
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_runs(limit=1, sort="START_TIME_DESC")[0]
    assert flow_run.state.is_failed() and "2 model(s) failed" in flow_run.state.message
