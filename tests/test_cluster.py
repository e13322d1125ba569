"""The pipeline on a real two-node Ray cluster on this machine (``make test-cluster``; skipped by ``make test``).

What runs: an S3 server (moto's server mode) on 127.0.0.1 holding the outputs, checkpoints, MLflow artifacts and
the DVC remote; an MLflow tracking server started by ``logdiff tracking-server``; a Ray head and a second Ray node
joined with the head's auth token. As root the second node runs in its own mount namespace with the repository
and every folder of this test under empty tmpfs mounts (the virtualenv bound back in), so it cannot read the
driver's disk: code reaches it through Ray's runtime environment and data through the store. Not root: it runs
from a separate empty working directory instead (weaker), and the test says which isolation ran.

Then ``logdiff run`` three times, as a user would: the demo at test size with one model pinned to the second node
(then a fresh git clone pulls the outputs from the DVC remote, is up to date, and a run there trains nothing);
one model as a Ray Train run of two gloo DDP workers, one per node; and a run whose second node's raylet is
killed (by its pid) during training: the task is retried on the head and resumes from its checkpoint in the store,
and every model ends registered once with no MLflow run left RUNNING. Ports 18000-18999 only; everything started
here is stopped by its process group id (never ``ray stop``).
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from local_cluster import BUCKET, NODE2_TMP, S3, VENV, LocalCluster, raylet_pids, wait_until  # noqa: E402
from test_pipeline import TINY  # noqa: E402

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
STORAGE = f"s3://{BUCKET}/projects/test"
CLUSTER = [f"cluster.storage={STORAGE}", f"cluster.endpoint={S3}", f"cluster.dvc_remote=s3://{BUCKET}/dvc"]
SMALL = [o for o in TINY if not o.startswith("diffusion.distributions")]
STEPS = 1500  # the fault test's training: long enough to be killed after its first checkpoint (step 50)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    running = LocalCluster(base, hidden=[ROOT, base])
    try:
        running.start()
        print(f"\nsecond node's isolation: {running.isolation}")
        yield running
    finally:
        running.stop()


def logdiff_run(cluster, project: Path, *overrides: str, name: str, background: bool = False):
    argv = [str(VENV / "bin" / "logdiff"), "run", "demo", *SMALL, *CLUSTER, *overrides, "--project-dir", str(project)]
    log = cluster.logs / f"run-{name}.log"
    proc = subprocess.Popen(argv, env=cluster.env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    if background:
        return proc, log
    assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    return log.read_text()


def training_nodes(log: str) -> dict[str, str]:
    """Which node each model's training started on, in the order the log says it (the last one wins)."""
    return dict(re.findall(r"(\S+-identity-0(?: rank \d)?): training on Ray node (.+)", log))


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def mlflow(cluster):
    from mlflow import MlflowClient

    return MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])


def test_the_second_node_sees_none_of_our_files(cluster):
    code = (f"import ray, pathlib; ray.init(); "
            f"f = ray.remote(resources={{'node2': 1}}, num_cpus=0)(lambda: [pathlib.Path(p).exists() and "
            f"any(pathlib.Path(p).iterdir()) for p in ({str(ROOT / 'tasks')!r}, {str(cluster.base)!r})]); "
            f"print(ray.get(f.remote()))")
    seen = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, check=True)
    if "mount namespace" in cluster.isolation:
        assert seen.stdout.strip().splitlines()[-1] == "[False, False]"


def test_the_demo_on_two_nodes_registers_and_a_fresh_clone_pulls_it(cluster, mlflow):
    project = cluster.base / "project"
    project.mkdir()
    git(project, "init", "-q")
    (project / ".gitignore").write_text(".logdiff/\n")
    log = logdiff_run(cluster, project, "cluster.placement={gaussian: node2, student_t: head}",
                      "diffusion.distributions={gaussian: {}, student_t: {nu: 5}}", name="demo")
    nodes = training_nodes(log)
    print("\n".join(line for line in log.splitlines() if "training on Ray node" in line))
    assert "(node2)" in nodes["gaussian-identity-0"] and "(head" in nodes["student_t-identity-0"]
    for model in ("gaussian", "student_t"):
        versions = mlflow.search_model_versions(f"name = 'ngldm-digits-{model}'")
        assert [v.version for v in versions] == ["1"]
        run = mlflow.get_run(versions[0].run_id)
        assert run.data.tags["ray_node"] == nodes[f"{model}-identity-0"] and run.info.status == "FINISHED"
    keys = cluster.objects()
    print("bucket after the run:\n  " + "\n  ".join(k for k in keys if not k.startswith("dvc/files")))
    for key in ("projects/test/demo/train/gaussian-identity-0/model.safetensors",
                "projects/test/demo/.logdiff/published/train@gaussian-identity-0.json",
                "projects/test/demo/.logdiff/checkpoints/gaussian-identity-0.pt",
                "projects/test/demo/report/report.md"):
        assert key in keys
    assert any(k.startswith("mlartifacts/") and k.endswith("model.safetensors") for k in keys)
    assert any(k.startswith("dvc/files/md5/") for k in keys)

    # a second machine: a fresh clone gets every output from the DVC remote, and retrains nothing
    git(project, "add", "-A")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    clone = cluster.base / "clone"
    git(cluster.base, "clone", "-q", str(project), str(clone))
    dvc = [sys.executable, "-m", "dvc"]  # the demo is the root pipeline, the remote in the clone's .dvc/config
    subprocess.run([*dvc, "pull"], cwd=clone, env=cluster.env, check=True, capture_output=True)
    status = subprocess.run([*dvc, "status"], cwd=clone, env=cluster.env, check=True, capture_output=True,
                            text=True).stdout
    assert "up to date" in status, status
    again = logdiff_run(cluster, clone, "cluster.placement={gaussian: node2, student_t: head}",
                        "diffusion.distributions={gaussian: {}, student_t: {nu: 5}}", name="clone")
    assert "stages run: nothing (everything up to date)" in again


def test_one_model_across_two_ddp_workers_one_per_node(cluster, mlflow):
    """In the same experiment: only the new model's stages run."""
    log = logdiff_run(cluster, cluster.base / "project", "diffusion.distributions={laplace: {}}",
                      "train.num_workers=2", "train.cpus_per_worker=1", "train.eval_every=0", name="ddp")
    nodes = training_nodes(log)
    print("\n".join(line for line in log.splitlines() if "training on Ray node" in line))
    ranks = {nodes["laplace-identity-0 rank 0"], nodes["laplace-identity-0 rank 1"]}
    assert len(ranks) == 2 and any("(node2)" in n for n in ranks)
    (version,) = mlflow.search_model_versions("name = 'ngldm-digits-laplace'")
    tags = mlflow.get_run(version.run_id).data.tags
    assert tags["world_size"] == "2" and {tags["ray_node.rank0"], tags["ray_node.rank1"]} == ranks


def test_a_node_killed_during_training_is_retried_on_the_head_and_resumes(cluster, mlflow):
    """Last: it takes the second node down."""
    checkpoint = "projects/test/demo/.logdiff/checkpoints/uniform-identity-0.pt"
    proc, log = logdiff_run(cluster, cluster.base / "project", "diffusion.distributions={uniform: {}, gumbel: {}}",
                            "cluster.placement={uniform: node2, gumbel: head}", f"train.steps={STEPS}",
                            "train.checkpoint_every=50", "train.log_every=50", "train.eval_every=0",
                            name="fault", background=True)
    try:
        wait_until(lambda: checkpoint in cluster.objects(checkpoint) and "uniform-identity-0: training on Ray node"
                   in log.read_text(), "the model on the second node saves a checkpoint", timeout=300, every=0.25)
        (raylet,) = raylet_pids(NODE2_TMP)
        os.kill(raylet, signal.SIGKILL)
        killed_at = time.monotonic()
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    lines = [line for line in text.splitlines() if "training on Ray node" in line or "resuming from" in line]
    print(f"raylet {raylet} killed; run ended {time.monotonic() - killed_at:.0f} s later\n" + "\n".join(lines))
    started = re.findall(r"uniform-identity-0: training on Ray node (.+)", text)
    assert len(started) == 2 and "(node2)" in started[0] and "(head" in started[1]
    resumed = re.search(rf"uniform-identity-0: resuming from its checkpoint at step (\d+) of {STEPS}", text)
    assert resumed and int(resumed.group(1)) >= 50
    for model in ("uniform", "gumbel"):
        assert len(mlflow.search_model_versions(f"name = 'ngldm-digits-{model}'")) == 1
    experiment = mlflow.get_experiment_by_name("demo").experiment_id  # every run of the module's three
    assert mlflow.search_runs([experiment], "attributes.status = 'RUNNING'") == []
    assert mlflow.search_runs([experiment], "attributes.run_name = 'uniform-identity-0'")[0].info.status == "FINISHED"
