"""The pipeline's one stage table: what each stage runs, how it fans out, where its outputs go and which config
sections it reads.

``logdiff stage`` (what ``dvc.yaml`` runs), the Prefect flow and MLflow tracking all read ``STAGES``, so they can
never drift apart; a test checks the table against ``dvc.yaml``. A stage runs once, once per data transform
(``encode``) or once per model, a ``Variant`` of noise distribution and transform (``train``, ``evaluate``).
The stage functions are imported when a stage runs, so reading the table (``logdiff --help``) stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tasks import paths
from tasks.config import Config, Variant

if TYPE_CHECKING:
    from tasks.runtime import StepCallback

Item = str | Variant | None  # the transform (per-transform stages), the variant (per-model stages) or nothing
FAN_OUTS = ("once", "transform", "variant")


@dataclass(frozen=True)
class Stage:
    name: str
    fan_out: str  # one of FAN_OUTS
    run: Callable[[Config, Item, StepCallback | None], dict]
    folder: Callable[[Config, Item], Path]  # what the stage writes, attached to its MLflow run
    params: tuple[str, ...]  # the config sections it reads: its MLflow params, and in dvc.yaml its params

    def items(self, cfg: Config) -> list[Item]:
        return {"once": [None], "transform": list(cfg.diffusion.transforms), "variant": cfg.variants()}[self.fan_out]

    def dvc_name(self, item: Item = None) -> str:
        """The name ``dvc.yaml``'s foreach/matrix gives it: ``ingest``, ``encode@log``, ``train@laplace-identity``."""
        return {"once": self.name, "transform": f"{self.name}@{item}",
                "variant": f"{self.name}@{getattr(item, 'name', item)}"}[self.fan_out]


def _ingest(cfg: Config, item: None, callback: StepCallback | None) -> dict:
    from tasks.ingest import ingest

    return ingest(cfg)


def _autoencoder(cfg: Config, item: None, callback: StepCallback | None) -> dict:
    from tasks.autoencoder import train_autoencoder

    return train_autoencoder(cfg, callback=callback)


def _encode(cfg: Config, transform: str, callback: StepCallback | None) -> dict:
    from tasks.encode import encode_latents

    return encode_latents(cfg, transform)


def _classifier(cfg: Config, item: None, callback: StepCallback | None) -> dict:
    from tasks.classifier import train_classifier

    return train_classifier(cfg)


def _baselines(cfg: Config, transform: str, callback: StepCallback | None) -> dict:
    from tasks.baselines import compute_baselines

    return compute_baselines(cfg, transform)


def _train(cfg: Config, variant: Variant, callback: StepCallback | None) -> dict:
    from tasks.scoring import curve_evaluator
    from tasks.train import train_diffusion

    evaluator = curve_evaluator(cfg, variant) if cfg.train.eval_every else None
    return train_diffusion(cfg, variant, callback=callback, evaluator=evaluator)


def _evaluate(cfg: Config, variant: Variant, callback: StepCallback | None) -> dict:
    from tasks.evaluate import evaluate

    return evaluate(cfg, variant)


def _report(cfg: Config, item: None, callback: StepCallback | None) -> dict:
    from tasks.report import write_report

    return write_report(cfg)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("ingest", "once", _ingest, lambda cfg, item: paths.data_dir(cfg), ("seed", "data")),
    Stage("autoencoder", "once", _autoencoder, lambda cfg, item: paths.autoencoder_dir(cfg), ("seed", "autoencoder")),
    Stage("encode", "transform", _encode, paths.latents_dir, ("diffusion",)),
    Stage("classifier", "once", _classifier, lambda cfg, item: paths.classifier_dir(cfg), ("seed", "classifier")),
    Stage("baselines", "transform", _baselines, paths.baselines_dir, ("seed", "eval")),
    Stage("train", "variant", _train, paths.train_dir, ("seed", "network", "diffusion", "train")),
    Stage("evaluate", "variant", _evaluate, paths.eval_dir, ("seed", "sample", "eval")),
    Stage("report", "once", _report, lambda cfg, item: paths.report_dir(cfg), ("train",)),
)}


def run_stage(cfg: Config, stage: str, item: Item = None, callback: StepCallback | None = None) -> dict:
    """Run one stage; its record, with its wall time as ``stage_seconds.<stage>`` (a model's run holds its training
    and its evaluation), also kept for the report."""
    from tasks.timings import timed

    with timed(cfg, STAGES[stage].dvc_name(item)) as timing:
        record = STAGES[stage].run(cfg, item, callback)
    return {**record, "stage_seconds": {stage: timing["seconds"]}}


def stage_names(cfg: Config) -> list[str]:
    """Every DVC stage of this config, in pipeline order."""
    return [stage.dvc_name(item) for stage in STAGES.values() for item in stage.items(cfg)]


def stage_params(cfg: Config, *stages: str) -> dict:
    """The config sections the given stages read, logged as their run's params."""
    sections = {section for stage in stages for section in STAGES[stage].params}
    return {k: v for k, v in cfg.to_dict().items() if k in sections}


def stage_pictures(cfg: Config, stage: str, item: Item = None) -> list[Path]:
    """Files worth attaching to the stage's MLflow run: pictures, samples, curves, the resolved config."""
    folder = STAGES[stage].folder(cfg, item)
    patterns = ("*.png", "*.csv", "*.md", "config.yaml", "manifest.json", "record.json", "report.json")
    return sorted(p for pattern in patterns for p in folder.glob(pattern))
