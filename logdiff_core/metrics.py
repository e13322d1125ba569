"""Distribution distances between generated and reference samples.

Pure numpy/torch: the Fréchet distance and KID on precomputed features (Inception's for FID, the judge
classifier's for ``fd_classifier``), improved precision/recall and class entropy in the same features, the
multi-scale sliced Wasserstein distance (SWD) of ProGAN on uint8 images, weight-free distances for
tabular/positive arrays. Feature extraction lives elsewhere
(``tasks.fid``, ``logdiff_core.classifier``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``features`` [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"feature_statistics needs at least 2 feature rows [N, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_eigenvalues(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those at rounding level (including negative ones) set to 0.

    With fewer samples than dimensions (e.g. 1000 images, 2048 features) most eigenvalues are zero up to
    rounding; their square roots (~1e-8 each) would otherwise add up to a visible bias.
    """
    tolerance = eigenvalues.max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(_psd_eigenvalues(eigenvalues))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    sqrt(S1) S2 sqrt(S1) (same spectrum as S1 S2), which stays real and stable for the singular
    covariances that scipy.linalg.sqrtm struggles with.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.size
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {sigma1.shape} / {sigma2.shape}")
    sqrt_sigma1 = _psd_sqrt(sigma1)
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt_product = np.sqrt(_psd_eigenvalues(np.linalg.eigvalsh((product + product.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product)


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with kernel k(x, y) = (x.y / d + 1)^3, mean and std over random subsets."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kernel_inception_distance: feature shapes {f1.shape} and {f2.shape} do not match")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("kernel_inception_distance needs at least 2 samples per set")
    dim = f1.shape[1]
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
        mmds[i] = within / (m * (m - 1)) - 2 * k_xy.sum() / m**2
    return float(mmds.mean()), float(mmds.std())


def _wasserstein_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Wasserstein-1 distance between the empirical distributions of each column of a [n, k] and b [m, k].

    W1 = integral over q in (0, 1) of |Qa(q) - Qb(q)|; both quantile functions are step functions with steps at
    i/n and j/m, so the integral is a sum over the merged steps. Equal sizes reduce to mean |sort(a) - sort(b)|.
    """
    a, b = np.sort(a, axis=0), np.sort(b, axis=0)
    n, m = len(a), len(b)
    edges = np.concatenate([[0.0], np.union1d(np.arange(1, n) / n, np.arange(1, m) / m), [1.0]])
    middles = (edges[:-1] + edges[1:]) / 2
    a_index = np.minimum((middles * n).astype(np.int64), n - 1)
    b_index = np.minimum((middles * m).astype(np.int64), m - 1)
    return (np.abs(a[a_index] - b[b_index]) * np.diff(edges)[:, None]).sum(axis=0)


# 5-tap binomial filter of ProGAN's (and OpenCV's) pyrDown/pyrUp
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16


def _blur(images: torch.Tensor) -> torch.Tensor:
    n, c, h, w = images.shape
    # 'reflect' padding is scipy.ndimage's mode='mirror', which ProGAN uses; the filter is separable
    planes = F.pad(images.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="reflect")
    planes = F.conv2d(F.conv2d(planes, _BINOMIAL.view(1, 1, 5, 1)), _BINOMIAL.view(1, 1, 1, 5))
    return planes.view(n, c, h, w)


def _laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    gaussians = [images]
    for _ in range(num_levels - 1):
        gaussians.append(_blur(gaussians[-1])[:, :, ::2, ::2])
    pyramid = []
    for fine, coarse in zip(gaussians, gaussians[1:]):
        upsampled = torch.zeros(coarse.shape[:2] + (2 * coarse.shape[2], 2 * coarse.shape[3]), dtype=coarse.dtype)
        upsampled[:, :, ::2, ::2] = coarse
        pyramid.append(fine - 4 * _blur(upsampled)[:, :, :fine.shape[2], :fine.shape[3]])
    return pyramid + [gaussians[-1]]


def _pyramid_patches(images: np.ndarray, num_levels: int, patch_size: int, num_patches: int,
                     seed: int, chunk: int = 256) -> list[np.ndarray]:
    """Per level, ``num_patches`` random patches per image as float32 [N * num_patches, C, p, p].

    The patch positions depend only on ``seed`` and the image index, so two sets share them (an identical set
    gives exactly 0). Images go through in chunks to bound memory.
    """
    rng = np.random.default_rng(seed)
    offsets = np.arange(patch_size)
    per_level: list[list[np.ndarray]] = [[] for _ in range(num_levels)]
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(images[start:start + chunk].astype(np.float64))
        for level, band in enumerate(_laplacian_pyramid(batch, num_levels)):
            band = band.numpy()
            n, c, h, w = band.shape
            top = rng.integers(0, h - patch_size + 1, size=(n, num_patches))
            left = rng.integers(0, w - patch_size + 1, size=(n, num_patches))
            rows = (top[:, :, None] + offsets)[:, :, None, :, None]  # [n, P, 1, p, 1]
            cols = (left[:, :, None] + offsets)[:, :, None, None, :]  # [n, P, 1, 1, p]
            patches = band[np.arange(n)[:, None, None, None, None], np.arange(c)[:, None, None], rows, cols]
            per_level[level].append(patches.reshape(-1, c, patch_size, patch_size).astype(np.float32))
    return [np.concatenate(parts) for parts in per_level]


def _normalised_descriptors(patches: np.ndarray) -> np.ndarray:
    """ProGAN's finalize_descriptors: per-channel standardisation over this set's patches, then flatten."""
    std = patches.std(axis=(0, 2, 3), keepdims=True)
    # a constant set (e.g. an all-black generator) would divide by zero: leave its channel unscaled
    patches = (patches - patches.mean(axis=(0, 2, 3), keepdims=True)) / np.where(std > 0, std, 1)
    return patches.reshape(len(patches), -1)


def sliced_wasserstein_distance(images_a: np.ndarray, images_b: np.ndarray, *, num_patches: int = 128,
                                patch_size: int = 7, num_projections: int = 128, num_repeats: int = 4,
                                seed: int = 0) -> dict:
    """Multi-scale sliced Wasserstein distance of ProGAN (Karras et al. 2018) between uint8 NCHW image sets.

    Each level of a Laplacian pyramid (full size halving down to 8 px) contributes random patches per image;
    the two patch sets are projected on random unit directions and compared with the 1-D Wasserstein distance.
    Returns {"swd_<side>px": 1e3 * distance per level, ..., "swd_mean": mean over levels}.
    """
    for images in (images_a, images_b):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("sliced_wasserstein_distance expects uint8 images [N, C, H, W]; quantise to uint8 first")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"sliced_wasserstein_distance: image shapes {images_a.shape[1:]} and "
                         f"{images_b.shape[1:]} differ")
    side = min(images_a.shape[2:])
    patch_size = min(patch_size, side)  # so 8x8 digits still give one level
    num_levels = 1
    while side >> num_levels >= max(8, patch_size):
        num_levels += 1
    levels_a, levels_b = (_pyramid_patches(images, num_levels, patch_size, num_patches, seed)
                          for images in (images_a, images_b))
    directions_rng = np.random.default_rng(seed)
    result = {}
    for level, (patches_a, patches_b) in enumerate(zip(levels_a, levels_b)):
        descriptors_a, descriptors_b = _normalised_descriptors(patches_a), _normalised_descriptors(patches_b)
        distances = []
        for _ in range(num_repeats):  # repeats bound the memory of the projected copies
            directions = directions_rng.standard_normal((descriptors_a.shape[1], num_projections))
            directions = (directions / np.linalg.norm(directions, axis=0)).astype(np.float32)
            distances.append(_wasserstein_1d(descriptors_a @ directions, descriptors_b @ directions).mean())
        result[f"swd_{side >> level}px"] = float(np.mean(distances)) * 1e3
    result["swd_mean"] = float(np.mean(list(result.values())))
    return result


def _correlation(x: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of the columns of x; a constant column correlates 0 with everything."""
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1)
    correlation = z.T @ z / len(x)
    np.fill_diagonal(correlation, 1.0)
    return correlation


def fraction_non_positive(values: np.ndarray) -> float:
    """Fraction of entries that are <= 0 or non-finite: what a positive-data model must keep at exactly 0."""
    values = np.asarray(values, np.float64)
    return float(np.mean(~np.isfinite(values) | (values <= 0)))


def array_metrics(generated: np.ndarray, reference: np.ndarray) -> dict:
    """Weight-free distances for tabular/positive data [N, F] (generated) vs [M, F] (reference).

    frac_non_positive: fraction of generated entries that are <= 0 or non-finite.
    wasserstein / log_wasserstein: mean over features of the 1-D Wasserstein-1 distance divided by the
      reference feature's std, on the original and on the log scale (values clipped to the smallest positive
      float first, so the log is always defined and non-positive values are heavily penalised).
    correlation_distance: Frobenius norm of the difference of Pearson correlation matrices, divided by F.
    Generated rows with a non-finite entry are left out of the distances (inf when none is left).
    """
    generated, reference = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
    if generated.ndim != 2 or reference.ndim != 2 or generated.shape[1] != reference.shape[1]:
        raise ValueError(f"array_metrics: shapes {generated.shape} and {reference.shape} are not [N, F] and [M, F]")
    metrics = {"frac_non_positive": fraction_non_positive(generated)}
    generated = generated[np.isfinite(generated).all(axis=1)]
    if len(generated) == 0:
        return metrics | {"wasserstein": np.inf, "log_wasserstein": np.inf, "correlation_distance": np.inf}

    def scaled_wasserstein(gen: np.ndarray, ref: np.ndarray) -> float:
        std = ref.std(axis=0)
        return float(np.mean(_wasserstein_1d(gen, ref) / np.where(std > 0, std, 1)))

    tiny = np.finfo(np.float64).tiny
    difference = _correlation(generated) - _correlation(reference)
    return metrics | {
        "wasserstein": scaled_wasserstein(generated, reference),
        "log_wasserstein": scaled_wasserstein(np.log(np.maximum(generated, tiny)), np.log(np.maximum(reference, tiny))),
        "correlation_distance": float(np.linalg.norm(difference) / generated.shape[1]),
    }


def knn_radii(features: np.ndarray, k: int = 3, chunk: int = 2048) -> np.ndarray:
    """Distance from each row to its k-th nearest other row: the radii of a k-NN manifold estimate."""
    points = torch.as_tensor(features, dtype=torch.float64)
    if len(points) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(points)}")
    radii = [torch.cdist(points[start:start + chunk], points).kthvalue(k + 1, dim=1).values  # 1st: itself, at 0
             for start in range(0, len(points), chunk)]
    return torch.cat(radii).numpy()


def covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each point, whether it lies in at least one ball (centre, radius): in the manifold ``knn_radii`` made."""
    points, centres = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
    radii = torch.as_tensor(radii, dtype=torch.float64)
    inside = [(torch.cdist(points[start:start + chunk], centres) <= radii).any(dim=1)
              for start in range(0, len(points), chunk)]
    return torch.cat(inside).numpy()


def precision_recall_indicators(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample terms of improved precision and recall (Kynkäänniemi et al. 2019): whether each generated
    sample lies in the real manifold (the union of balls reaching each real sample's k-th nearest real neighbour),
    and whether each real sample lies in the generated manifold. Their means are precision and recall."""
    return covered(fake, real, knn_radii(real, k)), covered(real, fake, knn_radii(fake, k))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (how much of the generated set looks real) and recall (how much of the real set the
    generated one covers), both in [0, 1], higher is better."""
    fake_in_real, real_in_fake = precision_recall_indicators(real, fake, k)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


def class_entropy(probabilities: np.ndarray) -> float:
    """Entropy (nats) of the predicted classes (each sample's most likely one): ln K when the samples cover K
    classes evenly, 0 when they are all one class. Higher is better, up to the real data's own value."""
    probabilities = np.asarray(probabilities, np.float64)
    shares = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]) / len(probabilities)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum())
