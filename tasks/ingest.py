"""Ingest stage: read the configured data source into deterministic Parquet shards plus ``manifest.json``.

The same config and seed always give the same bytes (the data-versioning stage hashes them). A new dataset is
built in a temp folder beside ``<workdir>/data`` and swapped in only when complete, so a failed ingest leaves the
previous dataset as it was and never a half-written shard or manifest.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from sklearn import datasets as sklearn_datasets

from logdiff_core.progress import progress_bar
from tasks.config import Config, DataConfig
from tasks.data import MANIFEST, content_hash, shard_name, to_table
from tasks.io import atomic_save_with, check_replaceable, stage_output, write_json
from tasks.paths import data_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
CIFAR_DEFAULT_ROOT = "~/.cache/logdiff/cifar10"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
SKIPPED_NAMES_KEPT = 20
ZERO_SAFE = "zero_safe_log"  # the transform for data with exact zeros (logdiff_core.transforms)


@dataclass
class _Source:
    """A source's examples in a fixed order, before shuffling, plus what the manifest records about them."""
    kind: str  # "image" | "array"
    values: np.ndarray  # uint8 [N, C, H, W] or float32 [N, F]
    labels: np.ndarray | None
    path: str | None = None
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)


def ingest(cfg: Config) -> dict:
    """Write ``<work>/data``: shuffled train/val Parquet shards and, last, ``manifest.json``; return the manifest."""
    data = cfg.data
    out = data_dir(cfg)
    check_replaceable(out)  # before reading a large source, not after
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(".scratch-*.tmp"):  # left by an ingest that was killed outright
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".scratch-", suffix=".tmp", dir=out.parent) as scratch:
        source = READERS[data.source](data, Path(scratch))
        if source.skipped:
            shown = ", ".join(source.skipped[:5]) + (", ..." if len(source.skipped) > 5 else "")
            print(f"warning: skipped {len(source.skipped)} bad input(s) in {source.path}: {shown}", file=sys.stderr)
        with stage_output(out, "ingest") as fresh:
            return _write_dataset(fresh, source, data, cfg.seed)


def check_source(data: DataConfig, transforms: list[str], log_floor: float) -> None:
    """What can be known about the source without ingesting it, checked before any stage runs: the path is there,
    a folder or zip holds images in class folders, an array file reads, and data for the log transform is
    positive. Raises the same one-line errors ingest would, minutes earlier."""
    if data.source == "folder":
        path = _existing_path(data)
        with contextlib.ExitStack() as stack:
            _class_layout(path, _open_folder(path, stack)[0])
    elif data.source == "cifar10":
        root = Path(data.path or CIFAR_DEFAULT_ROOT).expanduser()
        if data.path and not root.exists() and not data.download:
            raise FileNotFoundError(f"data.path: {root} not found; set data.download=true, or point data.path at "
                                    f"{CIFAR_TARBALL} or the folder holding it")
    elif READERS[data.source] in (_arrays, _sklearn_table) and set(transforms) - {"identity"}:
        values = READERS[data.source](data, Path(".")).values
        for name, bad, needs, fix in (("log", values <= -log_floor, f"> {0.0 - log_floor:g}", " or raise "
                                       "diffusion.log_floor"), (ZERO_SAFE, values < 0, ">= 0", "")):
            if name in transforms and bad.any():
                raise ValueError(f"data: the {name} transform needs values {needs}, and {int(bad.sum())} of "
                                 f"{values.size} values of source={data.source} are not (minimum {values.min():g}); "
                                 f"use diffusion.transforms=[identity]{fix}")
    elif data.source == "arrays":
        _read_array_file(_existing_path(data))


def _write_dataset(folder: Path, source: _Source, data: DataConfig, seed: int) -> dict:
    """Shuffle with ``seed``, keep ``limit``, split off ``val_fraction``, write the shards, then the manifest."""
    order = np.random.default_rng(seed).permutation(len(source.values))[: data.limit]
    n = len(order)
    if n < 2:
        raise ValueError(f"data: {n} usable example(s) from source={data.source}; need at least 2 to split train/val")
    n_val = min(n - 1, max(1, round(n * data.val_fraction)))
    values = source.values[order]
    labels = None if source.labels is None else source.labels[order]
    splits = {"train": (values[n_val:], None if labels is None else labels[n_val:]),
              "val": (values[:n_val], None if labels is None else labels[:n_val])}
    shards: dict[str, list[str]] = {}
    for split, (split_values, split_labels) in splits.items():
        shards[split] = []
        for index, start in enumerate(range(0, len(split_values), data.shard_rows)):
            rows = slice(start, start + data.shard_rows)
            table = to_table(split_values[rows], None if split_labels is None else split_labels[rows], source.kind)
            name = shard_name(split, index)
            atomic_save_with(folder / name, lambda tmp: pq.write_table(table, tmp, use_dictionary=False))
            shards[split].append(name)
    manifest = {
        "kind": source.kind, "source": data.source, "path": source.path, "seed": seed,
        "counts": {split: len(split_values) for split, (split_values, _) in splits.items()},
        "shape": list(values.shape[1:]), "dtype": str(values.dtype), "shards": shards,
        "skipped": {"count": len(source.skipped), "names": source.skipped[:SKIPPED_NAMES_KEPT]},
        "content_hash": content_hash(source.kind, splits),
    }
    if source.class_names is not None:
        manifest["class_names"] = source.class_names
    if source.kind == "array":
        feature_min = values.min(axis=0)
        manifest["feature_names"] = source.feature_names
        manifest["feature_min"] = feature_min.tolist()
        manifest["strictly_positive"] = bool((feature_min > 0).all())  # the log transform needs this
    write_json(folder / MANIFEST, manifest)
    return manifest


def _pixels(img: Image.Image, mode: str, size: int | None) -> np.ndarray:
    """[H, W] ("L") or [H, W, 3] ("RGB") uint8 pixels, resized to size x size when given."""
    img = img.convert(mode)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def _stack_nchw(pixels: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(pixels)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def _mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _conform(images: np.ndarray, data: DataConfig) -> np.ndarray:
    """Apply data.channels and data.image_size to in-memory [N, C, H, W] images (folders do it while decoding)."""
    _, channels, height, width = images.shape
    size = data.image_size
    if data.channels in (None, channels) and (size is None or (height, width) == (size, size)):
        return images
    mode = _mode(data.channels or channels)
    hwc = images.transpose(0, 2, 3, 1)
    return _stack_nchw([_pixels(Image.fromarray(img[..., 0] if channels == 1 else img), mode, size) for img in hwc])


def _existing_path(data: DataConfig) -> Path:
    if data.path is None:
        raise ValueError(f"data.path: required for source={data.source}")
    path = Path(data.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.path: {path} not found")
    return path


def _digits(data: DataConfig, scratch: Path) -> _Source:
    digits = sklearn_datasets.load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)[:, None]
    return _Source("image", _conform(pixels, data), digits.target.astype(np.int64),
                   class_names=[str(name) for name in digits.target_names])


def _sklearn_table(data: DataConfig, scratch: Path) -> _Source:
    table = getattr(sklearn_datasets, f"load_{data.source}")()
    return _Source("array", table.data.astype(np.float32), table.target.astype(np.int64),
                   class_names=[str(name) for name in table.target_names],
                   feature_names=[str(name) for name in table.feature_names])


def _cifar10(data: DataConfig, scratch: Path) -> _Source:
    root = Path(data.path or CIFAR_DEFAULT_ROOT).expanduser()
    tarball = root if root.is_file() else root / CIFAR_TARBALL
    # torchvision reads only the extracted batches unless it downloads, so a bare tarball is extracted here
    if not (root / "cifar-10-batches-py").is_dir() and tarball.is_file():
        with tarfile.open(tarball) as tar:
            safe_extract(tar, scratch)
        root_used = scratch
    else:
        root_used = root
    from torchvision.datasets import CIFAR10  # only this source needs torchvision (~1.5 s to import)

    try:
        dataset = CIFAR10(str(root_used), train=True, download=data.download)
    except (RuntimeError, OSError) as err:  # not found, corrupted, or the download failed
        why = f"the download failed ({type(err).__name__})" if data.download else "not found or corrupted"
        fix = "" if data.download else "set data.download=true, or "
        raise FileNotFoundError(
            f"CIFAR-10 at {root}: {why}; {fix}point data.path at {CIFAR_TARBALL} or the folder holding it, "
            "or use data.source=folder with data.path at an image folder or zip") from None
    images = np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2))
    return _Source("image", _conform(images, data), np.asarray(dataset.targets, np.int64),
                   path=data.path or CIFAR_DEFAULT_ROOT, class_names=list(dataset.classes))


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract ``tar`` into ``dest``, refusing (one-line ValueError, nothing extracted) any member that would land
    outside it: absolute paths, ``..``, links, devices. Python's ``filter="data"`` does this where it exists
    (3.10.12+, 3.11.4+); older Pythons get the same check here."""
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as err:
            raise ValueError(f"data.path: {tar.name} holds an unsafe member ({err}); refusing to extract it") from None
        return
    root = dest.resolve()
    for member in tar.getmembers():
        if not (root / member.name).resolve().is_relative_to(root) or not (member.isfile() or member.isdir()):
            raise ValueError(f"data.path: {tar.name} holds an unsafe member {member.name!r}; refusing to extract it")
    tar.extractall(dest)


def _is_image(name: PurePosixPath) -> bool:
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in name.parts)  # .DS_Store, macOS zip forks
    return name.suffix.lower() in IMAGE_SUFFIXES and not hidden


def _class_layout(path: Path, names: list[str]) -> list[tuple[str, str]]:
    """(file name, class name) for every image, sorted; accepts class/name.ext under at most one top folder."""
    images = sorted(PurePosixPath(name) for name in names if _is_image(PurePosixPath(name)))
    if not images:
        raise ValueError(f"data.path: no images found in {path}; expected class/name.ext files")
    under_one_top = len({image.parts[0] for image in images}) == 1 and all(len(image.parts) == 3 for image in images)
    depth = 3 if under_one_top else 2
    misplaced = next((image for image in images if len(image.parts) != depth), None)
    if misplaced is not None:
        raise ValueError(f"data.path: expected images as class/name.ext in {path}, found {misplaced}")
    return [(image.as_posix(), image.parts[-2]) for image in images]


def _open_folder(path: Path, stack: contextlib.ExitStack) -> tuple[list[str], Callable[[str], bytes]]:
    """The file names in an image folder or zip, and a reader of one by name."""
    if path.is_dir():
        return ([file.relative_to(path).as_posix() for file in path.rglob("*") if file.is_file()],
                lambda name: (path / name).read_bytes())
    if zipfile.is_zipfile(path):
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = {info.filename: info for info in archive.infolist() if not info.is_dir()}
        return list(members), lambda name: archive.read(members[name])
    raise ValueError(f"data.path: {path} is neither a folder nor a zip of class folders")


def _image_folder(data: DataConfig, scratch: Path) -> _Source:
    path = _existing_path(data)
    with contextlib.ExitStack() as stack:
        names, read = _open_folder(path, stack)
        layout = _class_layout(path, names)
        class_names = sorted({class_name for _, class_name in layout})
        label_of = {class_name: label for label, class_name in enumerate(class_names)}
        pixels, labels, skipped = [], [], []
        for name, class_name in progress_bar(layout, desc=f"decoding {path.name}", unit="img"):
            try:
                with Image.open(io.BytesIO(read(name))) as img:
                    grey = img.mode in GREY_MODES
                    pixels.append(_pixels(img, _mode(data.channels or (1 if grey else 3)), data.image_size))
            except Exception as err:  # PIL and zipfile report a bad file through many exception types
                if data.on_bad_input == "error":
                    raise ValueError(f"{name}: unreadable image ({type(err).__name__}); "
                                     "set data.on_bad_input=skip to skip bad files") from None
                skipped.append(name)
                continue
            labels.append(label_of[class_name])
    if not pixels:
        raise ValueError(f"data.path: none of the {len(layout)} images in {path} could be read")
    if data.channels is None and any(p.ndim == 3 for p in pixels):  # RGB unless every image is greyscale
        pixels = [np.repeat(p[..., None], 3, axis=-1) if p.ndim == 2 else p for p in pixels]
    sizes = sorted({p.shape[:2] for p in pixels})
    if len(sizes) > 1:
        shown = ", ".join(f"{width}x{height}" for height, width in sizes[:3])
        raise ValueError(f"data.path: images in {path} differ in size ({shown}{', ...' if len(sizes) > 3 else ''}); "
                         "set data.image_size to resize them to one size")
    return _Source("image", _stack_nchw(pixels), np.asarray(labels, np.int64), path=data.path,
                   class_names=class_names, skipped=skipped)


def _read_array_file(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The array in a .npy, .npz (key data or x, else the first) or .parquet (numeric columns), and column names."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise ValueError(f"data.path: {path} holds no arrays")
            key = next((key for key in ("data", "x") if key in archive.files), archive.files[0])
            return archive[key], None
    if suffix == ".parquet":
        table = pq.read_table(path)
        columns = [f.name for f in table.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        if not columns:
            raise ValueError(f"data.path: {path} has no numeric columns")
        # nulls come back as NaN, so they are handled as bad rows below
        return np.column_stack([table[name].to_numpy() for name in columns]), columns
    raise ValueError(f"data.path: {path} is not a .npy, .npz or .parquet file")


def _arrays(data: DataConfig, scratch: Path) -> _Source:
    path = _existing_path(data)
    raw, columns = _read_array_file(path)
    values = np.asarray(raw, np.float32)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"data.path: {path} holds an array of shape {values.shape}; expected [N, F]")
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad_rows) and data.on_bad_input == "error":
        raise ValueError(f"{path}: row {bad_rows[0]} has NaN or inf ({len(bad_rows)} such rows); "
                         "set data.on_bad_input=skip to skip bad rows")
    feature_names = columns or [f"x{i}" for i in range(values.shape[1])]
    return _Source("array", np.delete(values, bad_rows, axis=0), None, path=data.path,
                   feature_names=feature_names, skipped=[f"row {row}" for row in bad_rows])


READERS = {"digits": _digits, "breast_cancer": _sklearn_table, "wine": _sklearn_table, "cifar10": _cifar10,
           "folder": _image_folder, "arrays": _arrays}  # keyed as tasks.sources.SOURCES (a test checks)
