"""A LogDiff project on disk: the folder holding the DVC repository, the MLflow store and one folder per
experiment (``artifacts/<name>/`` by default) holding its outputs.

Each experiment is a DVC pipeline of its own, so switching between presets never makes another experiment stale.
The project's **root experiment** (the default preset's, ``demo``) is the pipeline at the project root: the
committed ``dvc.yaml`` and ``params.yaml``, where ``dvc repro``, ``dvc exp run -S key=value`` and ``dvc exp show``
work as in any DVC project. Every other experiment keeps ``dvc.yaml``, ``params.yaml`` and ``dvc.lock`` in its own
folder, made a DVC repository nested in the project's (``dvc init --subdir``), which the root's commands leave out.

- ``project_lock``: one pipeline run per project at a time. A second run exits at once, naming the first; the
  lock is the kernel's (``flock``), so a killed run leaves nothing to clean up.
- ``prepare_experiment``: the DVC repository (made once), the experiment's pipeline and config, its folder.
- ``experiment_of``: the project and experiment folder of a ``params.yaml`` (what ``logdiff stage`` runs in).
- ``dvc``: DVC's command line, its failures turned into one line in our words; ``dvc_processes``: within it, one
  DVC process per folder runs its commands (DVC imported once per run, not once per command).
- ``StaleStages``: which stages must run, as DVC sees it, kept current as stages run.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from flows.stages import ROOT_WORK, pipeline_yaml
from tasks import config
from tasks.config import Config
from tasks.io import atomic_write_text
from tasks.paths import PARAMS_FILE, STATE

log = logging.getLogger(__name__)
PIPELINE_FILE = "dvc.yaml"
DEFAULT_ROOT_EXPERIMENT = "demo"  # the root pipeline's experiment in a project that has no params.yaml yet
EXPERIMENT_MARK = "experiment.json"  # in <experiment>/.logdiff/: the folder is a logdiff experiment's
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
    """Run ``dvc <args>`` in ``cwd`` (through the folder's DVC process inside ``dvc_processes()``, else a process
    of its own); a failure is a ``DvcError`` carrying DVC's own error line, not its banner."""
    process = _dvc_process(Path(cwd))
    result = process.run(args) if process else subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=_dvc_env(), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        error = next((line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")),
                     lines[0] if lines else f"exit code {result.returncode}")
        raise DvcError(f"dvc {args[0]} failed in {cwd}: {error}")
    return result


def _dvc_env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


class _DvcProcess:
    """``flows/dvc_process.py`` running in one folder: DVC imported once for every command asked of it there."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.lock = threading.Lock()  # one command at a time: a request, then its reply
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dvc_process.py"))],
                                        cwd=cwd, env=_dvc_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def run(self, args: list[str]) -> subprocess.CompletedProcess:
        with self.lock:
            try:
                self.process.stdin.write(json.dumps(args) + "\n")
                self.process.stdin.flush()
                line = self.process.stdout.readline()
            except BrokenPipeError:
                line = ""
        if not line:
            raise DvcError(f"dvc {args[0]} failed in {self.cwd}: DVC's process ended "
                           f"(exit code {self.process.wait()})")
        reply = json.loads(line)
        return subprocess.CompletedProcess(["dvc", *args], reply["code"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        self.process.stdin.close()  # its end of input: it exits
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


_dvc_processes: dict[Path, _DvcProcess] | None = None  # by folder, while dvc_processes() is open
_dvc_processes_lock = threading.Lock()


@contextmanager
def dvc_processes() -> Iterator[None]:
    """Within: ``dvc`` runs each folder's commands in one DVC process, started when first needed and ended on the
    way out (a pipeline run's dozen commands then pay DVC's import once). Nested uses share the outer one's."""
    global _dvc_processes
    with _dvc_processes_lock:
        if _dvc_processes is not None:
            owner = False
        else:
            owner, _dvc_processes = True, {}
    try:
        yield
    finally:
        if owner:
            with _dvc_processes_lock:
                processes, _dvc_processes = _dvc_processes, None
            for process in processes.values():
                process.close()


def _dvc_process(cwd: Path) -> _DvcProcess | None:
    with _dvc_processes_lock:
        if _dvc_processes is None:
            return None
        folder = cwd.resolve()
        if folder not in _dvc_processes:
            _dvc_processes[folder] = _DvcProcess(folder)
        return _dvc_processes[folder]


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


def pipeline_text(work: str) -> str:
    """``dvc.yaml`` as the stage table writes it (``flows.stages.pipeline_yaml``), with a header saying so."""
    where = "the project's root experiment" if work == ROOT_WORK else "this experiment"
    return (f"# The DVC pipeline of {where}, written by logdiff from its one stage table (flows/stages.py):\n"
            "# regenerate with `logdiff pipeline`, do not edit. Each command is a stage function of the Prefect flow.\n"
            + yaml.safe_dump(pipeline_yaml(work), sort_keys=False, width=1000))


def root_experiment(project: Path) -> str:
    """The experiment the project's root pipeline belongs to: the one its ``params.yaml`` names (the default
    preset's while there is none)."""
    params = project / PARAMS_FILE
    return config.read_yaml(params).get("name", DEFAULT_ROOT_EXPERIMENT) if params.is_file() \
        else DEFAULT_ROOT_EXPERIMENT


@dataclass(frozen=True)
class Pipeline:
    """Where an experiment's DVC pipeline lives (``dvc.yaml``, ``params.yaml``, ``dvc.lock``: the folder DVC
    commands run in) and where its outputs go (both absolute)."""

    folder: Path
    experiment: Path


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _is_experiment_pipeline(folder: Path) -> bool:
    """Whether ``folder`` holds an experiment's own pipeline: marked by logdiff, or (in a clone, since git does not
    keep the mark) with the ``dvc.yaml`` logdiff writes there."""
    pipeline = folder / PIPELINE_FILE
    return (folder / STATE / EXPERIMENT_MARK).is_file() or (pipeline.is_file() and
                                                            pipeline.read_text() == pipeline_text("."))


def _mark_experiment(folder: Path, cfg: Config, root: bool) -> None:
    """Make ``folder`` the experiment's, marked as logdiff's (a folder logdiff may replace parts of): a folder of
    someone else's is refused; the root experiment's (named by the root pipeline) is logdiff's by definition."""
    mark = folder / STATE / EXPERIMENT_MARK
    if folder.exists() and any(folder.iterdir()) and not root and not _is_experiment_pipeline(folder):
        raise FileExistsError(f"{folder} exists and is not a logdiff experiment folder (no {STATE}/{EXPERIMENT_MARK});"
                              " choose another workdir or name, or move it away")
    ignored_state_dir(mark.parent)
    _write_if_changed(mark, json.dumps({"name": cfg.name}) + "\n")


def prepare_experiment(project: Path, cfg: Config) -> Pipeline:
    """Make ``project`` a DVC repository (once), then write ``cfg``'s pipeline and resolved config: at the project
    root for the root experiment, else in the experiment's folder, made a nested DVC repository."""
    project.mkdir(parents=True, exist_ok=True)
    if not (project / ".dvc").is_dir():
        dvc(project, ["init", "--quiet", *_init_options(project)])
        dvc(project, ["config", "core.autostage", "false"])
    folder = (project / cfg.work).resolve()
    if not folder.is_relative_to(project) or folder == project:
        raise ValueError(f"workdir={cfg.workdir}: the experiment folder must be a subfolder of the project {project}")
    root = cfg.name == root_experiment(project)
    if root and cfg.workdir is not None:
        raise ValueError(f"workdir={cfg.workdir}: experiment {cfg.name} is the project's root pipeline, whose folder "
                         f"is {ROOT_WORK.replace('${name}', cfg.name)}; leave workdir unset or rename the experiment")
    _mark_experiment(folder, cfg, root)
    pipeline_folder = project if root else folder
    if root:
        _retire_own_pipeline(folder)
    elif not (folder / ".dvc").is_dir():  # its own DVC repository, which the root's commands leave out
        dvc(folder, ["init", "--quiet", "--subdir" if _git_top(project) is not None else "--no-scm"])
        dvc(folder, ["config", "core.autostage", "false"])
    _write_if_changed(pipeline_folder / PIPELINE_FILE, pipeline_text(ROOT_WORK if root else "."))
    config.dump(cfg, pipeline_folder / PARAMS_FILE)
    return Pipeline(pipeline_folder, folder)


def _retire_own_pipeline(folder: Path) -> None:
    """The root experiment's folder as it was before the root pipeline (its own dvc.yaml, params.yaml, dvc.lock):
    those files go, or DVC would see two pipelines writing the same outputs. Its stages run once more."""
    if (folder / ".dvc").is_dir() or not (folder / PIPELINE_FILE).is_file():
        return
    for name in (PIPELINE_FILE, PARAMS_FILE, "dvc.lock"):
        (folder / name).unlink(missing_ok=True)
    log.warning("%s: its pipeline is now the project's root pipeline (dvc.yaml at the project root); its stages "
                "run once more under it", folder)


def experiment_of(params_file: str | Path) -> tuple[Config, Path, Path]:
    """The config in ``params_file``, the project and the experiment folder (absolute) it belongs to: for the
    project's root ``params.yaml``, the folder its name gives (made and marked if missing); for an experiment's own
    ``params.yaml``, the folder holding it."""
    params = Path(params_file).resolve()
    cfg = config.load(str(params))
    folder = params.parent
    if _is_experiment_pipeline(folder):
        project = next((p for p in folder.parents if (p / ".dvc").is_dir()), folder)
        return cfg, project, folder
    if cfg.workdir is not None:
        raise ValueError(f"{params}: the root pipeline's experiment lives in {ROOT_WORK.replace('${name}', cfg.name)};"
                         " remove workdir from it")
    experiment = folder / cfg.work
    _mark_experiment(experiment, cfg, root=True)
    return cfg, folder, experiment


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
