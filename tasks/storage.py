"""Where an experiment's outputs live besides its folder: nowhere else (``cluster.storage`` empty, the default), or
a store every Ray node reaches: ``s3://bucket/prefix`` (AWS, or any S3-compatible server through
``cluster.endpoint``: MinIO, Ceph, moto) or ``file:///path`` on a filesystem every node mounts.

Stages never see the store: they read and write the experiment folder as always, and ``staged`` wraps each run.
Before a stage runs, its declared inputs that the folder lacks (a worker's empty scratch folder on another node)
are fetched from the store; after it succeeds its outputs are published as one *unit* (``train@laplace-identity-0``:
its folder and its metrics file): every file uploaded, then the unit's manifest (names, sizes, sha256) written last,
and removed first when a unit is published again. So a reader that finds a manifest finds the whole unit, and
checks every byte it downloads against it: no half-written folder is ever read under its final name (each object
is one atomic PUT on S3, a temp file renamed on a filesystem). Resume checkpoints are mirrored to the store as
they are saved, so a training retried on another node resumes where the lost one stopped.

The store holds ``<root>/<experiment name>/`` laid out as the experiment folder (``tasks/paths.py``): the same
relative path for every file, manifests under ``.logdiff/published/``, checkpoints under ``.logdiff/checkpoints/``.
Credentials are never configured here: the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or the node's
role) apply. Every transfer prints one line (``store: ...``) with its size and seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from .config import Config
from .io import MARKER, atomic_write_text, sha256_file, stage_output
from .paths import published_manifest

CHUNK = 8 << 20
Unit = tuple[str, list[Path]]  # a stage run's name (DVC's) and the paths it writes, under the experiment folder


class StoreError(RuntimeError):
    """The store cannot be reached or read; the message names it and what to check."""


class Store:
    """The store of one experiment, mirroring the local experiment folder ``work``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.uri, self.endpoint = cfg, cfg.cluster.storage.rstrip("/"), cfg.cluster.endpoint
        self.work = Path(cfg.work).resolve()
        self.fs, root = _filesystem(self.uri, self.endpoint)
        self.root = f"{root}/{cfg.name}"
        self.s3 = self.uri.startswith("s3://")

    def __reduce__(self):  # pickled (into Ray workers) as its config; each process opens its own connection
        return Store, (self.cfg,)

    def where(self, local: Path) -> str:
        """The store path of a file of the experiment folder."""
        return f"{self.root}/{Path(local).resolve().relative_to(self.work).as_posix()}"

    def describe(self) -> str:
        return f"{self.uri}" + (f" at {self.endpoint}" if self.endpoint else "")

    def check(self) -> None:
        """A one-line StoreError unless the store answers and its bucket (or folder) exists."""
        from pyarrow.fs import FileType

        top = self.root.split("/", 1)[0] if self.s3 else self.root.rsplit("/", 1)[0]
        try:
            found = self.fs.get_file_info(top)
        except OSError as err:
            raise StoreError(f"the store {self.describe()} is unreachable ({_first_line(err)}); start it, or fix "
                             "cluster.storage / cluster.endpoint and the AWS credentials") from None
        if found.type == FileType.NotFound:
            what = f"bucket {top!r}" if self.s3 else f"folder {top}"
            raise StoreError(f"the store {self.describe()} has no {what}; create it first")

    # --- units: a stage's outputs, published whole and fetched whole

    def publish(self, unit: str, paths: list[Path]) -> None:
        """Upload the files under ``paths`` that the store's copy of ``unit`` lacks or holds otherwise, drop those it
        no longer has, then write the manifest (removed first, so no reader takes a mix of two versions)."""
        began = time.perf_counter()
        files = {self.where(f): f for path in paths for f in _files(path)}
        manifest = {"unit": unit, "files": {key: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                                            for key, f in sorted(files.items())}}
        previous = self._manifest(unit)
        if previous == manifest:
            return
        self._delete(self._manifest_path(unit))
        sent = 0
        for key, local in files.items():
            if (previous or {}).get("files", {}).get(key) != manifest["files"][key]:
                sent += self._upload(local, key)
        for key in set((previous or {}).get("files", {})) - set(manifest["files"]):
            self._delete(key)
        self._put(self._manifest_path(unit), json.dumps(manifest, indent=1, sort_keys=True).encode())
        atomic_write_text(published_manifest(self.cfg, unit), json.dumps(manifest, sort_keys=True))
        _report("published", unit, len(files), sent, began, self.describe())

    def fetch(self, unit: str, paths: list[Path]) -> None:
        """Make ``paths`` in the experiment folder what the store holds for ``unit`` (each folder swapped in whole);
        nothing is read when the local copy came from the same manifest."""
        began = time.perf_counter()
        manifest = self._manifest(unit)
        if manifest is None:
            raise FileNotFoundError(f"{unit} is not in the store {self.describe()} (no manifest at "
                                    f"{self._manifest_path(unit)}); run the stage that writes it first")
        stored = {path: [k for k in manifest["files"] if k == self.where(path) or k.startswith(self.where(path) + "/")]
                  for path in paths}
        stored = {path: keys for path, keys in stored.items() if keys}  # a stage may write no metrics file
        local_record = published_manifest(self.cfg, unit)
        if (local_record.is_file() and json.loads(local_record.read_text()) == manifest
                and all(Path(p).exists() for p in stored)):
            return
        received = 0
        for path, keys in stored.items():
            prefix = self.where(path)
            if keys == [prefix]:  # a single file
                received += self._download(prefix, path, manifest["files"][prefix])
            else:
                with stage_output(path, unit.split("@")[0]) as fresh:
                    (fresh / MARKER).unlink()  # the stored one comes back with the rest
                    for key in keys:
                        received += self._download(key, fresh / key[len(prefix) + 1:], manifest["files"][key])
        atomic_write_text(local_record, json.dumps(manifest, sort_keys=True))
        _report("fetched", unit, len(manifest["files"]), received, began, self.describe())

    # --- single files: resume checkpoints

    def save_copy(self, local: Path) -> None:
        began = time.perf_counter()
        sent = self._upload(local, self.where(local))
        _report("saved", local.name, 1, sent, began, self.describe())

    def load_copy(self, local: Path) -> bool:
        """Download the store's copy of ``local`` over it; False when the store has none."""
        from pyarrow.fs import FileType

        key = self.where(local)
        if self.fs.get_file_info(key).type != FileType.File:
            return False
        began = time.perf_counter()
        received = self._download(key, local, None)
        _report("loaded", local.name, 1, received, began, self.describe())
        return True

    # --- objects

    def _manifest_path(self, unit: str) -> str:
        return self.where(published_manifest(self.cfg, unit))

    def _manifest(self, unit: str) -> dict | None:
        from pyarrow.fs import FileType

        key = self._manifest_path(unit)
        if self.fs.get_file_info(key).type != FileType.File:
            return None
        with self.fs.open_input_stream(key) as stream:
            return json.loads(stream.readall())

    def _put(self, key: str, data: bytes) -> None:
        with self._writer(key) as stream:
            stream.write(data)

    @contextmanager
    def _writer(self, key: str):
        """An output stream that shows nothing under ``key`` until it is complete: S3 makes an object visible only
        when its upload completes; on a filesystem, a temp name renamed at the end."""
        if self.s3:
            with self.fs.open_output_stream(key) as stream:
                yield stream
            return
        self.fs.create_dir(key.rsplit("/", 1)[0], recursive=True)
        tmp = f"{key}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as stream:
                yield stream
            self.fs.move(tmp, key)
        except BaseException:
            self._delete(tmp)
            raise

    def _upload(self, local: Path, key: str) -> int:
        with open(local, "rb") as source, self._writer(key) as stream:
            while block := source.read(CHUNK):
                stream.write(block)
        return local.stat().st_size

    def _download(self, key: str, local: Path, expected: dict | None) -> int:
        """``key`` into ``local`` (a temp file renamed), checked against its manifest entry when given."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:12]}.tmp")
        digest, size = hashlib.sha256(), 0
        try:
            with self.fs.open_input_stream(key) as stream, open(tmp, "wb") as out:
                while block := stream.read(CHUNK):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
            if expected is not None and (digest.hexdigest(), size) != (expected["sha256"], expected["size"]):
                raise StoreError(f"{key} in the store {self.describe()} does not match its manifest (written "
                                 "again while being read?); run again")
            tmp.replace(local)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def _delete(self, key: str) -> None:
        try:
            self.fs.delete_file(key)
        except FileNotFoundError:
            pass


def _filesystem(uri: str, endpoint: str):
    """(pyarrow filesystem, root path in it) for an ``s3://`` or ``file:///`` URI."""
    from pyarrow import fs

    if uri.startswith("file://"):
        return fs.LocalFileSystem(), uri.removeprefix("file://").rstrip("/")
    scheme, _, host = endpoint.partition("://")
    # a few quick tries: an unreachable store should be an error within seconds, not minutes of retries
    return fs.S3FileSystem(endpoint_override=host or None, scheme=scheme or "https", connect_timeout=5,
                           request_timeout=60,
                           retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=3)), uri.removeprefix("s3://")


def _files(path: Path) -> list[Path]:
    """The files a stage wrote at ``path`` (a folder or a file), without temp files of interrupted writes."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.endswith(".tmp")) if path.is_dir() else []


def _report(what: str, name: str, files: int, size: int, began: float, where: str) -> None:
    print(f"store: {what} {name} ({files} file(s), {size / 1e6:.2f} MB moved, {time.perf_counter() - began:.2f} s) "
          f"{'to' if what in ('published', 'saved') else 'from'} {where}", flush=True)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def store_for(cfg: Config) -> Store | None:
    """The experiment's store, bound to its folder ``cfg.work``; None when outputs live in the folder only."""
    return Store(cfg) if cfg.cluster.storage else None


# Experiment folders whose stage is running now, and their stores: how checkpoints (``io.Resumable``) find theirs.
_mirrored: dict[Path, Store] = {}
_mirrored_lock = threading.Lock()


def mirror_of(path: Path) -> Store | None:
    """The store of the running stage whose experiment folder holds ``path``, if it has one."""
    with _mirrored_lock:
        return next((store for work, store in _mirrored.items() if Path(path).is_relative_to(work)), None)


@contextmanager
def staged(cfg: Config, output: Unit, inputs: list[Unit]) -> Iterator[None]:
    """Around one stage run: fetch the ``inputs`` the experiment folder lacks, mirror checkpoints while it runs,
    publish ``output`` when it succeeds and wrote it (a DDP worker other than rank 0 writes nothing)."""
    store = store_for(cfg)
    if store is None:
        yield
        return
    for unit, paths in inputs:
        if not Path(paths[0]).exists():  # its folder: the experiment folder has it (the driver's), or a worker's lacks it
            store.fetch(unit, paths)
    work = Path(cfg.work).resolve()
    with _mirrored_lock:
        _mirrored[work] = store
    try:
        yield
    finally:
        with _mirrored_lock:
            _mirrored.pop(work, None)
    unit, paths = output
    written = [p for p in paths if Path(p).exists()]
    if written:
        store.publish(unit, written)


@contextmanager
def node_local(cfg: Config) -> Iterator[Config]:
    """``cfg`` with its experiment folder in a scratch folder of this node when outputs go through a store (so a
    worker needs no path of the driver's disk, and reads what it needs from the store), else ``cfg`` itself."""
    if not cfg.cluster.storage:
        with nullcontext(cfg) as same:
            yield same
        return
    with tempfile.TemporaryDirectory(prefix="logdiff-node-") as scratch:
        yield dataclasses.replace(cfg, workdir=str(Path(scratch) / cfg.name))
