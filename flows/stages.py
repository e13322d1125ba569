"""The pipeline's one stage table: what each stage runs, how it fans out, what it reads and where its outputs go.

``logdiff stage`` (what DVC runs), the Prefect flow, MLflow tracking and the DVC pipeline itself all come from
``STAGES``, so they can never drift apart: ``pipeline_yaml`` writes ``dvc.yaml`` from it (the project's root
pipeline and every experiment's own). A stage runs once, once per data transform (``encode``, ``baselines``) or
once per model, a ``Variant`` of noise distribution, transform and seed (``train``, ``evaluate``).
The stage functions are imported when a stage runs, so reading the table (``logdiff --help``) stays instant.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tasks import paths
from tasks.config import LOCATIONS, Config, Variant

if TYPE_CHECKING:
    from tasks.runtime import StepCallback

Item = str | Variant | None  # the transform (per-transform stages), the variant (per-model stages) or nothing
FAN_OUTS = ("once", "transform", "variant")
# Keys that enumerate the models rather than configure one: a per-model stage depends on its own entry only (the
# value here, None for none), so that changing or adding one distribution, transform or seed leaves the others alone.
FAN_OUT_KEYS = {"diffusion.distributions": "${item.distribution}", "diffusion.transforms": None, "train.seeds": None}
# DVC's names for the item of a foreach (transform) and a matrix (variant) stage.
DVC_ITEMS: dict[str, Item] = {"once": None, "transform": "${item}",
                              "variant": Variant("${item.distribution}", "${item.transform}", "${item.seed}")}


@dataclass(frozen=True)
class Stage:
    name: str
    fan_out: str  # one of FAN_OUTS
    run: Callable[[Config, Item, StepCallback | None], dict]
    folder: Callable[[Config, Item], Path]  # what the stage writes (attached to its MLflow run; its DVC output)
    params: tuple[str, ...]  # the config sections or keys it reads: its MLflow params and its DVC params
    # the stages whose outputs it reads: its DVC dependencies, fetched from the object store where they are missing
    inputs: tuple[str, ...] = ()
    metrics: bool = True  # it writes its headline figures to metrics/ (paths.metrics_file)
    ignores: tuple[str, ...] = ()  # keys inside its sections that cannot change its output (left out of DVC params)

    def items(self, cfg: Config) -> list[Item]:
        return {"once": [None], "transform": list(cfg.diffusion.transforms), "variant": cfg.variants()}[self.fan_out]

    def dvc_name(self, item: Item = None) -> str:
        """The name ``dvc.yaml``'s foreach/matrix gives it: ``ingest``, ``encode@log``, ``train@laplace-identity``."""
        return {"once": self.name, "transform": f"{self.name}@{item}",
                "variant": f"{self.name}@{getattr(item, 'name', item)}"}[self.fan_out]

    def metrics_path(self, cfg: Config, item: Item = None) -> Path | None:
        return paths.metrics_file(cfg, self.name, getattr(item, "name", item)) if self.metrics else None

    def output(self, cfg: Config, item: Item = None) -> tuple[str, list[Path]]:
        """What one run of it writes, as a store unit: its DVC name, its folder and its metrics file."""
        return self.dvc_name(item), [self.folder(cfg, item), *filter(None, [self.metrics_path(cfg, item)])]

    def input_outputs(self, cfg: Config, item: Item = None) -> list[tuple[str, list[Path]]]:
        """The outputs of the upstream runs it reads (see ``upstream_item``)."""
        upstream = []
        for name in self.inputs:
            stage = STAGES[name]
            read = upstream_item(stage, self, item)
            upstream += [stage.output(cfg, each) for each in (stage.items(cfg) if read is ALL else [read])]
        return upstream


ALL = object()  # every run of an upstream stage


def upstream_item(upstream: Stage, stage: Stage, item: Item) -> Item | object:
    """Which run of ``upstream`` the run of ``stage`` on ``item`` reads: the only one, the one of the same transform
    or model, the transform's of a model, or ``ALL`` of them."""
    if upstream.fan_out == "once":
        return None
    if upstream.fan_out == stage.fan_out:
        return item
    if upstream.fan_out == "transform" and stage.fan_out == "variant":
        return item.transform
    return ALL

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

    return evaluate(cfg, variant, callback=callback)


def _report(cfg: Config, item: None, callback: StepCallback | None) -> dict:
    from tasks.report import write_report

    return write_report(cfg)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("ingest", "once", _ingest, lambda cfg, item: paths.data_dir(cfg), ("seed", "data"), metrics=False),
    Stage("autoencoder", "once", _autoencoder, lambda cfg, item: paths.autoencoder_dir(cfg), ("seed", "autoencoder"),
          inputs=("ingest",)),
    Stage("encode", "transform", _encode, paths.latents_dir, ("diffusion.log_floor",), inputs=("ingest", "autoencoder"),
          metrics=False),
    # the judge classifier behind the offline image metric (records why there is none for other data)
    Stage("classifier", "once", _classifier, lambda cfg, item: paths.classifier_dir(cfg), ("seed", "classifier"),
          inputs=("ingest",)),
    # floor, autoencoder ceiling, trivial generator and the optimal denoiser (copy), scored as every model is, and
    # the reference of the data-copying test; log_floor reaches it through the latents
    Stage("baselines", "transform", _baselines, paths.baselines_dir, ("seed", "eval", "sample", "diffusion"),
          inputs=("ingest", "classifier", "encode"), ignores=("diffusion.log_floor",)),
    # one model per noise distribution x data transform x seed (its training curve is scored by the judge, on the
    # data); log_floor reaches it through the latents
    Stage("train", "variant", _train, paths.train_dir, ("seed", "network", "diffusion", "train"),
          inputs=("ingest", "encode", "classifier"), ignores=("diffusion.log_floor",)),
    Stage("evaluate", "variant", _evaluate, paths.eval_dir, ("seed", "sample", "eval"),
          inputs=("ingest", "classifier", "encode", "baselines", "train")),
    # every evaluated model side by side: it describes the whole experiment, so it reads every setting
    Stage("report", "once", _report, lambda cfg, item: paths.report_dir(cfg),
          tuple(f.name for f in dataclasses.fields(Config) if f.name not in LOCATIONS),
          inputs=("baselines", "train", "evaluate")),
)}
REPORT_PLOTS = ("scores.png", "curves.png")  # pictures `dvc plots show` renders offline (no web scripts)


def run_stage(cfg: Config, stage: str, item: Item = None, callback: StepCallback | None = None) -> dict:
    """Run one stage; with an object store (``cluster.storage``), its inputs are fetched where the experiment
    folder lacks them and its outputs published when it succeeds (``tasks/storage.py``). Its record, with its wall
    time as ``stage_seconds.<stage>`` (a model's run holds its training and its evaluation), is also kept for the
    report."""
    from tasks.storage import staged
    from tasks.timings import timed

    with timed(cfg, STAGES[stage].dvc_name(item)) as timing, \
            staged(cfg, STAGES[stage].output(cfg, item), STAGES[stage].input_outputs(cfg, item)):
        record = STAGES[stage].run(cfg, item, callback)
    return {**record, "stage_seconds": {stage: timing["seconds"]}}


def stage_names(cfg: Config) -> list[str]:
    """Every DVC stage of this config, in pipeline order."""
    return [stage.dvc_name(item) for stage in STAGES.values() for item in stage.items(cfg)]


def _section_value(settings: dict, key: str):
    for part in key.split("."):
        settings = settings[part]
    return settings


def stage_params(cfg: Config, *stages: str) -> dict:
    """The config sections and keys the given stages read, nested as in the config: their run's MLflow params."""
    settings, selected = cfg.to_dict(), {}
    for key in sorted({key for stage in stages for key in STAGES[stage].params}):
        *sections, leaf = key.split(".")
        node = selected
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = _section_value(settings, key)
    return selected


def stage_pictures(cfg: Config, stage: str, item: Item = None) -> list[Path]:
    """Files worth attaching to the stage's MLflow run: pictures, samples, curves, the resolved config."""
    folder = STAGES[stage].folder(cfg, item)
    patterns = ("*.png", "*.csv", "*.md", "config.yaml", "manifest.json", "record.json", "report.json")
    return sorted(p for pattern in patterns for p in folder.glob(pattern))


# ``dvc.yaml`` from the table ---------------------------------------------------------------------------------------
ROOT_WORK = "artifacts/${name}"  # the root pipeline's experiment folder, as dvc.yaml spells it (from params.yaml)
# The one stage whose metrics file DVC shows (`dvc metrics show`, a column per model in `dvc exp show`); the other
# stages' files are outputs kept by git, shown on request (`dvc metrics show <file>`).
DVC_METRICS_STAGE = "report"


def _keys_of(section: str) -> list[str]:
    section_type = typing.get_type_hints(Config)[section]
    return [f"{section}.{f.name}" for f in dataclasses.fields(section_type)]


def dvc_params(stage: Stage) -> list[str]:
    """The stage's params as ``dvc.yaml`` lists them: a section whole, unless keys inside it cannot change the
    stage's output (the fan-out keys of a per-item stage, and its ``ignores``): then that section key by key."""
    left_out = set(stage.ignores) | (set(FAN_OUT_KEYS) if stage.fan_out != "once" else set())
    listed = []
    for key in stage.params:
        if not any(k.startswith(f"{key}.") for k in left_out):
            listed.append(key)
            continue
        for sub in _keys_of(key):
            own = FAN_OUT_KEYS.get(sub) if stage.fan_out == "variant" else None
            if own is not None:
                listed.append(f"{sub}.{own}")
            elif sub not in left_out:
                listed.append(sub)
    return listed


def _dependency(upstream: Stage, stage: Stage, cfg: Config, item: Item) -> str:
    """The folder of ``upstream``'s outputs that ``stage`` reads (for ``ALL`` runs, the folder holding them all)."""
    read = upstream_item(upstream, stage, item)
    if read is ALL:
        return str(upstream.folder(cfg, DVC_ITEMS[upstream.fan_out]).parent)
    return str(upstream.folder(cfg, read))


def _command(stage: Stage) -> str:
    options = {"once": "", "transform": " --transform ${item}",
               "variant": " --distribution ${item.distribution} --transform ${item.transform} --seed ${item.seed}"}
    return f"logdiff stage {stage.name}{options[stage.fan_out]}"


def pipeline_yaml(work: str) -> dict:
    """The DVC pipeline of an experiment whose folder is ``work`` relative to the pipeline's own folder: ``.`` for a
    preset's pipeline in its experiment folder, ``ROOT_WORK`` for the project's root pipeline.

    Every stage writes one folder (cached by DVC) and, where it has figures, a small JSON file under ``metrics/``
    (kept by git). Only the report's file is declared as DVC metrics: one column per model in ``dvc exp show``."""
    cfg = replace(Config(), workdir=work)
    stages = {}
    for stage in STAGES.values():
        item = DVC_ITEMS[stage.fan_out]
        body: dict = {"cmd": _command(stage)}
        if stage.inputs:
            body["deps"] = [_dependency(STAGES[name], stage, cfg, item) for name in stage.inputs]
        body["params"] = dvc_params(stage)
        body["outs"] = [str(stage.folder(cfg, item))]
        if stage.metrics:
            metrics = {str(stage.metrics_path(cfg, item)): {"cache": False}}
            if stage.name == DVC_METRICS_STAGE:
                body["metrics"] = [metrics]
            else:
                body["outs"].append(metrics)
        if stage.fan_out == "transform":
            body = {"foreach": "${diffusion.transforms}", "do": body}
        elif stage.fan_out == "variant":
            body = {"matrix": {"distribution": "${diffusion.distributions}", "transform": "${diffusion.transforms}",
                               "seed": "${train.seeds}"}, **body}
        stages[stage.name] = body
    return {"stages": stages, "plots": [str(paths.report_dir(cfg) / name) for name in REPORT_PLOTS]}
