"""Ray fan-out of the training stage: one Ray task per model (noise distribution x transform, sharing GPUs by
fraction), or Ray Train (TorchTrainer, DDP) across ``train.num_workers`` workers for one model.

A local Ray starts by default; ``RAY_ADDRESS`` joins an existing cluster (docs/cluster.md), and the code travels
to its nodes with the job (Ray's ``py_modules``), so no node needs LogDiff installed or any path of this machine.
A training whose node or worker dies is retried (``cluster.max_retries``; an error raised by the training itself
never is) and resumes from its last checkpoint, which the store holds when ``cluster.storage`` is set. GPU
requests are made only when the cluster has GPUs: a task asking for a GPU on a CPU-only cluster would wait forever.
"""
from __future__ import annotations

import os
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import Iterable

import flows
import logdiff_core
import tasks
from logdiff_core.progress import progress_bar
from tasks.config import Config, Variant, from_run_dict
from tasks.paths import ray_results_dir, train_dir
from tasks.runtime import StepCallback
from tasks.storage import node_local, store_for

# What workers must see as the driver does: no usage reports, the same MLflow store, the store's credentials.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "RAY_USAGE_STATS_ENABLED", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")
# Resources every node has: what is left (custom resources, ``--resources='{"node2": 1}'``) tells nodes apart.
_COMMON_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def init_ray(dashboard: bool = False) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start a local one (with Ray's dashboard on 127.0.0.1:8265 if asked)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    # Ray relays worker output line by line: a progress line every 10 s per worker, not a flood; and each line once
    # (Ray Train would also copy every print of its workers into its own log stream)
    env.setdefault("TQDM_MININTERVAL", "10")
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if address:
        code = [str(Path(package.__file__).parent) for package in (logdiff_core, tasks, flows)]
        ray.init(address=address, log_to_driver=True,
                 runtime_env={"env_vars": env, "py_modules": code, "excludes": ["__pycache__"]})
    else:
        # "local", explicitly: a bare ray.init() would join a cluster that `ray start` left running on this machine
        context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                           runtime_env={"env_vars": env}, log_to_driver=True)
        if dashboard:
            print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def describe_node(node: dict) -> str:
    """A Ray node as the logs name it: its id's first 8 hex digits, ``head``, and its custom resources."""
    marks = ["head"] if "node:__internal_head__" in node["Resources"] else []
    marks += sorted(name for name in node["Resources"]
                    if name not in _COMMON_RESOURCES and not name.startswith(("node:", "accelerator_type:")))
    return f"{node['NodeID'][:8]}" + (f" ({', '.join(marks)})" if marks else "")


def this_node() -> str:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return describe_node(next(node for node in ray.nodes() if node["NodeID"] == node_id))


def find_node(wanted: str) -> dict:
    """The alive node ``wanted`` names: a custom resource it holds, ``head``, or the start of its id."""
    nodes = alive_nodes()
    for node in nodes:
        if (str(wanted) in node["Resources"] or node["NodeID"].startswith(str(wanted))
                or (wanted == "head" and "node:__internal_head__" in node["Resources"])):
            return node
    raise ValueError(f"cluster.placement: no alive Ray node is {wanted!r}; name a custom resource of a node, 'head', "
                     f"or a node id. Nodes: {'; '.join(describe_node(n) for n in nodes)}")


def placement(cfg: Config, variant: Variant):
    """Where ``cluster.placement`` asks ``variant`` to train (by its name, or its distribution): a soft node
    affinity, so that a retry runs elsewhere when that node is gone. None leaves it to Ray."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    wanted = cfg.cluster.placement.get(variant.name, cfg.cluster.placement.get(variant.distribution))
    if wanted is None:
        return None
    return NodeAffinitySchedulingStrategy(find_node(wanted)["NodeID"], soft=True)


def stop_ray() -> None:
    """Disconnect from Ray (a local Ray stops) if this process started it: the workers' last relayed lines come out
    now, not after the run's summary."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def gpus_per_task(cfg: Config) -> float:
    import ray

    return cfg.train.gpus_per_worker if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _train_one(cfg_dict: dict, variant: Variant, callback: StepCallback | None) -> dict:
    from flows.stages import run_stage

    node = _announce(variant, callback)
    with node_local(from_run_dict(cfg_dict)) as cfg:
        return {**run_stage(cfg, "train", variant, callback=callback), "ray_node": node}


def _announce(variant: Variant, callback: StepCallback | None, rank: int | None = None) -> str:
    """Say which node trains ``variant`` (log line, and a tag on its MLflow run); return the node's name."""
    node = this_node()
    who = variant.name if rank is None else f"{variant.name} rank {rank}"
    print(f"{who}: training on Ray node {node}", flush=True)
    if hasattr(callback, "set_tag"):
        callback.set_tag("ray_node" if rank is None else f"ray_node.rank{rank}", node)
    return node


def start_training(cfg: Config, variants: list[Variant], callbacks: dict[str, StepCallback | None],
                   dashboard: bool = False) -> dict[str, object]:
    """Start each model's training as its own Ray work, side by side; returns what ``wait_for`` takes, by variant
    name. With ``train.num_workers > 1`` each model is a Ray Train (DDP) run, started when waited for."""
    import ray

    init_ray(dashboard)
    if cfg.train.num_workers > 1:
        return {v.name: partial(train_ddp, cfg, v, callbacks.get(v.name)) for v in variants}
    # retried when its worker or node dies, never for an exception the training raised (a mistake stays one); a
    # fresh worker per model that exits when it is done: an idle worker kept ~1.6 GiB of a CIFAR-10 training
    remote = ray.remote(max_calls=1)(_train_one)
    options = dict(num_cpus=cfg.train.cpus_per_worker, num_gpus=gpus_per_task(cfg),
                   max_retries=cfg.cluster.max_retries, retry_exceptions=False)
    return {v.name: remote.options(**options, scheduling_strategy=placement(cfg, v) or "DEFAULT")
            .remote(cfg.to_dict(), v, callbacks.get(v.name)) for v in variants}


def wait_for(pending) -> dict:
    """The training record, or the exception that stopped the training (not Ray's wrapper around it)."""
    import ray

    try:
        return pending() if callable(pending) else ray.get(pending)
    except ray.exceptions.RayTaskError as err:
        raise (err.cause or err) from None


def cancel(pending: Iterable) -> None:
    """Stop trainings still going (their checkpoints stay, for a resume)."""
    import ray

    for work in pending:
        if isinstance(work, ray.ObjectRef):
            try:
                ray.cancel(work, force=True)
            except Exception:  # noqa: BLE001 - finished already, or Ray itself is going down: nothing to stop
                pass


def train_variants(cfg: Config, variants: list[Variant],
                   callbacks: dict[str, StepCallback | None]) -> dict[str, dict | BaseException]:
    """Train each model side by side and wait for all; results keyed by variant name. A model that fails (e.g.
    diverges) is reported as its exception and does not stop the others."""
    pending = start_training(cfg, variants, callbacks)
    results: dict[str, dict | BaseException] = {}
    try:
        for name, work in progress_bar(pending.items(), desc=f"training {len(pending)} models (Ray)"):
            try:
                results[name] = wait_for(work)
            except Exception as err:  # noqa: BLE001 - reported per model by the caller
                results[name] = err
    except BaseException:
        cancel(pending.values())
        raise
    return results


def _ddp_loop(config: dict) -> None:
    import ray.train

    from flows.stages import run_stage

    _announce(config["variant"], config["callback"], rank=ray.train.get_context().get_world_rank())
    with node_local(from_run_dict(config["cfg"])) as cfg:
        run_stage(cfg, "train", config["variant"], callback=config["callback"])


def train_ddp(cfg: Config, variant: Variant, callback: StepCallback | None = None) -> dict:
    """One model across ``train.num_workers`` Ray Train workers (DDP; gloo on CPU, NCCL on GPU). Started again
    (resuming from its checkpoint) when a worker or its node dies, up to ``cluster.max_retries`` times; an error
    raised by the training ends it at once."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tasks.io import read_json

    init_ray()
    use_gpu = gpus_per_task(cfg) > 0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": cfg.train.gpus_per_worker} if use_gpu else {})}
    store = store_for(cfg)
    for attempt in range(cfg.cluster.max_retries + 1):
        trainer = TorchTrainer(
            _ddp_loop,
            train_loop_config={"cfg": cfg.to_dict(), "variant": variant, "callback": callback},
            scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            # a unique name: Ray Train silently resumes a run whose name already exists under storage_path
            run_config=RunConfig(
                name=f"{variant.name}-{uuid.uuid4().hex[:8]}",
                storage_path=store.where(ray_results_dir(cfg)) if store else str(ray_results_dir(cfg).resolve()),
                storage_filesystem=store.fs if store else None),
        )
        result = trainer.fit()
        if result.error is None:
            break
        if attempt == cfg.cluster.max_retries or not _lost_worker(result.error):
            raise result.error
        print(f"{variant.name}: a DDP worker was lost ({type(result.error).__name__}); starting again from its "
              f"last checkpoint (retry {attempt + 1} of {cfg.cluster.max_retries})", flush=True)
    fetch_trained(cfg, variant)
    return read_json(train_dir(cfg, variant) / "record.json")


def fetch_trained(cfg: Config, variant: Variant) -> None:
    """A model's training outputs from the store into this machine's experiment folder, for evaluation, DVC and
    MLflow (nothing to do without a store: the training wrote them there)."""
    from flows.stages import STAGES

    if (store := store_for(cfg)) is not None:
        store.fetch(*STAGES["train"].output(cfg, variant))


def _lost_worker(error: BaseException) -> bool:
    """Whether a Ray Train failure came from a worker process or node that died (Ray's own preemption test: once
    one rank dies the others fail with collateral errors), not from an exception the training raised."""
    import ray.exceptions

    failures = getattr(error, "worker_failures", None) or {}
    return any(isinstance(failure, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                                    ray.exceptions.NodeDiedError)) for failure in failures.values())
