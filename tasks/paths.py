"""Where every stage keeps its outputs, relative to the run's work folder (``cfg.work``): the one place that
spells the layout, so no stage imports another to find a file."""
from __future__ import annotations

from pathlib import Path

from .config import Config, Variant


def data_dir(cfg: Config) -> Path:
    """Ingested Parquet shards and ``manifest.json``."""
    return cfg.work / "data"


def autoencoder_dir(cfg: Config) -> Path:
    return cfg.work / "autoencoder"


def latents_dir(cfg: Config, transform: str) -> Path:
    """``train.npy``, ``val.npy``, ``codec.safetensors`` and ``manifest.json`` for one data transform."""
    return cfg.work / "latents" / transform


def train_dir(cfg: Config, variant: Variant) -> Path:
    return cfg.work / "train" / variant.name


MODEL_FILE = "model.safetensors"  # a trained model, in every stage folder that holds one


def eval_dir(cfg: Config, variant: Variant) -> Path:
    """Pictures and samples; the metrics sit beside it (DVC metrics cannot nest inside an output folder)."""
    return cfg.work / "eval" / variant.name


def eval_metrics_file(cfg: Config, variant: Variant) -> Path:
    return cfg.work / "eval" / f"{variant.name}.json"


def fid_reference_file(cfg: Config, content_hash: str, num_samples: int) -> Path:
    """Cached Inception statistics of ``num_samples`` reference images of one dataset version."""
    return cfg.work / "eval" / f"fid-reference-{content_hash[:16]}-{num_samples}.npz"


def report_dir(cfg: Config) -> Path:
    return cfg.work / "report"
