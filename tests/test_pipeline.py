"""The orchestrated pipeline end to end on tiny settings: Prefect flow, Ray fan-out, DVC state, MLflow registry."""
import json

import pytest
from mlflow import MlflowClient

from flows import tracking
from flows.cli import main as cli
from flows.pipeline import run_pipeline
from projects import TINY, dvc, dvc_status, git

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("hermetic_flow_env")]


@pytest.fixture(scope="module")
def project(hermetic_flow_env, tmp_path_factory):
    """A fresh project directory (a git repository, as a clone is) after one pipeline run."""
    root = tmp_path_factory.mktemp("project")
    git(root, "init", "-q")
    return root, run_pipeline("demo", TINY, project_dir=str(root))


def test_first_run_trains_registers_and_leaves_dvc_clean(project):
    root, summary = project
    assert summary["stages_run"] == ["ingest", "autoencoder", "encode@identity", "classifier",
                                     "baselines@identity", "train@gaussian-identity-0", "train@student_t-identity-0",
                                     "evaluate@gaussian-identity-0", "evaluate@student_t-identity-0", "report"]
    assert dvc_status(root) == {}  # the flow's run is the root pipeline's: nothing left for dvc repro
    tracking.use_store(root)
    client = MlflowClient()
    for distribution in ("gaussian", "student_t"):
        info = summary["models"][f"{distribution}-identity-0"]
        assert info["version"] == 1 and info["champion"] and info["metric"] == "held_out_fd_classifier"
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
    assert (root / "params.yaml").exists() and (root / "dvc.yaml").exists()
    assert (experiment / "eval" / "gaussian-identity-0" / "samples.png").exists()
    assert (experiment / "metrics" / "evaluate" / "gaussian-identity-0.json").exists()
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "report.json", "scores.png", "samples.png"} <= logged


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


def test_another_preset_is_an_experiment_of_its_own_and_switching_back_retrains_nothing(project):
    """The LogDiff preset (wine) in the same project: its own folder and DVC pipeline, one model per distribution
    x transform, a comparison report, and a registered log-space model whose samples, in the original units, are
    all positive; the demo's experiment is left as it was."""
    import pandas as pd

    root, _ = project
    tiny = ["train.steps=40", "train.log_every=20", "train.eval_every=0", "network.hidden=32",
            "eval.num_samples=150", "eval.bootstrap=0", "sample.steps=5",
            "diffusion.distributions={laplace: {}}"]  # the stage test has more
    summary = run_pipeline("wine", tiny, project_dir=str(root))
    experiment = root / "artifacts" / "wine"
    assert {"ingest", "encode@identity", "encode@log", "report"} <= set(summary["stages_run"])
    assert set(summary["models"]) == {"laplace-identity-0", "laplace-log-0"}
    assert dvc_status(experiment) == {} and "wine" not in dvc(root, "dag")  # a pipeline apart
    report = (experiment / "report" / "report.md").read_text()
    assert "| laplace-log | 0 |" in report and "| laplace | 0 |" in report and "## Verdict" in report

    out = root / "samples.csv"
    assert cli(["sample", "--model", "models:/ngldm-wine-laplace-log@champion", "-n", "200", "-o", str(out),
                "--steps", "3", "--project-dir", str(root)]) == 0
    frame = pd.read_csv(out)
    assert frame.shape == (200, 14) and list(frame.columns[:2]) == ["alcohol", "malic_acid"]
    assert (frame.drop(columns="label").to_numpy() > 0).all() and set(frame["label"]) <= {0, 1, 2}

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
    assert dvc_status(root) == {}


def test_dvc_exp_run_at_the_root_reruns_what_its_key_changes_and_exp_show_reads_in_one_row(project):
    """The root pipeline as DVC users run it: no git step beyond the clone's commit; the changed key retrains the
    model it belongs to and nothing else; each stage DVC starts is tracked in MLflow too."""
    root, _ = project
    git(root, "add", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore")
    git(root, "commit", "-q", "-m", "the demo's pipeline at test size")
    ran = dvc(root, "exp", "run", "-S", "diffusion.distributions.student_t.nu=6")
    assert sorted(line.split("'")[1] for line in ran.splitlines() if line.startswith("Running stage")) == [
        "evaluate@student_t-identity-0", "report", "train@student_t-identity-0"]
    baseline = next(row for row in json.loads(dvc(root, "exp", "show", "--json")) if row.get("experiments"))
    metrics = baseline["experiments"][0]["revs"][0]["data"]["metrics"]["artifacts/demo/metrics/report.json"]["data"]
    assert set(metrics) == {"changed", "gaussian", "student_t"}
    assert "+diffusion.distributions.student_t.nu=6" in metrics["changed"].split()  # student_t: not in the demo
    assert dvc_status(root) == {}
    tracking.use_store(root)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                              "tags.`logdiff.started_by` = 'logdiff stage (dvc)'")
    train = next(r for r in runs if r.info.run_name == "train@student_t-identity-0")
    assert train.info.status == "FINISHED" and train.data.params["diffusion.distributions.student_t.nu"] == "6"
    assert "final_loss" in train.data.metrics


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
    cfg = replace(config.load(str(root / "params.yaml"), ["train.num_workers=2", "train.eval_every=0"]),
                  workdir=str(experiment))
    record = train_ddp(cfg, Variant("gaussian", "identity"))
    assert record["world_size"] == 2 and record["steps"] == 10


def test_a_diverging_model_fails_in_mlflow_and_prefect_and_the_command_exits_1(project, capsys):
    """Near the end of this module: it leaves the project with failed trainings."""
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


def test_a_failing_model_is_reported_and_the_others_still_train(project, monkeypatch, capsys):
    """One model's failure (here an unconfigured distribution) comes back as its exception; the rest train, and
    `logdiff run` prints the failure and exits 1. Last in this module: the command stops the local Ray."""
    from dataclasses import replace

    from flows import pipeline
    from flows.distributed import train_variants
    from tasks import config
    from tasks.config import Variant

    root, _ = project
    experiment = root / "artifacts" / "demo"
    # the demo at test size, not params.yaml: the diverging test left its learning rate there
    cfg = replace(config.load("demo", [*TINY, "train.eval_every=0"]), workdir=str(experiment))
    results = train_variants(cfg, [Variant("gaussian", "identity"), Variant("cauchy", "identity")], {})
    assert isinstance(results["gaussian-identity-0"], dict) and results["gaussian-identity-0"]["steps"] == 10
    assert isinstance(results["cauchy-identity-0"], ValueError)
    assert "'cauchy' is not in diffusion.distributions" in str(results["cauchy-identity-0"])

    summary = {"stages_run": ["train@gaussian-identity-0"], "report": None,
               "models": {"cauchy-identity-0": {"error": "training failed: ValueError: boom"}}}
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: summary)
    assert cli(["run", "demo", "--project-dir", str(root)]) == 1
    assert "cauchy-identity-0           training failed: ValueError: boom" in capsys.readouterr().out
