"""The ingested dataset on disk: Parquet shards plus ``manifest.json``, as written by the ingest stage.

Shard layout: images are a binary column ``image`` (raw C*H*W uint8 bytes) plus an int64 ``label``; arrays are a
fixed-size list<float32> column ``values`` (plus ``label`` when the source has targets). The schema metadata
carries ``kind`` and ``shape`` so a shard is readable on its own.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.io import read_json

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
LABEL_COLUMN = "label"  # the last column of a table's rows when its class labels are modelled (diffusion.labels)


@dataclass
class Dataset:
    values: np.ndarray  # uint8 [N, C, H, W] for images, float32 [N, F] for arrays
    labels: np.ndarray | None
    kind: str  # "image" | "array"
    manifest: dict


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def to_table(values: np.ndarray, labels: np.ndarray | None, kind: str) -> pa.Table:
    """One shard's rows in the layout ``load_split`` reads."""
    n, shape = len(values), values.shape[1:]
    flat = np.ascontiguousarray(values).reshape(-1)
    if kind == "image":
        row_bytes = int(np.prod(shape))
        # large_binary: 64-bit offsets, so a shard of big images can pass 2 GiB
        offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int64) * row_bytes)
        column = pa.Array.from_buffers(pa.large_binary(), n, [None, offsets, pa.py_buffer(flat)])
        columns = {"image": column}
    else:
        columns = {"values": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), shape[0])}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
    metadata = {"logdiff.kind": kind, "logdiff.shape": json.dumps(list(shape))}
    return pa.table(columns).replace_schema_metadata(metadata)


def _image_rows(chunk: pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-copy view of a binary chunk whose rows are all ``prod(shape)`` bytes long."""
    offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], offset_type)[chunk.offset: chunk.offset + len(chunk) + 1]
    data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0]: offsets[-1]]
    return data.reshape(len(chunk), *shape)


def from_table(table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
    metadata = table.schema.metadata
    kind = metadata[b"logdiff.kind"].decode()
    shape = tuple(json.loads(metadata[b"logdiff.shape"]))
    if kind == "image":
        parts = [_image_rows(chunk, shape) for chunk in table["image"].chunks]
    else:
        parts = [chunk.flatten().to_numpy().reshape(-1, *shape) for chunk in table["values"].chunks]
    values = np.concatenate(parts)  # a copy, so callers get a writable array
    labels = table["label"].to_numpy() if "label" in table.column_names else None
    return values, labels


def content_hash(kind: str, splits: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> str:
    """sha256 over kind, shape and every split's example bytes and labels, in stored order."""
    digest = hashlib.sha256()
    shapes = {name: list(values.shape) for name, (values, _) in splits.items()}
    digest.update(json.dumps({"kind": kind, "shapes": shapes}, sort_keys=True).encode())
    for values, labels in splits.values():
        digest.update(np.ascontiguousarray(values))
        if labels is not None:
            digest.update(np.ascontiguousarray(labels, dtype="<i8"))
    return digest.hexdigest()


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no ingested data in {Path(data_dir)}; run the ingest stage (logdiff stage ingest) first")
    return read_json(path)


def load_split(data_dir: str | Path, split: str) -> Dataset:
    """The ``train`` or ``val`` split of an ingested dataset, shards concatenated in stored order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    manifest = load_manifest(data_dir)
    parts = [from_table(pq.read_table(Path(data_dir) / name)) for name in manifest["shards"][split]]
    values = np.concatenate([values for values, _ in parts])
    labels = None if parts[0][1] is None else np.concatenate([labels for _, labels in parts])
    return Dataset(values=values, labels=labels, kind=manifest["kind"], manifest=manifest)


def table_rows(dataset: Dataset, labels: bool) -> np.ndarray:
    """A split's rows as the models generate them: the values, and with ``labels`` the class index as a last
    column (images: the values)."""
    if not labels:
        return dataset.values
    return np.column_stack([dataset.values, dataset.labels.astype(dataset.values.dtype)])


def column_names(manifest: dict, labels: bool) -> list[str]:
    """The names of ``table_rows``' columns."""
    names = manifest.get("feature_names") or [f"x{i}" for i in range(manifest["shape"][0])]
    return names + [LABEL_COLUMN] if labels else names


def images_to_float(x_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]."""
    return torch.as_tensor(x_uint8).float() / 127.5 - 1.0


def float_to_images(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Floats in [-1, 1] (clamped) -> uint8 pixels 0..255, rounded to nearest."""
    x = torch.as_tensor(x).detach().float().cpu()
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).numpy()
