"""Pictures people would rather look at than read: image grids, curves, histograms (atomic PNG writes)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run in workers and CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .io import atomic_save_with  # noqa: E402


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, upscale: int | None = None) -> Path:
    """uint8 [N, C, H, W] -> one PNG grid; small images are upscaled (nearest) so they can be seen."""
    tensor = torch.as_tensor(images)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(tensor)))))
    grid = make_grid(tensor, nrow=nrow, padding=1, pad_value=255).permute(1, 2, 0).numpy()
    upscale = upscale or max(1, 128 // images.shape[-1])
    picture = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if grid.shape[-1] == 3 and images.shape[1] == 1:
        picture = picture.convert("L")
    picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    return atomic_save_with(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_figure(fig, path: str | Path) -> Path:
    try:
        return atomic_save_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_trajectories(trajectory: list[torch.Tensor], denoised: list[torch.Tensor], timesteps: list[int],
                      path: str | Path) -> Path:
    """Distance of the sampling (x_t) and denoising (x0_hat) trajectories to the final sample, per step."""
    final = trajectory[-1]
    dist = lambda xs: [float((x - final).flatten(1).norm(dim=1).mean()) for x in xs]  # noqa: E731
    steps = list(range(len(denoised)))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, dist(trajectory[:-1]), label="sampling trajectory x_t")
    ax.plot(steps, dist(denoised), label="denoising trajectory x0_hat")
    ax.set(xlabel=f"step (t from {timesteps[0]} to {timesteps[-1]})", ylabel="mean L2 distance to final sample")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_histograms(generated: np.ndarray, reference: np.ndarray, names: list[str], path: str | Path,
                    max_features: int = 6) -> Path:
    """Per-feature histograms, generated vs held-out, on a log x-axis when the reference is positive."""
    count = min(max_features, generated.shape[1])
    fig, axes = plt.subplots(1, count, figsize=(3 * count, 2.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ref, gen = reference[:, i], generated[:, i][np.isfinite(generated[:, i])]
        positive = (ref > 0).all() and (gen > 0).all()
        values = np.concatenate([ref, gen])
        bins = np.geomspace(values.min(), values.max(), 30) if positive else np.linspace(values.min(), values.max(), 30)
        ax.hist(ref, bins=bins, alpha=0.5, density=True, label="held-out")
        ax.hist(gen, bins=bins, alpha=0.5, density=True, label="generated")
        if positive:
            ax.set_xscale("log")
        ax.set_title(names[i] if i < len(names) else f"feature {i}", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)
