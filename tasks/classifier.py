"""Judge stage: a small classifier trained once per data version on the training split's labels, so that image
samples can be scored offline in features that see what a person sees (``fd_classifier``, precision, recall,
class entropy). Its held-out accuracy is recorded and shown beside every figure made with it.

Data without class labels (arrays, a folder with one class) gets no judge; the stage records why, and the
scorer says which metric it used instead.
"""
from __future__ import annotations

import numpy as np
import torch

from logdiff_core.classifier import Judge, accuracy, predict, train_judge
from logdiff_core.intervals import wilson_interval
from logdiff_core.networks import count_parameters

from .config import Config, write_yaml
from .data import Dataset, load_split
from .io import save_safetensors, stage_output, write_json
from .paths import MODEL_FILE, classifier_dir, data_dir, metrics_file
from .runtime import bf16_enabled, resolve_device


def why_no_judge(cfg: Config, train: Dataset) -> str | None:
    """Why this data gets no judge classifier, or None when it does."""
    if train.kind != "image":
        return "array data: scored by per-feature distances to the held-out split, not by an image classifier"
    if cfg.classifier.kind == "none":
        return "classifier.kind is none"
    if train.labels is None or len(np.unique(train.labels)) < 2:
        return "the images have fewer than two classes, so a classifier has nothing to learn"
    return None


def train_classifier(cfg: Config) -> dict:
    """Train the judge (or record why there is none); write its folder and ``metrics/classifier.json``."""
    train, held_out = (load_split(data_dir(cfg), split) for split in ("train", "val"))
    reason = why_no_judge(cfg, train)
    if reason is not None:
        record = {"available": False, "reason": reason}
        with stage_output(classifier_dir(cfg), "classifier") as out:
            write_json(out / "record.json", record)
        write_json(metrics_file(cfg, "classifier"), {})
        return record
    settings = cfg.classifier
    num_classes = int(train.labels.max()) + 1
    torch.manual_seed(cfg.seed)
    model = Judge(train.values.shape[1], num_classes, train.values.shape[-1], settings.base_channels)
    device = resolve_device(cfg.train.device)
    run = train_judge(model, train.values, train.labels, steps=settings.steps, batch_size=settings.batch_size,
                      lr=settings.lr, generator=torch.Generator().manual_seed(cfg.seed), device=device,
                      bf16=bf16_enabled(device, settings.bf16))
    held_out_accuracy = accuracy(predict(model, held_out.values, device=device)[1], held_out.labels)
    # 95% Wilson interval: how sure the figure is from this many held-out images (inside [0, 1], unlike +- 2 SE)
    low, high = wilson_interval(round(held_out_accuracy * len(held_out.values)), len(held_out.values))
    record = {"available": True, "accuracy": held_out_accuracy, "accuracy_low": low, "accuracy_high": high,
              "held_out": len(held_out.values),
              "classes": num_classes, "feature_dim": model.feature_dim, "parameters": count_parameters(model),
              "steps": settings.steps, "final_loss": run["final_loss"], "device": str(device)}
    with stage_output(classifier_dir(cfg), "classifier") as out:
        write_yaml(out / "config.yaml", cfg.settings("seed", "data", "classifier"))
        save_safetensors(out / MODEL_FILE, model.state_dict(),
                         {"init": model.init_args, "class_names": train.manifest.get("class_names")})
        write_json(out / "record.json", record)
    write_json(metrics_file(cfg, "classifier"), {"accuracy": held_out_accuracy, "accuracy_low": low,
                                                 "accuracy_high": high, "seconds": run["seconds"]})
    return {**record, "seconds": run["seconds"]}
