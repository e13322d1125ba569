"""Pictures people would rather look at than read: image grids, curves, histograms (atomic PNG writes)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: stages run in workers and CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .io import atomic_save_with  # noqa: E402


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, upscale: int | None = None) -> Path:
    """uint8 [N, C, H, W] -> one PNG grid (white 1-pixel gaps); small images are upscaled (nearest) to be seen.

    Laid out with numpy rather than torchvision's ``make_grid``: importing torchvision costs a stage's process
    about two CPU-seconds."""
    images = np.asarray(images, dtype=np.uint8)
    count, channels, height, width = images.shape
    columns = min(count, nrow or max(1, int(np.ceil(np.sqrt(count)))))
    rows = int(np.ceil(count / columns))
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = 1 + (index // columns) * (height + 1), 1 + (index % columns) * (width + 1)
        grid[top:top + height, left:left + width] = image.transpose(1, 2, 0)
    upscale = upscale or max(1, 128 // width)
    picture = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    return atomic_save_with(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_figure(fig, path: str | Path) -> Path:
    try:
        return atomic_save_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _deviation_from_chord(points: list[torch.Tensor]) -> list[float]:
    """Each point's mean L2 distance from the straight line through the first and the last point, as a fraction
    of the mean distance between those two (0 at both ends; a straight trajectory is 0 throughout)."""
    start, end = points[0].flatten(1).double(), points[-1].flatten(1).double()
    chord = end - start
    length = chord.norm(dim=1, keepdim=True).clamp_min(1e-12)
    direction = chord / length
    out = []
    for x in points:
        offset = x.flatten(1).double() - start
        off_line = offset - (offset * direction).sum(1, keepdim=True) * direction
        out.append(float(off_line.norm(dim=1).mean() / length.mean()))
    return out


def plot_trajectories(trajectory: list[torch.Tensor], denoised: list[torch.Tensor], timesteps: list[int],
                      path: str | Path, alpha_bars: torch.Tensor) -> Path:
    """Left: distance of the sampling (x_t) and denoising (x0_hat) trajectories to the final sample, per step.
    Right: each pass's deviation from a straight line per step (Chen et al.):
    the sampling trajectory in EDM's coordinates ``x / sqrt(abar)``, where the probability-flow ODE's path is
    nearly straight, and the denoising trajectory, each from the chord between its first and last point."""
    final = trajectory[-1]
    dist = lambda xs: [float((x - final).flatten(1).norm(dim=1).mean()) for x in xs]  # noqa: E731
    steps = list(range(len(denoised)))
    restarts = [i for i in range(1, len(timesteps)) if timesteps[i] > timesteps[i - 1]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.plot(steps, dist(trajectory[:-1]), label="sampling trajectory x_t")
    left.plot(steps, dist(denoised), label="denoising trajectory x0_hat")
    left.set(ylabel="mean L2 distance to final sample")
    bounds = [0, *restarts, len(timesteps)]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        # a pass: x at its timesteps, then its clean output (the last step's x0_hat)
        scaled = [trajectory[i] / float(alpha_bars[timesteps[i]]) ** 0.5 for i in range(a, b)] + [denoised[b - 1]]
        right.plot(range(a, b + 1), _deviation_from_chord(scaled), color="C0",
                   label="sampling trajectory x_t / sqrt(abar)" if k == 0 else None)
        right.plot(range(a, b), _deviation_from_chord(denoised[a:b]), color="C1",
                   label="denoising trajectory x0_hat" if k == 0 else None)
    right.set(ylabel="deviation from a straight line / its length")
    for ax in (left, right):
        for i in restarts:  # the samples noised afresh to timesteps[i] (sample.restarts)
            ax.axvline(i, color="0.6", linestyle=":", label=f"restart from t = {timesteps[i]}" if i == restarts[0] else None)
        ax.set(xlabel=f"step (t from {timesteps[0]} to {timesteps[-1]})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_histograms(generated: dict[str, np.ndarray], reference: np.ndarray, names: list[str], path: str | Path,
                    max_features: int = 6) -> Path:
    """Per-feature histograms of each generated set (label -> [N, F]) against the held-out split, for the
    ``max_features`` most skewed features (where a log transform matters most), on a log x-axis when everything
    shown is positive."""
    features, skew = _most_skewed(reference, max_features)
    fig, axes = plt.subplots(1, len(features), figsize=(3 * len(features), 2.8), squeeze=False)
    for i, ax in zip(features, axes[0]):
        ref = reference[:, i]
        sets = {label: values[:, i][np.isfinite(values[:, i])] for label, values in generated.items()}
        values = np.concatenate([ref, *sets.values()])
        positive = bool((values > 0).all())
        bins = np.geomspace(values.min(), values.max(), 30) if positive else np.linspace(values.min(), values.max(), 30)
        ax.hist(ref, bins=bins, density=True, color="0.75", label="held-out")
        for label, gen in sets.items():
            ax.hist(gen, bins=bins, density=True, histtype="step", linewidth=1.5, label=label)
        if positive:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(labelsize=7)
        ax.set_title(f"{names[i] if i < len(names) else f'feature {i}'} (skew {skew[i]:.1f})", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


def _most_skewed(reference: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``count`` most skewed columns of ``reference`` (by |skewness|, in column order) and every
    column's |skewness|."""
    centred = reference - reference.mean(axis=0)
    skew = np.abs((centred ** 3).mean(axis=0) / np.maximum(centred.std(axis=0), 1e-12) ** 3)
    return np.sort(np.argsort(-skew, kind="stable")[:count]), skew


def plot_tails(generated: dict[str, np.ndarray], real: dict[str, np.ndarray], names: list[str], path: str | Path,
               max_features: int = 4) -> Path:
    """The upper tail of the ``max_features`` most skewed features (of the first real set): the survival function
    P(X >= x) of every set on log-log axes, the real ones in black and grey. A straight line is a power law; a
    model whose tail bends down before the data's misses its largest values."""
    reference = next(iter(real.values()))
    features, skew = _most_skewed(reference, max_features)
    real_styles = [{"color": "black", "linewidth": 2}, {"color": "0.55", "linewidth": 1.5, "linestyle": "--"}]
    fig, axes = plt.subplots(1, len(features), figsize=(3.4 * len(features), 3.0), squeeze=False)
    for i, ax in zip(features, axes[0]):
        styled = [(label, values, style) for (label, values), style in zip(real.items(), real_styles)]
        styled += [(label, values, {"linewidth": 1.2}) for label, values in generated.items()]
        for label, values, style in styled:
            column = np.sort(values[:, i][np.isfinite(values[:, i]) & (values[:, i] > 0)])
            survival = 1 - np.arange(len(column)) / len(column)  # P(X >= x) at each sorted value
            ax.step(column, survival, where="post", label=label, **style)
        ax.set(xscale="log", yscale="log", xlabel="x")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{names[i] if i < len(names) else f'feature {i}'} (skew {skew[i]:.1f})", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("P(X >= x)")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_ranking(groups, baselines: dict[str, dict], metric: str, path: str | Path) -> Path:
    """Each model (noise distribution x transform) ranked by ``metric``, best on top: its seeds as dots, the mean
    with an error bar (the spread across seeds, or with one seed the model's interval), and the baselines as
    vertical lines (lower is better)."""
    ranked = sorted(groups, key=lambda g: g.mean)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(ranked) + 1.6))
    for row, group in enumerate(ranked):
        if group.spread is not None:
            low = high = group.spread
        else:
            low, high = (group.mean - group.interval[0], group.interval[1] - group.mean) if group.interval else (0, 0)
        ax.errorbar(group.mean, row, xerr=[[low], [high]], fmt="o", color="C0", capsize=4)
        ax.scatter(group.scores, [row] * len(group.scores), color="C0", alpha=0.35, s=14)
    styles = {"floor": ("black", "--"), "ceiling": ("C2", ":"), "trivial": ("C3", "-.")}
    drawn = set()
    for transform, record in baselines.items():
        for name, (colour, style) in styles.items():
            if record.get(name) and (name, record[name][metric]) not in drawn:
                drawn.add((name, record[name][metric]))
                label = name if len(baselines) == 1 or name == "floor" else f"{name} ({transform})"
                ax.axvline(record[name][metric], color=colour, linestyle=style, label=label)
    ax.set_yticks(range(len(ranked)), [g.label for g in ranked])
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} (lower is better)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_grids_side_by_side(grids: dict[str, Path], path: str | Path, columns: int = 5) -> Path:
    """Sample-grid PNGs (label -> file) in one figure, titled by label, so models can be compared at a glance."""
    rows = -(-len(grids) // columns)
    fig, axes = plt.subplots(rows, min(columns, len(grids)), figsize=(3 * min(columns, len(grids)), 3.2 * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, grid) in zip(axes.flat, grids.items()):
        picture = Image.open(grid)
        ax.imshow(picture, cmap="gray" if picture.mode == "L" else None)
        ax.set_title(label, fontsize=9)
    return save_figure(fig, path)


def plot_training_curves(histories: dict[str, list[dict]], curves: dict[str, list[dict]], path: str | Path) -> Path:
    """Training loss per step (left) and the metric-curve points (right) of each model (label -> rows of
    ``history.csv`` / ``curve.csv``), overlaid: a picture, so it needs no plotting library in the browser."""
    metric = next((k for rows in curves.values() for row in rows for k in row if k != "step"), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 6, 4), squeeze=False)
    for label, rows in histories.items():
        axes[0][0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    axes[0][0].set(xlabel="step", ylabel="training loss (window mean)", yscale="log")
    if metric:
        for label, rows in curves.items():
            points = [r for r in rows if isinstance(r.get(metric), (int, float))]
            axes[0][1].plot([r["step"] for r in points], [r[metric] for r in points], marker="o", label=label)
        axes[0][1].set(xlabel="step", ylabel=f"{metric} (lower is better)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_frontier(result: dict, path: str | Path) -> Path:
    """The NFE-quality frontier (``tasks.frontier``): one row of panels per model, one panel per time schedule, the
    metric against network evaluations with one line per sampler and its intervals as error bars; the references
    as horizontal lines (their intervals shaded), the floor and ceiling as in the ranking plot. The y range ends
    at twice the last reference's score (or above the other reference): a point above it is drawn at the top as
    a triangle."""
    metric = result["metric"]
    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    schedules = list(dict.fromkeys(r["time_schedule"] for r in rows if r["reference"] is None))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows if r["reference"] is None))
    fig, axes = plt.subplots(len(models), len(schedules), figsize=(4.2 * len(schedules), 3.2 * len(models)),
                             squeeze=False, sharex=True, sharey="row")
    reference_styles = [("0.25", "--"), ("C7", ":")]
    for m, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        references = [r for r in mine if r["reference"]]
        baselines = result["baselines"][result["models"][model]["variant"][1]]
        floor, ceiling = baselines["floor"][metric], (baselines.get("ceiling") or {}).get(metric)
        top = max([2 * references[-1][metric]] + [1.1 * r[metric] for r in references])
        for c, schedule in enumerate(schedules):
            ax = axes[m][c]
            for i, sampler in enumerate(samplers):
                line = sorted((r for r in mine if r["reference"] is None and r["sampler"] == sampler
                               and r["time_schedule"] == schedule), key=lambda r: r["evaluations"])
                x = np.array([r["evaluations"] * (1 + 0.025 * (i - 2)) for r in line])  # side by side
                values = np.array([r[metric] for r in line])
                errors = np.array([[r[metric] - r.get(f"{metric}_low", r[metric]) for r in line],
                                   [r.get(f"{metric}_high", r[metric]) - r[metric] for r in line]])
                ax.errorbar(x, np.minimum(values, top), yerr=np.where(values > top, 0, errors), marker="o",
                            markersize=3, capsize=2, label=sampler, color=f"C{i}")
                ax.scatter(x[values > top], np.full((values > top).sum(), top), marker="^", color=f"C{i}", s=30)
            for (colour, style), ref in zip(reference_styles, references):
                ax.axhline(ref[metric], color=colour, linestyle=style,
                           label=f"{ref['reference']} ({ref['evaluations']} evals)")
                if f"{metric}_low" in ref:
                    ax.axhspan(ref[f"{metric}_low"], ref[f"{metric}_high"], color=colour, alpha=0.12)
            ax.axhline(floor, color="black", linewidth=0.8, label="floor")
            if ceiling is not None:
                ax.axhline(ceiling, color="C2", linewidth=0.8, linestyle="-.", label="ceiling")
            ax.set_xscale("log")
            ax.set_ylim(0.9 * floor, 1.03 * top)
            ax.set_xticks(result["evaluations"], [str(e) for e in result["evaluations"]])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(alpha=0.3)
            ax.set_title(f"{mine[0]['label']}, {schedule} time schedule", fontsize=9)
            if m == len(models) - 1:
                ax.set_xlabel("network evaluations per sample")
            if c == 0:
                ax.set_ylabel(f"{metric} (lower is better)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)
