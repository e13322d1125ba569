"""Evaluation of one trained model: samples drawn with the current ``sample`` settings, scored exactly as the
baselines are (same metric, sample size and reference, with intervals), and read against them: does the model beat
the trivial generator, and how far above the real-vs-real floor is it, as a multiple of the autoencoder ceiling's
distance? Grids, trajectory plots and samples beside.

Images are scored against the held-out split as well (``held_out_<metric>``, read against the baselines'
held-out figures; the report ranks on them), and every model gets the data-copying test and its empirical score
deviation from the optimal denoiser (``tasks.copying``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import copying
from .codec import load_latents
from .config import Config, Variant, write_yaml
from .data import column_names, load_manifest, load_split, table_rows
from .io import atomic_save_with, check_replaceable, read_json, stage_output, write_json
from .paths import baselines_dir, data_dir, eval_dir, metrics_file, train_dir
from .runtime import StepCallback
from .sample import load_trained
from .scoring import BASELINES, CEILING_RATIO_KEYS, HELD_OUT, build_scorer
from .visuals import plot_histograms, plot_trajectories, save_image_grid

TRAJECTORIES = 8  # samples whose trajectories are drawn


def read_against_baselines(scores: dict, baselines: dict, metric: str) -> dict:
    """How a model's ``metric`` reads against the baselines (lower is better):

    - ``beats_trivial``: the model's interval lies wholly below the trivial generator's (with no intervals, its
      value does); None without a trivial baseline.
    - ``ceiling_ratio``: (model - floor) / (ceiling - floor): 1 is as good as the autoencoder's reconstructions,
      below 1 better, 2 twice as far from the floor; None without a ceiling above the floor. With the model's
      interval, ``ceiling_ratio_low`` and ``_high`` carry it over (the model's sampling noise only: the floor's and
      the ceiling's own uncertainty is shared by every model).
    """
    value, high = scores[metric], scores.get(f"{metric}_high", scores[metric])
    trivial = baselines.get("trivial")
    beats = None if trivial is None else bool(high < trivial.get(f"{metric}_low", trivial[metric]))
    floor, ceiling = baselines["floor"][metric], (baselines.get("ceiling") or {}).get(metric)
    reading = {"beats_trivial": beats, "ceiling_ratio": None}
    if ceiling is not None and ceiling > floor:
        ends = (value, scores.get(f"{metric}_low"), scores.get(f"{metric}_high"))
        reading |= {key: (score - floor) / (ceiling - floor) for key, score in zip(CEILING_RATIO_KEYS, ends)
                    if score is not None}
    return reading


def evaluate(cfg: Config, variant: Variant, callback: StepCallback | None = None) -> dict:
    """Sample ``eval.num_samples`` from the trained model; write its folder (grids, plots, samples, the full
    ``record.json``) and its headline figures in ``metrics/evaluate/<name>.json``. ``callback(t, figures)``
    receives the score deviation at each timestep of the first sampling pass (an MLflow curve)."""
    variant = cfg.variant(variant.distribution, variant.transform, variant.seed)
    check_replaceable(eval_dir(cfg, variant))
    model = load_trained(train_dir(cfg, variant))
    options = dataclasses.asdict(cfg.sample)
    generated = model.sample(cfg.eval.num_samples, seed=variant.seed, device=cfg.train.device,
                             trajectories=copying.DEVIATION_TRAJECTORIES, **options)
    scorer = build_scorer(cfg)
    scores = scorer.score(generated.data)
    baselines = read_json(baselines_dir(cfg, variant.transform) / "record.json")
    if baselines["champion_metric"] != scorer.champion or baselines["metric_sample_size"] != scorer.size:
        raise ValueError(f"the baselines of {variant.transform} were scored on {baselines['champion_metric']} at "
                         f"{baselines['metric_sample_size']} samples, this model on {scorer.champion} at "
                         f"{scorer.size}; rerun the baselines stage (logdiff run, or dvc repro)")
    champion = scorer.champion
    record = {"distribution": variant.distribution, "transform": variant.transform, "seed": variant.seed,
              "kind": scorer.kind, "num_samples": cfg.eval.num_samples, **options,
              "evaluations_per_sample": generated.evaluations, **scorer.describe(),
              **scores, "champion_score": scores[champion],
              **read_against_baselines(scores, baselines, champion),
              "baselines": {name: baselines[name] for name in BASELINES if baselines.get(name)},
              "latent_std": float(generated.latents.std())}
    if scorer.kind == "image":
        held_out = {f"{HELD_OUT}{key}": value for key, value in build_scorer(cfg, against="val").score(
            generated.data).items() if key != "sets"}
        reading = read_against_baselines(held_out, baselines, f"{HELD_OUT}{champion}")
        record |= held_out | {f"{HELD_OUT}{key}": value for key, value in reading.items()}
        record["ranked_by"] = f"{HELD_OUT}{champion}"
    traj = generated.trajectories
    train_std = float(load_latents(cfg, variant.transform, "train").std())
    record["deviation"] = copying.score_deviation(cfg, variant.transform, model, traj, train_std)
    if callback is not None and "curve" in record["deviation"]:
        found = record["deviation"]
        for t, value in list(zip(found["timesteps"], found["curve"]))[:found["first_pass"]]:
            callback(t, {"score_deviation": value})
    with stage_output(eval_dir(cfg, variant), "evaluate") as out:
        reference = baselines_dir(cfg, variant.transform) / copying.REFERENCE_FILE
        record["copying"] = copying.copying_figures(cfg, variant.transform, reference, generated.data, out,
                                                    variant.seed)
        if "curve" in record["deviation"]:
            copying.plot_deviation({variant.label: record["deviation"]}, out / "deviation.png")
        write_yaml(out / "config.yaml", cfg.model_settings(variant) | {"sample": options})
        if scorer.kind == "image":
            save_image_grid(generated.data[: cfg.eval.grid_size], out / "samples.png")
        else:
            names = column_names(load_manifest(data_dir(cfg)), cfg.diffusion.labels)
            held_out = table_rows(load_split(data_dir(cfg), "val"), cfg.diffusion.labels)
            plot_histograms({variant.label: generated.data}, held_out, names, out / "histograms.png")
            atomic_save_with(out / "samples.csv", lambda tmp: np.savetxt(
                tmp, generated.data, delimiter=",", header=",".join(names), comments="", fmt="%.6g"))
        plot_trajectories([x[:TRAJECTORIES] for x in traj.trajectory], [x[:TRAJECTORIES] for x in traj.denoised],
                          traj.timesteps, out / "trajectories.png", model.schedule.alpha_bars64)
        write_json(out / "record.json", record)
    write_json(metrics_file(cfg, "evaluate", variant.name), headline(record, scorer.metrics))
    return record


def headline(record: dict, metrics: list[str]) -> dict:
    """A model's few numbers worth comparing across experiments: every metric, the champion's interval, and how
    it reads against the baselines (no names, devices or fingerprints)."""
    champion = record["champion_metric"]
    figures = {m: record[m] for m in metrics} | {f"{champion}_{end}": record[f"{champion}_{end}"]
                                                 for end in ("low", "high") if f"{champion}_{end}" in record}
    figures |= {key: record[key] for key in CEILING_RATIO_KEYS if record.get(key) is not None}
    if record["beats_trivial"] is not None:
        figures["beats_trivial"] = int(record["beats_trivial"])
    if "ranked_by" in record:
        figures[record["ranked_by"]] = record[record["ranked_by"]]
    figures |= {f"c_t_{space}": found["c_t"] for space, found in record.get("copying", {}).items()}
    return figures
