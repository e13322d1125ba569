"""One table of the pipeline's stages: the function each runs, its DVC stage name and the files it shows.

``logdiff stage`` (what ``dvc.yaml`` runs) and the Prefect flow both go through ``run_stage``, so the two can
never drift apart. Stages run once (ingest, autoencoder, report), once per transform (encode) or once per model,
a ``Variant`` of noise distribution and transform (train, evaluate).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tasks import autoencoder, encode, evaluate, ingest, report, train
from tasks.config import Config, Variant

PER_TRANSFORM = ("encode",)
PER_VARIANT = ("train", "evaluate")
Item = str | Variant | None  # the transform (per-transform stages) or the variant (per-model stages)


def dvc_stage_name(stage: str, item: Item = None) -> str:
    """The name ``dvc.yaml``'s foreach/matrix gives a stage: ``encode@log``, ``train@laplace-identity``."""
    if stage in PER_VARIANT:
        return f"{stage}@{item.name}"
    if stage in PER_TRANSFORM:
        return f"{stage}@{item}"
    return stage


def run_stage(cfg: Config, stage: str, item: Item = None, callback: Callable[[int, dict], None] | None = None) -> dict:
    if stage == "ingest":
        return ingest.ingest(cfg)
    if stage == "autoencoder":
        return autoencoder.train_autoencoder(cfg, callback=callback)
    if stage == "encode":
        return encode.encode_latents(cfg, item)
    if stage == "train":
        evaluator = evaluate.curve_evaluator(cfg, item) if cfg.train.eval_every else None
        return train.train_diffusion(cfg, item, callback=callback, evaluator=evaluator)
    if stage == "evaluate":
        return evaluate.evaluate(cfg, item)
    if stage == "report":
        return report.write_report(cfg)
    raise ValueError(f"unknown stage {stage!r}")


def stage_pictures(cfg: Config, stage: str, item: Item = None) -> list[Path]:
    """Files worth attaching to the stage's MLflow run: pictures, samples, curves, the resolved config."""
    folder = {"ingest": lambda: cfg.work / "data", "autoencoder": lambda: autoencoder.stage_dir(cfg),
              "encode": lambda: encode.stage_dir(cfg, item), "train": lambda: train.stage_dir(cfg, item),
              "evaluate": lambda: evaluate.stage_dir(cfg, item), "report": lambda: report.stage_dir(cfg)}[stage]()
    patterns = ("*.png", "*.csv", "*.md", "config.yaml", "manifest.json", "record.json", "report.json")
    return sorted(p for pattern in patterns for p in folder.glob(pattern))
