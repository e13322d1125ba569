"""Atomic file writes, the small JSON records every stage leaves beside its outputs, and safe model files.

Model files (the autoencoder, the codec, every trained model) are safetensors with their settings as JSON in the
header: loading one never unpickles anything, so a file from a shared registry cannot run code. Training
checkpoints, which never leave the project, are torch files loaded with ``weights_only=True`` for the same reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write through ``write(tmp_path)`` to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # mode 0o666 filtered by the process umask, like any other new file (mkstemp would make it 0600)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


MARKER = ".logdiff-stage"  # in every folder a stage wrote: the pipeline replaces no folder without it


def check_replaceable(folder: Path) -> None:
    """A one-line error unless ``folder`` is absent or a folder a LogDiff stage wrote (it holds the marker)."""
    if folder.exists() and not (folder / MARKER).is_file():
        raise FileExistsError(f"{folder} exists and was not written by logdiff (no {MARKER} marker inside); "
                              "move it away or choose another workdir: logdiff replaces only its own folders")


@contextmanager
def stage_output(folder: str | Path, stage: str) -> Iterator[Path]:
    """A fresh, empty folder for a stage's outputs, swapped in whole over ``folder`` when the block succeeds and
    removed when it fails: ``folder`` holds exactly what the stage's last successful run wrote, never a mix."""
    folder = Path(folder)
    check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in folder.parent.glob(f".{folder.name}.*.tmp"):  # from a run that was killed outright
        shutil.rmtree(leftover, ignore_errors=True)
    fresh = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp"
    fresh.mkdir()
    try:
        (fresh / MARKER).write_text(json.dumps({"stage": stage}) + "\n")
        yield fresh
        previous = fresh.with_name(fresh.name.replace(".tmp", ".old.tmp"))
        if folder.exists():
            os.replace(folder, previous)
        os.replace(fresh, folder)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file handle: given a name, torch.save records it (random here) inside
            torch.save(obj, fh)

    return _atomic(path, save)


def atomic_save_with(path: str | Path, save: Callable[[str], None]) -> Path:
    """Atomic write for libraries that want a path (pyarrow, PIL, matplotlib)."""
    return _atomic(path, save)


def atomic_save_numpy(path: str | Path, array) -> Path:
    import numpy as np

    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.save would append ".npy" to a bare temp name
            np.save(fh, array)

    return _atomic(path, save)


def write_json(path: str | Path, record: dict) -> Path:
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def fingerprint(payload: dict) -> str:
    """A short stable hash of a JSON-able dict: what a checkpoint must match to be resumed."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, what: str) -> dict:
    """torch.load of tensors and plain containers only, with a one-line error naming the file and its stage."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} checkpoint {path} not found; run the stage that writes it first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file, or one carrying pickled objects
        raise ValueError(f"{what} checkpoint {path} is unreadable or unsafe ({type(err).__name__}); "
                         "delete it and rerun") from None


_METADATA_KEY = "logdiff"


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], settings: dict) -> Path:
    """``tensors`` as safetensors, with ``settings`` (JSON-able) in the header; atomic and byte-reproducible."""
    from safetensors.torch import save

    blob = save({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()},
                metadata={_METADATA_KEY: json.dumps(settings, sort_keys=True, default=str)})
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(blob))


def load_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, settings) of a file written by ``save_safetensors``; anything else is a one-line ValueError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; run the stage that writes it first")
    try:
        with safe_open(str(path), framework="pt") as file:
            settings = json.loads((file.metadata() or {})[_METADATA_KEY])
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except Exception:  # truncated, foreign, or a pickle (which is never loaded)
        raise ValueError(f"{path} is not a LogDiff {what} file (safetensors with LogDiff settings); nothing in it "
                         "was loaded. Rerun the stage that writes it") from None
    return tensors, settings


def read_safetensors_settings(path: str | Path, what: str) -> dict:
    """Only the settings of a ``save_safetensors`` file: its header, no tensors read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return json.loads((file.metadata() or {})[_METADATA_KEY])
    except Exception:
        raise ValueError(f"{path} is not a LogDiff {what} file (safetensors with LogDiff settings)") from None


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}": tensor for name, tensor in tensors.items()}


def under_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix...``, with the prefix removed."""
    return {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def without_run_length(section: dict) -> dict:
    """A training section without the keys that only say how long and how often (steps, checkpoint and log
    intervals): a run may resume under a longer or more often logged version of itself."""
    return {k: v for k, v in section.items() if k not in ("steps", "checkpoint_every", "log_every")}


class Resumable:
    """A training run's state, saved atomically every few steps and restored after a kill when the run's
    ``fingerprint`` (its data and settings) still matches and the saved step is within the run's length.

    ``stateful`` objects (modules, optimizers, LR schedulers) are saved and restored through their state dicts;
    anything else (generator states, histories) goes through ``save``'s keywords and ``restore``'s result.
    """

    def __init__(self, path: str | Path, fingerprint: str, what: str, **stateful: Any) -> None:
        self.path, self.fingerprint, self.what, self.stateful = Path(path), fingerprint, what, stateful

    def restore(self, max_step: int) -> dict | None:
        """The saved extras (with ``step``) after loading every stateful object, or None to start afresh."""
        from .storage import mirror_of

        if (store := mirror_of(self.path)) is not None:  # the latest, whichever node saved it
            store.load_copy(self.path)
        if not self.path.exists():
            return None
        state = load_checkpoint(self.path, f"{self.what} training")
        if state.get("fingerprint") != self.fingerprint or state["step"] > max_step:
            return None
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        return state

    def save(self, step: int, **extras: Any) -> None:
        from .storage import mirror_of

        state = {name: obj.state_dict() for name, obj in self.stateful.items()}
        atomic_torch_save({**state, **extras, "step": step, "fingerprint": self.fingerprint}, self.path)
        if (store := mirror_of(self.path)) is not None:  # for a retry on another node
            store.save_copy(self.path)
