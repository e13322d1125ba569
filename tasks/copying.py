"""Generalisation or copying: the pieces the baselines, evaluate and report stages share to tell a model that
generalises from one that returns its training data.

- **Feature spaces** (``feature_spaces``): the judge classifier's features for every labelled image dataset;
  where they are small (at most ``SMALL_SPACE`` numbers: the demo's 8x8 digits and their 48 latent numbers, not
  CIFAR-10's 3,072 pixels or 1,024 latent numbers) the pixels, and the autoencoder's latents (the encoder applied
  to every image alike: training, held-out and generated), where the diffusion model itself works; the
  standardised features for arrays.
- **The copying reference** (``write_reference``, in the baselines stage; ``load_reference`` after): the training
  and held-out rows in each space, k-means cells of the training rows, the held-out rows' distances to their
  nearest training row, each training row's distance to its ``NEIGHBOURS``-th neighbour and the data's intrinsic
  dimension. Computed once per data version, so a model's test costs only its own samples' search.
- **A set's copying figures** (``copying_figures``): C_T with its reading, the near-copy shares against the
  held-out quantiles, the point-by-point copying rate (``logdiff_core.copying``), and the pictures: samples beside
  their nearest training images, closest first, and nearest-neighbour distance histograms against held-out.
- **The optimal denoiser** (``optimal_denoiser``, ``copy_samples``, ``score_deviation``): the posterior-mean
  denoiser of the training latents (``logdiff_core.optimal``), sampled as a model is (the "copy" reference row),
  and each trained model's empirical score deviation from it along its own sampling trajectories.

Budget (stated in the report): at most ``COPYING_SAMPLES`` samples per copying test; the optimal denoiser averages
over as many training latents as keep one task (a model's deviation curve, the copy row's sampling) within
``OPTIMAL_BUDGET`` kernel evaluations (rows x points x latent numbers, summed over calls; ~18 ns each on one core
for a non-Gaussian kernel, 10x less for the Gaussian's matrix product), a fixed subsample beyond. The demo's 1,348
latents fit whole; CIFAR-10's 16x16x4 latents get ~3,000 points for a deviation curve, ~1,000 for the copy row
(bench/optimal_cost.py measures the cost per call against the number of points).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from logdiff_core import copying
from logdiff_core import noise as noise_lib
from logdiff_core.optimal import OptimalDenoiser, deviation_curve, parting_step
from logdiff_core.schedules import Schedule

from .codec import load_codec, load_latents
from .config import Config
from .data import load_split, table_rows
from .io import atomic_save_with
from .paths import data_dir
from .runtime import resolve_device
from .sample import TrainedModel, schedule_from
from .visuals import save_figure, save_image_grid

SMALL_SPACE = 1000  # numbers per image up to which copying is also tested in pixels and in latents
COPYING_SAMPLES = 4000  # generated samples per copying test; a fixed subsample beyond
OPTIMAL_BUDGET = 2e9  # kernel evaluations per optimal-denoiser task (~1 CPU-minute); x10 for the Gaussian kernel
DEVIATION_TRAJECTORIES = 64  # sampling trajectories along which a model's score deviation is measured
PARTING_THRESHOLD = 0.15  # score deviation (latent stds) beyond which a model has parted from the optimal denoiser
COPY_NOISE = "gaussian"  # the optimal denoiser's samples: all noises end on training points; one row suffices
HELD_OUT_PER_CELL = 100  # held-out rows per k-means cell of C_T (at most MAX_CELLS cells)
MAX_CELLS = 50
NEIGHBOURS = 5  # the region scale of the copying rate: each training row's 5th nearest other training row
SHOWN = 16  # samples beside their nearest training images
REFERENCE_FILE = "copying.npz"


def feature_spaces(cfg: Config, kind: str, shape: tuple[int, ...],
                   transform: str = "identity") -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The spaces copying is tested in, each a map from data (uint8 images or arrays) to feature rows."""
    if kind == "array":
        train = table_rows(load_split(data_dir(cfg), "train"), cfg.diffusion.labels).astype(np.float64)
        mean, std = train.mean(axis=0), train.std(axis=0)
        return {"features": lambda values: (np.asarray(values, np.float64) - mean) / np.where(std > 0, std, 1)}
    from logdiff_core.classifier import predict

    from .scoring import load_judge

    spaces: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    judge, _ = load_judge(cfg)
    if judge is not None:
        device = resolve_device(cfg.train.device)
        spaces["judge"] = lambda images: predict(judge, images, device=device)[0]
    if math.prod(shape) <= SMALL_SPACE:
        spaces["pixels"] = lambda images: images.reshape(len(images), -1).astype(np.float64) / 255
    codec = load_codec(cfg, transform)
    if codec.autoencoder is not None and math.prod(codec.latent_shape) <= SMALL_SPACE:
        spaces["latents"] = lambda images: codec.encode(images).flatten(1).double().numpy()
    return spaces


def write_reference(cfg: Config, transform: str, path: Path) -> dict:
    """Embed the training and held-out splits in every feature space and store what each test needs (see the
    module's docstring); returns a summary for the baselines record."""
    train, held_out = load_split(data_dir(cfg), "train"), load_split(data_dir(cfg), "val")
    arrays, summary = {}, {}
    cells = int(np.clip(len(held_out.values) // HELD_OUT_PER_CELL, 1, MAX_CELLS))
    for space, embed in feature_spaces(cfg, train.kind, train.values.shape[1:], transform).items():
        train_rows, held_out_rows = (embed(table_rows(split, cfg.diffusion.labels) if split.kind == "array"
                                           else split.values) for split in (train, held_out))
        dimension = copying.intrinsic_dimension(train_rows, seed=cfg.seed)
        scales = copying.region_scales(train_rows, NEIGHBOURS)
        arrays |= {f"{space}.train": train_rows, f"{space}.held_out": held_out_rows,
                   f"{space}.centroids": copying.kmeans_cells(train_rows, cells, cfg.seed),
                   f"{space}.held_out_nn": copying.nearest(held_out_rows, train_rows)[0][:, 0],
                   f"{space}.scales": scales, f"{space}.dimension": np.array(dimension)}
        summary[space] = {"intrinsic_dimension": dimension, "dims": int(train_rows.shape[1]), "cells": cells,
                          # real data's own near-twins: the copying rate a generator that generalises scores
                          "held_out_copying_rate": copying.copying_rate(train_rows, held_out_rows, dimension,
                                                                        neighbours=NEIGHBOURS,
                                                                        scales=scales)["copying_rate"]}
    save_npz(path, arrays)
    return summary


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.savez would append ".npz" to the temp name
            np.savez(fh, **arrays)

    return atomic_save_with(path, save)


def load_reference(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with np.load(path) as stored:
        reference: dict[str, dict[str, np.ndarray]] = {}
        for key in stored.files:
            space, name = key.split(".", 1)
            reference.setdefault(space, {})[name] = stored[key]
    return reference


def copying_figures(cfg: Config, transform: str, reference_path: Path, samples: np.ndarray, out: Path, seed: int,
                    prefix: str = "") -> dict:
    """The copying test of one set of samples (data units) in every space of the reference: a record
    ``{space: {c_t, reading, near_copy_5, near_copy_1, median_nn_ratio, copying_rate, ...}}``; writes
    ``nearest.npz`` (each tested sample's nearest-neighbour distance per space, for the report's histograms) and
    ``nearest.png`` (samples above their nearest training images, closest first) into ``out``, names after
    ``prefix``."""
    reference = load_reference(reference_path)
    tested = samples[np.sort(np.random.default_rng(seed).choice(len(samples), COPYING_SAMPLES, replace=False))] \
        if len(samples) > COPYING_SAMPLES else samples
    kind = "array" if samples.ndim == 2 else "image"
    spaces = feature_spaces(cfg, kind, samples.shape[1:], transform)
    record, distances, nearest_of = {}, {}, {}
    for space, embed in spaces.items():
        ref = reference[space]
        rows = embed(tested)
        nn_distance, nn_index = copying.nearest(rows, ref["train"])
        distances[space], nearest_of[space] = nn_distance[:, 0], nn_index[:, 0]
        record[space] = {
            **copying.data_copying_statistic(ref["train"], ref["held_out"], rows, ref["centroids"]),
            **copying.near_copy_shares(distances[space], ref["held_out_nn"]),
            **copying.copying_rate(ref["train"], rows, float(ref["dimension"]), neighbours=NEIGHBOURS,
                                   scales=ref["scales"])}
        record[space].pop("cell_weight")
    save_npz(out / f"{prefix}nearest.npz", {f"{space}.distance": found for space, found in distances.items()})
    if kind == "image" and spaces:
        shown = next(iter(s for s in ("pixels", "judge") if s in spaces))
        train_images = load_split(data_dir(cfg), "train").values
        save_nearest_pairs(tested, train_images, distances[shown], nearest_of[shown],
                           out / f"{prefix}nearest.png")
    return record


def save_nearest_pairs(samples: np.ndarray, train_images: np.ndarray, distance: np.ndarray, index: np.ndarray,
                       path: Path) -> Path:
    """The ``SHOWN`` samples nearest the training set (top row, closest first) above their nearest training
    images (bottom row)."""
    order = np.argsort(distance, kind="stable")[:SHOWN]
    return save_image_grid(np.concatenate([samples[order], train_images[index[order]]]), path, nrow=len(order))


def plot_nn_histograms(sets: dict[str, dict[str, np.ndarray]], reference: dict[str, dict[str, np.ndarray]],
                       path: Path) -> Path:
    """Per feature space, the distances to the nearest training row: held-out data (filled) and each set (label
    -> {space: distances}) as a line. A set left of held-out sits nearer the training data than real data does."""
    import matplotlib.pyplot as plt

    spaces = [space for space in reference if any(space in d for d in sets.values())]
    fig, axes = plt.subplots(1, len(spaces), figsize=(5 * len(spaces), 3.4), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        held_out = reference[space]["held_out_nn"]
        values = np.concatenate([held_out, *(d[space] for d in sets.values() if space in d)])
        bins = np.linspace(0, np.quantile(values, 0.995), 40)
        ax.hist(held_out, bins=bins, density=True, color="0.8", label="held-out (real)")
        for label, found in sets.items():
            if space in found:
                ax.hist(found[space], bins=bins, density=True, histtype="step", linewidth=1.4, label=label)
        ax.set(xlabel=f"distance to the nearest training row ({space})", ylabel="density")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def optimal_denoiser(cfg: Config, transform: str, noise: noise_lib.NoiseDistribution, rows_times_calls: int,
                     schedule: Schedule | None = None) -> OptimalDenoiser:
    """The optimal denoiser of the training latents under ``schedule`` (default: the configured one) and
    ``noise``, over as many latents (a fixed subsample) as ``rows_times_calls`` denoised rows allow within
    ``OPTIMAL_BUDGET``."""
    latents = load_latents(cfg, transform, "train")
    budget = OPTIMAL_BUDGET * (10 if noise.name == "gaussian" else 1)
    points = max(1, int(budget // (rows_times_calls * latents[0].numel())))
    if len(latents) > points:
        latents = latents[np.sort(np.random.default_rng(cfg.seed).choice(len(latents), points, replace=False))]
    return OptimalDenoiser(latents, schedule if schedule is not None else schedule_from(cfg.to_dict()), noise)


def copy_samples(cfg: Config, transform: str, n: int, seed: int) -> np.ndarray:
    """``n`` samples of the optimal denoiser (``COPY_NOISE`` noise), drawn with the preset's sampler and decoded
    as a model's are: what a model that fitted its training objective exactly would generate."""
    options = cfg.sample
    evaluations = 2 * (options.steps + options.restarts * options.restart_steps)  # at most, second-order samplers
    denoiser = optimal_denoiser(cfg, transform, noise_lib.get(COPY_NOISE), n * evaluations)
    model = TrainedModel(denoiser, schedule_from(cfg.to_dict()), denoiser.noise, load_codec(cfg, transform),
                         COPY_NOISE, cfg.to_dict())
    return model.generate(n, seed=seed, device="cpu", progress=False)


def score_deviation(cfg: Config, transform: str, model: TrainedModel, trajectories, scale: float) -> dict:
    """A trained model's empirical score deviation along its sampling trajectories (``samplers.SampleResult``
    with trajectories): per step, the RMS distance between its clean-data estimate and the optimal denoiser's
    (same noise, same schedule) at the same point, in units of ``scale`` (the training latents' std). For a noise
    without a density: only ``unavailable``, saying why."""
    if not model.noise.has_density:
        return {"unavailable": f"{model.noise.name} noise has no closed-form density, so no optimal denoiser"}
    rows = len(trajectories.trajectory[0])
    optimal = optimal_denoiser(cfg, transform, model.noise, rows * len(trajectories.timesteps), model.schedule)
    curve = deviation_curve(trajectories.trajectory, trajectories.denoised, trajectories.timesteps, optimal, scale)
    steps, timesteps = len(trajectories.timesteps), list(trajectories.timesteps)
    first_pass = next((i for i in range(1, steps) if timesteps[i] > timesteps[i - 1]),
                      steps)  # restarts begin where the timesteps go up again
    parted = parting_step(curve[:first_pass], PARTING_THRESHOLD)
    closest = min(range(first_pass), key=curve.__getitem__)
    held_out = load_latents(cfg, transform, "val")[:COPYING_SAMPLES].flatten(1)
    held_out_nn = copying.nearest(held_out.numpy(), optimal.points.numpy())[0][:, 0]
    return {"curve": curve, "timesteps": timesteps, "first_pass": first_pass,
            "parting_t": None if parted is None else int(timesteps[parted]),
            "closest": curve[closest], "closest_t": int(timesteps[closest]), "final": curve[first_pass - 1],
            # where a model that generalises like real data ends: held-out latents' distance to the nearest point
            "held_out_final": float(np.sqrt(np.mean(held_out_nn**2) / held_out.shape[1])) / scale,
            "unreachable": optimal.unreachable / max(1, steps * len(trajectories.trajectory[0])),
            "points": len(optimal.points), "threshold": PARTING_THRESHOLD}


def plot_deviation(curves: dict[str, dict], path: Path) -> Path:
    """Each model's score deviation against the timestep of its first sampling pass (noise on the left, data on
    the right), the parting threshold dotted."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, found in curves.items():
        if "curve" not in found:
            continue
        end = found["first_pass"]
        ax.plot(found["timesteps"][:end], found["curve"][:end], marker=".", label=label)
    ax.axhline(PARTING_THRESHOLD, color="0.5", linestyle=":", label=f"parting threshold {PARTING_THRESHOLD}")
    ends = {found["held_out_final"] for found in curves.values() if "held_out_final" in found}
    for i, end in enumerate(sorted(ends)):
        ax.axhline(end, color="0.3", linestyle="--", label=None if i else "held-out data's distance at t = 0")
    ax.invert_xaxis()
    ax.set(xlabel="timestep t (sampling runs from T on the left to 0)", yscale="log",
           ylabel="RMS |x0_hat - D*(x_t)| (latent stds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ---- the report's section: what the models' records and the baselines say about copying


def copies(found: dict, held_out_rate: float, trivial_rate: float = 0.0) -> bool:
    """Whether one feature space's figures say copying: C_T below -3 (Meehan et al.'s reading), or a copying rate
    above 5% and twice both references': the held-out split's (real data has near-twins: 2-3% of the demo's held-out
    digits) and the trivial generator's. A Gaussian fitted to the latents cannot copy, so what it reaches is what
    samples crowded into few places read as without copying (a mode-collapsed CIFAR-10 model reached 68% where the
    trivial generator reached 62% and the near-copy shares were 0%)."""
    return found["reading"] == "copies" or found["copying_rate"] > max(0.05, 2 * held_out_rate, 2 * trivial_rate)


def copying_verdict(records: dict, baselines: dict[str, dict]) -> list[str]:
    """Verdict sentences: the models whose samples copy (``copies`` in any feature space) and those that underfit
    (C_T above +3), named."""
    copiers, underfits = [], []
    for variant, record in records.items():
        found = record.get("copying", {})
        baseline = baselines.get(variant.transform, {})
        reference, trivial = baseline.get("copying_reference", {}), baseline.get("copying", {}).get("trivial", {})
        if any(copies(f, reference.get(space, {}).get("held_out_copying_rate", 0.0),
                      trivial.get(space, {}).get("copying_rate", 0.0)) for space, f in found.items()):
            copiers.append(f"{variant.label} (seed {variant.seed}: " + ", ".join(
                f"C_T {f['c_t']:.1f}, copying rate {f['copying_rate']:.1%} in {space}" for space, f in found.items())
                + ")")
        elif any(f["reading"] == "underfits" for f in found.values()):
            underfits.append(variant.label)
    lines = []
    if copiers:
        lines.append("**Copies its training data** (nearer the training set than held-out data is; see "
                     "'Generalisation or copying'): " + "; ".join(copiers) + ".")
    elif records and all(r.get("copying") for r in records.values()):
        lines.append("No model copies its training data (C_T above -3, and a copying rate at most 5% or twice the "
                     "held-out split's or the trivial generator's, in every feature space).")
    if underfits:
        lines.append("Farther from the training set than held-out data (C_T above +3, underfitting): "
                     + ", ".join(underfits) + ".")
    return lines


def copying_rewarded(models: dict[str, tuple[Path, dict]], baselines: dict[str, dict]) -> list[str]:
    """A sentence when pure copying (the copy row) scores better against the held-out split than every model:
    then the metric rewards copying on this data, and no model can stop copying and score better."""
    ranked_by = {record.get("ranked_by") for _, record in models.values()}
    copy = next((b["copy"] for b in baselines.values() if b.get("copy")), None)
    if len(ranked_by) != 1 or None in ranked_by or copy is None or next(iter(ranked_by)) not in copy:
        return []
    metric = next(iter(ranked_by))
    best = min(record[metric] for _, record in models.values())
    if copy[metric] > best:
        return []
    return ["", f"Pure copying (*copy*) scores {metric} {copy[metric]:.3g} against the held-out split, better than "
                f"every model (best {best:.3g}): on this data the distance to held-out images rewards returning "
                "training images, so a model that stopped copying would, by this metric, look worse. Read the "
                "ranking together with this section."]


def copying_pictures(cfg: Config, models: dict[str, tuple[Path, dict]], baselines: dict[str, dict],
                     out: Path) -> list[str]:
    """The section's pictures in ``out``: nearest-neighbour histograms (every model and the copy row against
    held-out), samples beside their nearest training images, the score deviation curves. Returns their names."""
    from .paths import baselines_dir

    transform = next(iter(baselines))
    folder = baselines_dir(cfg, transform)
    if not (folder / REFERENCE_FILE).exists():
        return []
    reference = load_reference(folder / REFERENCE_FILE)
    sets = {label: _distances(where / "nearest.npz") for label, (where, _) in models.items()
            if (where / "nearest.npz").exists()}
    if (folder / "copy_nearest.npz").exists():
        sets["copy (optimal denoiser)"] = _distances(folder / "copy_nearest.npz")
    pictures = [plot_nn_histograms(sets, reference, out / "nn_histograms.png").name]
    pairs = {label: where / "nearest.png" for label, (where, _) in models.items() if (where / "nearest.png").exists()}
    if (folder / "copy_nearest.png").exists():
        pairs["copy (optimal denoiser)"] = folder / "copy_nearest.png"
    if pairs:
        pictures.append(plot_pair_strips(pairs, out / "nearest.png").name)
    curves = {label: record["deviation"] for label, (_, record) in models.items() if "curve" in record.get(
        "deviation", {})}
    if curves:
        pictures.append(plot_deviation(curves, out / "deviation.png").name)
    return pictures


def plot_pair_strips(strips: dict[str, Path], path: Path) -> Path:
    """The ``nearest.png`` strips (samples above their nearest training images) of several sets, one under the
    other, each labelled."""
    import matplotlib.pyplot as plt
    from PIL import Image

    pictures = {label: Image.open(strip) for label, strip in strips.items()}
    width = max(p.width for p in pictures.values())
    heights = [p.height / width * 12 + 0.35 for p in pictures.values()]
    fig, axes = plt.subplots(len(pictures), 1, figsize=(12, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (label, picture) in zip(axes[:, 0], pictures.items()):
        ax.imshow(picture, cmap="gray" if picture.mode == "L" else None)
        ax.set_title(f"{label}: samples (top) nearest the training set, closest first, and their nearest training "
                     "images (bottom)", fontsize=9, loc="left")
        ax.axis("off")
    return save_figure(fig, path)


def _distances(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {key.split(".", 1)[0]: stored[key] for key in stored.files}


def copying_section(models: dict[str, tuple[Path, dict]], baselines: dict[str, dict], pictures: list[str]) -> list[str]:
    """Markdown lines of the report's 'Generalisation or copying' section: per model and feature space the
    copying figures, the copy/ceiling/trivial rows for scale, the score deviation, and the pictures."""
    if not any(record.get("copying") for _, record in models.values()):
        return []
    rows = [(label, record["copying"]) for label, (_, record) in models.items()]
    for transform, record in baselines.items():
        rows += [(f"*{name}* ({transform})" if len(baselines) > 1 else f"*{name}*", found)
                 for name, found in record.get("copying", {}).items()]
    out = ["## Generalisation or copying", "",
           "Does a model make new data, or return its training data? Each sample's distance to its nearest "
           "training image is compared with the held-out images' distances (data none of the models saw). "
           "**C_T** (Meehan et al. 2020): the Mann-Whitney z of the samples' against the held-out distances within "
           "k-means cells of the training set, averaged over cells: below -3 the samples sit nearer the training "
           "set than real data does (*copies*), above +3 farther (*underfits*). **near-copy 5% / 1%**: the share "
           "of samples nearer a training image than 95% / 99% of held-out images are (5% and 1% for data as new as "
           "real data). **copying rate** (point by point, after Bhattacharjee et al. 2023): the share of samples in "
           "a region around a training image where the model puts at least 20 times the data's probability (C_T "
           "averages over cells, so copying in one place can hide behind underfitting in another; this cannot). "
           f"At most {COPYING_SAMPLES} samples per model are tested. The baselines in italics give the scale: "
           "*copy* (the optimal denoiser's samples) is what copying reads as, *ceiling* (reconstructions of "
           "held-out images) what the autoencoder alone does to the test, *trivial* what underfitting reads as.",
           "", "| set | space | C_T | reading | near-copy 5% | near-copy 1% | median NN / held-out | copying rate |",
           "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for label, found in rows:
        for space, f in found.items():
            out.append(f"| {label} | {space} | {f['c_t']:.2f} | {f['reading']} | {f['near_copy_5']:.1%} | "
                       f"{f['near_copy_1']:.1%} | {f['median_nn_ratio']:.2f} | {f['copying_rate']:.1%} |")
    for transform, record in baselines.items():
        for space, f in record.get("copying_reference", {}).items():
            out.append(f"| *held-out (real data)*{f' ({transform})' if len(baselines) > 1 else ''} | {space} | "
                       f"— | the reference | 5% | 1% | 1 | {f['held_out_copying_rate']:.1%} |")
    out += copying_rewarded(models, baselines)
    deviations = [(label, record["deviation"]) for label, (_, record) in models.items() if record.get("deviation")]
    if deviations:
        out += ["", "**Departure from the optimal denoiser** (the empirical score deviation): along each model's "
                "own sampling trajectories, the RMS distance per latent number (in latent standard deviations) "
                "between its clean-data estimate and that of the optimal denoiser of its training latents, which "
                "can only return training data. Near 0 the model denoises as the copier does; it generalises only "
                "where it departs. Near pure noise both estimate little more than the data mean (what deviation "
                "there is, is the model's error in that); the model then tracks the copier (*closest*) until it "
                f"*parts* (the first timestep after that above {PARTING_THRESHOLD}). *At t = 0*: the deviation at the "
                "last step, about the samples' distance to the nearest training latent; held-out data's own "
                "distance is what a model that generalises like real data ends at, a copier ends at 0.", "",
                "| model | closest (at t) | parts at t | at t = 0 | held-out data's | optimal denoiser's points | "
                "x_t reaching no point |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, found in deviations:
            if "curve" not in found:
                out.append(f"| {label} | {found['unavailable']} | | | | | |")
                continue
            parted = f"never within {PARTING_THRESHOLD}" if found["parting_t"] is None else str(found["parting_t"])
            out.append(f"| {label} | {found['closest']:.3f} ({found['closest_t']}) | {parted} | {found['final']:.3f} "
                       f"| {found['held_out_final']:.3f} | {found['points']} | {found['unreachable']:.1%} |")
    out += ["", *(f"![{Path(p).stem}]({p})" for p in pictures)]
    return out
