import os

import pytest
import torch

# Hermetic runs: no telemetry, no update checks, no stray servers.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Tiny test models run fastest single-threaded; two busy-waiting OpenMP threads on 2 shared cores are 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hermetic_flow_env(tmp_path_factory):
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


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Stages set torch's thread count from train.cpus_per_worker (the cifar10 preset asks for 2): put it back, so
    no test's numbers or speed depend on which tests ran before it."""
    yield
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Modules with end-to-end (slow) tests first, so that parallel workers (``make test`` runs a worker per core,
    ``--dist loadfile``) start on the longest files and finish together; the order within a module is kept.

    The two-node cluster test starts servers and a Ray cluster: it runs only when asked for (``-m cluster``,
    ``make test-cluster``), never in ``make test``."""
    slow_modules = {item.module.__name__ for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
    if config.getoption("markexpr") == "cluster":
        return
    skip = pytest.mark.skip(reason="a two-node Ray cluster with S3 and MLflow servers: make test-cluster")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)
