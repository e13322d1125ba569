"""Baselines stage: the figures every model is read against, scored exactly as the models are (same metric, same
sample size, same reference, with intervals), once per data transform.

- floor: real data against the reference (held-out images against the training split; for arrays, training rows
  against the held-out split): the best any generator can expect at this sample size.
- ceiling: the autoencoder's reconstructions of that real data: the best a latent model can do, since its samples
  are decoded by the same autoencoder (no autoencoder: none).
- trivial: a Gaussian fitted to the training latents (for arrays, to the transformed data), sampled and decoded:
  a model that does not beat it has learnt nothing the data's mean and covariance do not already say.
- copy: the optimal denoiser of the training latents, sampled as a model is (``tasks.copying``): what a model
  that fitted its training objective exactly, and so only returns its training data, scores.

Images are also scored against the held-out split (keys ``held_out_<metric>``), where the floor is as many
training images and the ceiling their reconstructions: against the training split a model that copies would beat
the floor. The stage also writes the copying reference every model's data-copying test uses (``copying.npz``),
and each generated baseline's copying figures.
"""
from __future__ import annotations

import numpy as np
import torch

from . import copying
from .codec import load_codec, load_latents
from .config import Config
from .data import load_split, table_rows
from .io import atomic_save_with, stage_output, write_json
from .paths import baselines_dir, data_dir, metrics_file
from .scoring import BASELINES, HELD_OUT, build_scorer, subset
from .visuals import save_image_grid


def trivial_samples(cfg: Config, transform: str, n: int) -> np.ndarray:
    """``n`` draws of a Gaussian with the training latents' mean and full covariance, decoded into data."""
    latents = load_latents(cfg, transform, "train")
    flat = latents.reshape(len(latents), -1).double().numpy()
    draws = np.random.default_rng(cfg.seed).multivariate_normal(flat.mean(axis=0), np.cov(flat, rowvar=False),
                                                                size=n, method="eigh")
    return load_codec(cfg, transform).decode(torch.from_numpy(draws).float().reshape(n, *latents.shape[1:]))


def compute_baselines(cfg: Config, transform: str) -> dict:
    """Score floor, ceiling and trivial generator; write the folder (``record.json``, pictures or samples) and
    ``metrics/baselines/<transform>.json``."""
    scorer = build_scorer(cfg)
    codec = load_codec(cfg, transform)
    real_split = "val" if scorer.kind == "image" else "train"  # the split that is not the reference
    real = subset(table_rows(load_split(data_dir(cfg), real_split), cfg.diffusion.labels), scorer.size, cfg.seed)
    trivial = trivial_samples(cfg, transform, cfg.eval.num_samples)
    scores = {"floor": scorer.score(real), "trivial": scorer.score(trivial)}
    reconstructed = None
    if codec.autoencoder is not None:
        reconstructed = codec.decode(codec.encode(real))
        scores["ceiling"] = scorer.score(reconstructed)
    copies = copying.copy_samples(cfg, transform, scorer.size, cfg.seed)
    scores["copy"] = scorer.score(copies)
    if scorer.kind == "image":
        add_held_out_scores(cfg, codec, scores, {"trivial": trivial, "copy": copies}, reconstructed is not None)
    record = {"transform": transform, **scorer.describe(), **scores,
              "ceiling_note": None if reconstructed is not None else "no autoencoder: samples need no decoding, so "
                                                                     "the ceiling is the floor"}
    with stage_output(baselines_dir(cfg, transform), "baselines") as out:
        record["copying_reference"] = copying.write_reference(cfg, transform, out / copying.REFERENCE_FILE)
        generated = {"trivial": trivial, "copy": copies, "ceiling": reconstructed}
        record["copying"] = {name: copying.copying_figures(cfg, transform, out / copying.REFERENCE_FILE, values,
                                                           out, cfg.seed, prefix=f"{name}_")
                             for name, values in generated.items() if values is not None}
        if scorer.kind == "image":
            save_image_grid(trivial[: cfg.eval.grid_size], out / "trivial.png")
            save_image_grid(copies[: cfg.eval.grid_size], out / "copy.png")
            if reconstructed is not None:
                save_image_grid(reconstructed[: cfg.eval.grid_size], out / "ceiling.png")
        else:
            atomic_save_with(out / "trivial.csv", lambda tmp: np.savetxt(tmp, trivial, delimiter=",", fmt="%.6g"))
        write_json(out / "record.json", record)
    write_json(metrics_file(cfg, "baselines", transform),
               {f"{name}_{scorer.champion}": scores[name][scorer.champion] for name in BASELINES if name in scores})
    return record


def add_held_out_scores(cfg: Config, codec, scores: dict, generated: dict[str, np.ndarray],
                        with_ceiling: bool) -> None:
    """Every baseline scored against the held-out split as well, into its scores as ``held_out_<metric>``: the
    floor is as many training images (real data the reference has not seen), the ceiling their reconstructions,
    the generated baselines the same samples."""
    held_out = build_scorer(cfg, against="val")
    real = subset(load_split(data_dir(cfg), "train").values, held_out.size, cfg.seed)
    sets = {"floor": real, **generated}
    if with_ceiling:
        sets["ceiling"] = codec.decode(codec.encode(real))
    for name, values in sets.items():
        scores[name] |= {f"{HELD_OUT}{key}": value for key, value in held_out.score(values).items() if key != "sets"}
