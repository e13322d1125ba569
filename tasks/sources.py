"""The data sources the ingest stage reads, in one table: config validation, ingest's dispatch and the docs all
come from here. Light on purpose (no sklearn or torchvision import), so the config can read it."""
from __future__ import annotations

from typing import NamedTuple


class Source(NamedTuple):
    kind: str  # "image" | "array": what the pipeline does with it (autoencoder + U-Net, or MLP on arrays)
    path: str  # "required", "optional" or "none": whether data.path names it
    what: str  # for the docs and error messages


SOURCES: dict[str, Source] = {
    "digits": Source("image", "none", "scikit-learn's 8x8 handwritten digits, embedded (offline)"),
    "cifar10": Source("image", "optional", "CIFAR-10 via torchvision, or a local cifar-10-python.tar.gz"),
    "folder": Source("image", "required", "an image folder or zip laid out as class/name.ext"),
    "wine": Source("array", "none", "scikit-learn's wine measurements (178 x 13, positive), embedded"),
    "breast_cancer": Source("array", "none", "scikit-learn's breast-cancer features (569 x 30, positive), embedded"),
    "arrays": Source("array", "required", "a .npy, .npz or .parquet file of rows [N, F]"),
}


def names() -> list[str]:
    return list(SOURCES)
