"""Standard FID: TF-ported InceptionV3 weights (pt_inception-2015-12-05, as torch-fidelity and pytorch-fid use),
uint8 images, float64 statistics. The distances themselves live in ``logdiff_core.metrics``.
"""
from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch

from logdiff_core.progress import progress_bar
from tasks.io import atomic_save_with

WEIGHTS_ENV = "LOGDIFF_FID_WEIGHTS"
WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name in the hub cache (tested)
DOWNLOAD_TIMEOUT_S = 10
_EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registry name for this network


class FIDUnavailable(RuntimeError):
    """FID cannot be computed here; the message is one line saying why and what to set."""


def download_weights(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically; the timeout bounds each socket wait, not the whole transfer."""
    def fetch(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)

    atomic_save_with(dest, fetch)


def _not_found(setting: str, path: Path) -> FIDUnavailable:
    return FIDUnavailable(f"{setting}: {path} not found; point it at a local copy of the pt_inception-2015-12-05 "
                          f"weights ({WEIGHTS_FILENAME}) or unset it")


def resolve_fid_weights(configured: str | None) -> Path:
    """The Inception weights file: ``configured``, then $LOGDIFF_FID_WEIGHTS, then the torch hub cache (where
    torch-fidelity keeps it), then a download into that cache. Raises FIDUnavailable with a one-line reason."""
    for setting, value in (("eval.fid_weights", configured), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value:  # an explicit but wrong setting is an error, not a reason to fall back to a download
            path = Path(value).expanduser()
            if not path.is_file():
                raise _not_found(setting, path)
            return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
    if not cached.is_file():
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        try:
            download_weights(URL_INCEPTION_V3, cached)
        except Exception as err:  # any network or disk failure means the same thing to the caller
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            raise FIDUnavailable(f"Inception weights (pt_inception-2015-12-05) not found locally "
                                 f"and the download failed ({reason}); set eval.fid_weights or {WEIGHTS_ENV} "
                                 f"to a local copy") from None
    return cached


def write_random_inception_weights(dest: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised state dict of torch-fidelity's InceptionV3 to ``dest``.

    For tests and timing only (speed does not depend on weight values); FID from it is meaningless.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # keep the fresh initialisation
            return None

    dest = Path(dest)
    # the constructor loads either a file or the URL; an empty dict avoids the download
    atomic_save_with(dest, lambda tmp: torch.save({}, tmp))
    torch.manual_seed(seed)
    network = Unloaded(_EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(dest))
    # He init keeps activations O(1) through the ~40 layers; the default init shrinks them to float32
    # denormals, which are slow on CPUs and leave near-zero features
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    atomic_save_with(dest, lambda tmp: torch.save(network.state_dict(), tmp))
    return dest


class InceptionFeatures:
    """2048-d pool features of the TF-ported InceptionV3, via torch-fidelity's extractor."""

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu") -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.device = torch.device(device)
        self.network = FeatureExtractorInceptionV3(
            _EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(weights_path)).to(self.device)

    def __call__(self, images: np.ndarray | torch.Tensor, batch_size: int = 200) -> np.ndarray:
        """uint8 images [N, C, H, W] with C = 1 or 3 -> float64 features [N, 2048]."""
        images = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if images.dtype != torch.uint8:
            raise ValueError(f"InceptionFeatures expects uint8 images, got {images.dtype}; quantise to uint8 first")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        batches = []
        with torch.no_grad():
            for start in progress_bar(range(0, len(images), batch_size), desc="inception features", unit="batch",
                              disable=None, leave=False):
                batch = images[start:start + batch_size].to(self.device).expand(-1, 3, -1, -1)
                (features,) = self.network(batch)
                batches.append(features.cpu().double())
        return torch.cat(batches).numpy() if batches else np.empty((0, 2048))


def reference_features(images_uint8: np.ndarray | torch.Tensor, extractor: InceptionFeatures,
                       cache_path: str | Path) -> np.ndarray:
    """Inception features of the reference images (float64), cached in ``cache_path`` (.npz, float32, with the
    sample count); a cache made from a different number of images is recomputed."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        with np.load(cache_path) as cached:
            if int(cached["num_samples"]) == len(images_uint8):
                return cached["features"].astype(np.float64)
    features = extractor(images_uint8)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as out:  # a file object: np.savez would append ".npz" to a bare temp name
            np.savez(out, features=features.astype(np.float32), num_samples=len(images_uint8))

    atomic_save_with(cache_path, save)
    return features.astype(np.float32).astype(np.float64)  # what the cache gives back next time
