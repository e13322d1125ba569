"""Ray fan-out of the training stage: one Ray task per model (noise distribution x transform, sharing GPUs by
fraction), or Ray Train (TorchTrainer, DDP) across ``train.num_workers`` workers for one model.

``ray.init()`` starts a local Ray by default; ``RAY_ADDRESS`` joins an existing cluster. GPU requests are made
only when the cluster has GPUs: a task asking for a GPU on a CPU-only cluster would wait forever.
"""
from __future__ import annotations

import os
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import Iterable

from logdiff_core.progress import progress_bar
from tasks.config import Config, Variant, from_run_dict
from tasks.paths import train_dir
from tasks.runtime import StepCallback


def init_ray(dashboard: bool = False) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start a local one (with Ray's dashboard on 127.0.0.1:8265 if asked)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # workers must log nothing about usage, and find the same MLflow store as the driver
    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "RAY_USAGE_STATS_ENABLED") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # token authentication, as Ray 2.60 sets up for a local cluster anyway (a token made once, in
        # ~/.ray/auth_token): asked for explicitly, it comes without a warning on every run
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        context = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", runtime_env={"env_vars": env},
                           log_to_driver=True)
        if dashboard:
            print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


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

    return run_stage(from_run_dict(cfg_dict), "train", variant, callback=callback)


def start_training(cfg: Config, variants: list[Variant], callbacks: dict[str, StepCallback | None],
                   dashboard: bool = False) -> dict[str, object]:
    """Start each model's training as its own Ray work, side by side; returns what ``wait_for`` takes, by variant
    name. With ``train.num_workers > 1`` each model is a Ray Train (DDP) run, started when waited for."""
    import ray

    init_ray(dashboard)
    if cfg.train.num_workers > 1:
        return {v.name: partial(train_ddp, cfg, v, callbacks.get(v.name)) for v in variants}
    remote = ray.remote(_train_one).options(num_cpus=cfg.train.cpus_per_worker, num_gpus=gpus_per_task(cfg),
                                            max_retries=0)
    return {v.name: remote.remote(cfg.to_dict(), v, callbacks.get(v.name)) for v in variants}


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
    from flows.stages import run_stage

    run_stage(from_run_dict(config["cfg"]), "train", config["variant"], callback=config["callback"])


def train_ddp(cfg: Config, variant: Variant, callback: StepCallback | None = None) -> dict:
    """One model across ``train.num_workers`` Ray Train workers (DDP; gloo on CPU, NCCL on GPU)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tasks.io import read_json

    init_ray()
    use_gpu = gpus_per_task(cfg) > 0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": cfg.train.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _ddp_loop,
        train_loop_config={"cfg": cfg.to_dict(), "variant": variant, "callback": callback},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        # a unique name: Ray Train silently resumes a run whose name already exists under storage_path
        run_config=RunConfig(name=f"{variant.name}-{uuid.uuid4().hex[:8]}",
                             storage_path=str(Path(cfg.workdir).resolve() / "ray_results")),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return read_json(train_dir(cfg, variant) / "record.json")
