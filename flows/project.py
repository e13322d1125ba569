"""A LogDiff project on disk: the folder holding the DVC repository, the MLflow store and one folder per
experiment (``artifacts/<name>/`` by default), each with its own ``dvc.yaml``, ``params.yaml`` and ``dvc.lock``,
so switching between presets never makes another experiment stale.

- ``project_lock``: one pipeline run per project at a time. A second run exits at once, naming the first; the
  lock is the kernel's (``flock``), so a killed run leaves nothing to clean up.
- ``prepare_experiment``: the DVC repository (made once), the experiment's folder with its pipeline and config.
- ``dvc``: DVC's command line, its failures turned into one line in our words.
- ``StaleStages``: which stages must run, as DVC sees it, kept current as stages run.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tasks import config
from tasks.config import Config
from tasks.io import atomic_write_text
from tasks.paths import STATE

PIPELINE_TEMPLATE = Path(__file__).resolve().parent.parent / "conf" / "pipeline" / "dvc.yaml"
_held: dict[Path, object] = {}  # project locks this process holds, so that nested takers (the flow) re-enter


class ProjectLocked(RuntimeError):
    """Another pipeline run holds the project; the message names it."""


class DvcError(RuntimeError):
    """A DVC command failed; the message is DVC's error in one line."""


def ignored_state_dir(folder: Path) -> Path:
    """``folder`` (made if missing) with a ``.gitignore`` that ignores everything in it, itself included."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / ".gitignore").exists():
        atomic_write_text(folder / ".gitignore", "# logdiff state: not outputs, never tracked\n*\n")
    return folder


@contextmanager
def project_lock(project: Path) -> Iterator[None]:
    """Hold the project for one pipeline run; ``ProjectLocked`` at once if another process holds it."""
    project = project.resolve()
    if project in _held:
        yield
        return
    path = ignored_state_dir(project / STATE) / "lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        try:
            who = json.loads(holder)
            said = f"pid {who['pid']}, started {who['started']}: {who['command']}"
        except (ValueError, KeyError):  # the holder is still writing its record
            said = "a run that is just starting"
        raise ProjectLocked(f"another logdiff run is using {project} ({said}); wait for it to finish or stop it") \
            from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(["logdiff", *sys.argv[1:]])}) + "\n")
    handle.flush()
    _held[project] = handle
    try:
        yield
    finally:
        del _held[project]
        handle.close()  # releases the lock; a killed process releases it too


def dvc(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``dvc <args>`` in ``cwd``; a failure is a ``DvcError`` carrying DVC's own error line, not its banner."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        error = next((line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")),
                     lines[0] if lines else f"exit code {result.returncode}")
        raise DvcError(f"dvc {args[0]} failed in {cwd}: {error}")
    return result


def _git_top(folder: Path) -> Path | None:
    """The top folder of the git repository holding ``folder``, or None outside git."""
    try:
        result = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True)
    except OSError:  # no git installed
        return None
    return Path(result.stdout.strip()).resolve() if result.returncode == 0 else None


def _init_options(project: Path) -> list[str]:
    """``dvc init``'s options for ``project``: no SCM outside git or in a folder git ignores, ``--subdir`` in a
    folder inside a repository (``dvc init`` refuses both places without them)."""
    top = _git_top(project)
    if top is None or subprocess.run(["git", "check-ignore", "-q", str(project)], cwd=project).returncode == 0:
        return ["--no-scm"]
    return [] if top == project.resolve() else ["--subdir"]


def prepare_experiment(project: Path, cfg: Config) -> Path:
    """Make ``project`` a DVC repository (once) and ``cfg``'s experiment folder a pipeline of its own: the template
    ``dvc.yaml`` and the resolved config as ``params.yaml``. Returns the experiment folder (absolute)."""
    project.mkdir(parents=True, exist_ok=True)
    if not (project / ".dvc").is_dir():
        dvc(project, ["init", "--quiet", *_init_options(project)])
        dvc(project, ["config", "core.autostage", "false"])
    folder = (project / cfg.work).resolve()
    if not folder.is_relative_to(project) or folder == project:
        raise ValueError(f"workdir={cfg.workdir}: the experiment folder must be a subfolder of the project {project}")
    experiment_file = folder / STATE / "experiment.json"
    if folder.exists() and any(folder.iterdir()) and not experiment_file.is_file():
        raise FileExistsError(f"{folder} exists and is not a logdiff experiment folder (no {STATE}/experiment.json); "
                              "choose another workdir or name, or move it away")
    ignored_state_dir(experiment_file.parent)
    atomic_write_text(experiment_file, json.dumps({"name": cfg.name}) + "\n")
    template = PIPELINE_TEMPLATE.read_text()
    if not (folder / "dvc.yaml").is_file() or (folder / "dvc.yaml").read_text() != template:
        atomic_write_text(folder / "dvc.yaml", template)
    config.dump(cfg, folder / "params.yaml")
    return folder


def stale_stages(experiment: Path, names: list[str]) -> set[str]:
    """The stages among ``names`` whose deps, params or outputs changed since they were last recorded."""
    # the CLI, not dvc.repo.Repo: in-process DVC resolves dvc.yaml's `vars` files against the caller's cwd
    status = json.loads(dvc(experiment, ["status", "--json", *names]).stdout or "{}")
    return {name for name in names if name in status}


class StaleStages:
    """Which stages must run, as DVC sees it, kept current as stages run: ``ran(name)`` records a stage's outputs
    in dvc.lock (``dvc commit``, as ``dvc repro`` would have), and the next question about a stage not yet known
    to be stale asks DVC again, since new outputs make the stages below them stale."""

    def __init__(self, experiment: Path, names: list[str], force: bool) -> None:
        self.experiment, self.names = experiment, names
        self.stale = set(names) if force else stale_stages(experiment, names)
        self.ran_since_check = False

    def __contains__(self, name: str) -> bool:
        if name not in self.stale and self.ran_since_check:
            self.stale |= stale_stages(self.experiment, self.names)
            self.ran_since_check = False
        return name in self.stale

    def ran(self, name: str) -> None:
        dvc(self.experiment, ["commit", "--force", "--quiet", name])
        self.stale.discard(name)
        self.ran_since_check = True
