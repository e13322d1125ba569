"""Where everything of one experiment lives, relative to its folder (``cfg.work``, by default
``artifacts/<name>``): the one place that spells the layout, so no stage imports another to find a file.

Each stage writes one output folder (swapped in whole, see ``io.stage_output``) and, where it has figures worth
comparing across experiments, a few numbers in ``metrics/`` (small JSON files that git and ``dvc exp`` keep).
``.logdiff/`` holds what is not an output: resume checkpoints, logs and caches (git-ignored).
"""
from __future__ import annotations

from pathlib import Path

from .config import Config, Variant

MODEL_FILE = "model.safetensors"  # a trained model, in every stage folder that holds one
PARAMS_FILE = "params.yaml"  # an experiment's resolved config, beside its dvc.yaml (the root's, or its folder's)
STATE = ".logdiff"  # in the project and in each experiment: what is not an output (lock, checkpoints, logs, caches)


def data_dir(cfg: Config) -> Path:
    """Ingested Parquet shards and ``manifest.json``."""
    return cfg.work / "data"


def autoencoder_dir(cfg: Config) -> Path:
    return cfg.work / "autoencoder"


def latents_dir(cfg: Config, transform: str) -> Path:
    """``train.npy``, ``val.npy``, ``codec.safetensors`` and ``manifest.json`` for one data transform."""
    return cfg.work / "latents" / transform


def classifier_dir(cfg: Config) -> Path:
    """The judge classifier (when the data allows one) and its ``record.json``, which says why not otherwise."""
    return cfg.work / "classifier"


def baselines_dir(cfg: Config, transform: str) -> Path:
    """Floor, ceiling and trivial generator of one transform, scored as every model is."""
    return cfg.work / "baselines" / transform


def train_dir(cfg: Config, variant: Variant) -> Path:
    return cfg.work / "train" / variant.name


def eval_dir(cfg: Config, variant: Variant) -> Path:
    return cfg.work / "eval" / variant.name


def report_dir(cfg: Config) -> Path:
    return cfg.work / "report"


def metrics_file(cfg: Config, stage: str, item: str | None = None) -> Path:
    """A stage's few headline numbers: ``metrics/<stage>.json``, or ``metrics/<stage>/<item>.json`` per item."""
    return cfg.work / "metrics" / (f"{stage}.json" if item is None else f"{stage}/{item}.json")


def state_dir(cfg: Config) -> Path:
    """Not outputs: resume checkpoints, logs, caches. Never tracked by DVC or git."""
    return cfg.work / STATE


def timings_dir(cfg: Config) -> Path:
    """The wall time of each stage's last run, and the current run's start (``tasks/timings.py``)."""
    return state_dir(cfg) / "timings"


def checkpoint_file(cfg: Config, name: str) -> Path:
    """Where a training stage (``autoencoder``, or a variant's name) keeps its resume state."""
    return state_dir(cfg) / "checkpoints" / f"{name}.pt"


def frontier_dir(cfg: Config) -> Path:
    """``logdiff frontier``'s measurements of the trained models (not a pipeline stage: an opt-in command)."""
    return cfg.work / "frontier"


def fid_reference_file(cfg: Config, content_hash: str, num_samples: int, split: str = "train") -> Path:
    """Cached Inception features of ``num_samples`` reference images (of the training split, or ``val``) of one
    dataset version."""
    which = "" if split == "train" else f"{split}-"
    return state_dir(cfg) / "cache" / f"fid-reference-{content_hash[:16]}-{which}{num_samples}.npz"


def published_manifest(cfg: Config, unit: str) -> Path:
    """What a stage run (``unit``, DVC's name: ``train@laplace-identity-0``) last published to the experiment's store
    (``tasks/storage.py``): its files' sizes and sha256. In the store, written after the files, so readers know the
    unit is whole; here, what the folder last received or sent."""
    return state_dir(cfg) / "published" / f"{unit}.json"


def ray_results_dir(cfg: Config) -> Path:
    """Ray Train's run state of multi-worker (DDP) trainings (the same path in the store when there is one)."""
    return cfg.work / "ray_results"
