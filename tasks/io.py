"""Atomic file writes and the small JSON records every stage leaves beside its outputs."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

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
    """torch.load with a one-line error naming the file and the stage that makes it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} checkpoint {path} not found; run the stage that writes it first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{what} checkpoint {path} is unreadable ({type(err).__name__}); delete it and rerun") from None


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
        if not self.path.exists():
            return None
        state = load_checkpoint(self.path, f"{self.what} training")
        if state.get("fingerprint") != self.fingerprint or state["step"] > max_step:
            return None
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        return state

    def save(self, step: int, **extras: Any) -> None:
        state = {name: obj.state_dict() for name, obj in self.stateful.items()}
        atomic_torch_save({**state, **extras, "step": step, "fingerprint": self.fingerprint}, self.path)
