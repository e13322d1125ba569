"""Runs never leave stale or foreign files behind, never replace what is not theirs, and never run twice at once."""
import json
import multiprocessing
import os
import signal
import time

import pytest

from flows.project import ProjectLocked, project_lock
from tasks.io import MARKER, stage_output


def test_a_stage_folder_holds_only_what_its_last_run_wrote(tmp_path):
    folder = tmp_path / "eval" / "gaussian"
    with stage_output(folder, "evaluate") as out:
        (out / "samples.png").write_text("digits")
        (out / "histograms.png").write_text("wine")
    with stage_output(folder, "evaluate") as out:
        (out / "samples.png").write_text("digits again")
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "samples.png"]
    assert (folder / "samples.png").read_text() == "digits again"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["gaussian"]  # no temp folders left


def test_a_failed_stage_leaves_the_previous_outputs_as_they_were(tmp_path):
    folder = tmp_path / "train" / "laplace"
    with stage_output(folder, "train") as out:
        (out / "model.safetensors").write_text("v1")
    with pytest.raises(RuntimeError), stage_output(folder, "train") as out:
        (out / "model.safetensors").write_text("half")
        raise RuntimeError("diverged")
    assert (folder / "model.safetensors").read_text() == "v1"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["laplace"]


def test_a_folder_logdiff_did_not_write_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="was not written by logdiff") as err:
        with stage_output(folder, "ingest"):
            pass
    assert "\n" not in str(err.value) and (folder / "mine.txt").read_text() == "a user's file"


def _hold_lock(project, ready):
    with project_lock(project):
        ready.set()
        time.sleep(60)


def test_a_second_run_in_the_same_project_fails_at_once_naming_the_first(tmp_path):
    ready = multiprocessing.get_context("spawn").Event()
    holder = multiprocessing.get_context("spawn").Process(target=_hold_lock, args=(tmp_path, ready))
    holder.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        with pytest.raises(ProjectLocked, match=f"pid {holder.pid}, started .*") as err:
            with project_lock(tmp_path):
                pass
        assert time.monotonic() - started < 2 and "\n" not in str(err.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a run killed outright: its lock goes with it
        holder.join()
    with project_lock(tmp_path):  # taken over at once, nothing to clean up
        record = json.loads((tmp_path / ".logdiff" / "lock").read_text())
        assert record["pid"] == os.getpid()
        with project_lock(tmp_path):  # the flow re-enters the lock its CLI took
            pass


def test_a_project_folder_inside_a_git_repository_gets_a_dvc_repository_of_its_own(tmp_path):
    """`--project-dir` may be any folder: outside git, a git repository's top, a folder inside one (DVC's
    --subdir) or a folder git ignores (no SCM): `dvc init` fails in the last two without the option."""
    import subprocess

    from flows.project import _init_options

    outside, repository = tmp_path / "outside", tmp_path / "repository"
    for folder in (outside, repository / "runs", repository / "scratch"):
        folder.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repository)], check=True)
    (repository / ".gitignore").write_text("/scratch/\n")
    assert [_init_options(folder) for folder in (outside, repository, repository / "runs", repository / "scratch")] \
        == [["--no-scm"], [], ["--subdir"], ["--no-scm"]]


def test_a_runs_dvc_commands_share_one_dvc_process_per_folder_that_answers_as_the_command_line(tmp_path):
    """Inside a pipeline run (``dvc_processes``) each folder's DVC commands go through one DVC process: the same
    output and one-line errors as ``dvc`` run on its own, and no process left behind once the run is over."""
    from flows import project
    from flows.project import DvcError, dvc, dvc_processes

    folder = tmp_path / "experiment"
    folder.mkdir()
    stage = "stages:\n  make:\n    cmd: echo made > out.txt\n    outs: [out.txt]\n"
    with dvc_processes():
        dvc(folder, ["init", "--no-scm", "--quiet"])
        (folder / "dvc.yaml").write_text(stage)
        (folder / "out.txt").write_text("made\n")
        stale = json.loads(dvc(folder, ["status", "--json"]).stdout)
        dvc(folder, ["commit", "--force", "--quiet", "make"])
        recorded = json.loads(dvc(folder, ["status", "--json"]).stdout)
        with pytest.raises(DvcError) as inside:
            dvc(folder, ["commit", "--force", "no-such-stage"])
        with dvc_processes():  # nested: the outer run's processes
            dvc(folder, ["status"])
        started = list(project._dvc_processes.values())
    assert set(stale) == {"make"} and recorded == {}
    assert "dvc.lock" in os.listdir(folder)
    assert len(started) == 1 and started[0].process.returncode == 0  # ended with the run
    with pytest.raises(DvcError) as alone:
        dvc(folder, ["commit", "--force", "no-such-stage"])
    assert str(inside.value) == str(alone.value) and "no-such-stage" in str(alone.value)
    assert "\n" not in str(alone.value)
