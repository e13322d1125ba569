"""Evaluation of one trained model: samples, standard FID/KID when the Inception weights can be had, the
weight-free distances that always work offline, image grids and trajectory plots, and the champion score.

Images are compared with the training split (FID's usual reference, statistics cached per dataset version);
array data with the held-out split, beside the real-vs-real floor: training rows vs the held-out split, with the
generated samples scored in chunks of the same size, so that both figures carry the same finite-sample bias.
"""
from __future__ import annotations

import numpy as np
import torch

from logdiff_core import samplers

from .config import Config, Variant, write_yaml
from .data import load_manifest, load_split
from .io import atomic_save_with, check_replaceable, stage_output, write_json
from .paths import data_dir, eval_dir, fid_reference_file, metrics_file, train_dir
from .sample import load_trained
from .scoring import array_metrics_with_floor, champion_metric, sample_metrics, subset
from .visuals import plot_histograms, plot_trajectories, save_image_grid


HEADLINE = {"image": ("fid", "kid", "swd_mean"),
            "array": ("frac_non_positive", "wasserstein", "log_wasserstein", "correlation_distance")}


def evaluate(cfg: Config, variant: Variant) -> dict:
    """Sample ``eval.num_samples`` from the trained model; write its folder (grids, plots, samples, the full
    ``record.json``) and its headline figures in ``metrics/evaluate/<name>.json``."""
    variant = cfg.variant(variant.distribution, variant.transform)
    check_replaceable(eval_dir(cfg, variant))
    model = load_trained(train_dir(cfg, variant))
    kind = model.codec.kind
    n = cfg.eval.num_samples
    generated, latents = model.generate(n, seed=cfg.seed, device=cfg.train.device, return_latents=True)
    data_manifest = load_manifest(data_dir(cfg))
    if kind == "image":
        reference = subset(load_split(data_dir(cfg), "train").values, n, cfg.seed)
        cache = fid_reference_file(cfg, data_manifest["content_hash"], len(reference))
        metrics = sample_metrics(cfg, kind, generated, reference, cache)
    else:
        held_out = load_split(data_dir(cfg), "val").values
        train = load_split(data_dir(cfg), "train").values
        metrics = array_metrics_with_floor(generated, held_out, train, cfg.seed)
    device = next(model.denoiser.parameters()).device  # where generate() put the model
    trajectory = samplers.sample(model.denoiser, model.schedule.to(device), model.noise,
                                 (8, *model.codec.latent_shape), sampler=cfg.sample.sampler, steps=cfg.sample.steps,
                                 eta=cfg.sample.eta, generator=torch.Generator(device).manual_seed(cfg.seed),
                                 device=device, return_trajectories=True)
    chosen = champion_metric(cfg, kind, metrics)
    record = {"distribution": variant.distribution, "transform": variant.transform, "kind": kind,
              "num_samples": n, "sampler": cfg.sample.sampler,
              "sampling_steps": cfg.sample.steps, **metrics, "champion_metric": chosen,
              "champion_score": float(metrics[chosen]), "latent_std": float(latents.std())}
    with stage_output(eval_dir(cfg, variant), "evaluate") as out:
        write_yaml(out / "config.yaml", cfg.model_settings(variant))
        if kind == "image":
            save_image_grid(generated[: cfg.eval.grid_size], out / "samples.png")
        else:
            names = data_manifest.get("feature_names") or [f"x{i}" for i in range(generated.shape[1])]
            plot_histograms({variant.label: generated}, held_out, names, out / "histograms.png")
            header = ",".join(names)
            atomic_save_with(out / "samples.csv", lambda tmp: np.savetxt(tmp, generated, delimiter=",",
                                                                            header=header, comments="", fmt="%.6g"))
        plot_trajectories(trajectory.trajectory, trajectory.denoised, trajectory.timesteps, out / "trajectories.png")
        write_json(out / "record.json", record)
    headline = {k: record[k] for k in (*HEADLINE[kind], "champion_score") if isinstance(record.get(k), float)}
    write_json(metrics_file(cfg, "evaluate", variant.name), headline)
    return record
