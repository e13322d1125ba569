"""One table of the pipeline's stages: the function each runs, its DVC stage name and the files it shows.

``logdiff stage`` (what ``dvc.yaml`` runs) and the Prefect flow both go through ``run_stage``, so the two can
never drift apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tasks import autoencoder, encode, evaluate, ingest, train
from tasks.config import Config

PER_DISTRIBUTION = ("train", "evaluate")


def dvc_stage_name(stage: str, distribution: str | None = None) -> str:
    """The name ``dvc.yaml``'s foreach gives a stage: ``train@laplace``."""
    return f"{stage}@{distribution}" if stage in PER_DISTRIBUTION else stage


def run_stage(cfg: Config, stage: str, distribution: str | None = None,
              callback: Callable[[int, dict], None] | None = None) -> dict:
    if stage == "ingest":
        return ingest.ingest(cfg)
    if stage == "autoencoder":
        return autoencoder.train_autoencoder(cfg, callback=callback)
    if stage == "encode":
        return encode.encode_latents(cfg)
    if stage == "train":
        evaluator = evaluate.curve_evaluator(cfg, distribution) if cfg.train.eval_every else None
        return train.train_diffusion(cfg, distribution, callback=callback, evaluator=evaluator)
    if stage == "evaluate":
        return evaluate.evaluate(cfg, distribution)
    raise ValueError(f"unknown stage {stage!r}")


def stage_pictures(cfg: Config, stage: str, distribution: str | None = None) -> list[Path]:
    """Files worth attaching to the stage's MLflow run: pictures, samples, curves, the resolved config."""
    folder = {"ingest": cfg.work / "data", "autoencoder": autoencoder.stage_dir(cfg),
              "encode": encode.stage_dir(cfg)}.get(stage)
    if stage == "train":
        folder = train.stage_dir(cfg, distribution)
    if stage == "evaluate":
        folder = evaluate.stage_dir(cfg, distribution)
    patterns = ("*.png", "*.csv", "config.yaml", "manifest.json", "record.json")
    return sorted(p for pattern in patterns for p in folder.glob(pattern))
