"""What a user sees of a run: options accepted anywhere after the command, progress as a few whole lines where the
output is a log or a pipe, no warning from Ray on every run, and where the time went."""
import io
import json
import time
from dataclasses import replace

import pytest

from flows.cli import parse_args
from logdiff_core import progress
from tasks import config, timings


@pytest.mark.parametrize("argv", [
    ["run", "cifar10-cpu", "--project-dir", "DIR", "train.steps=5", "eval.fid=false"],
    ["run", "--project-dir", "DIR", "cifar10-cpu", "train.steps=5", "eval.fid=false"],
    ["run", "cifar10-cpu", "train.steps=5", "--project-dir", "DIR", "eval.fid=false"],
])
def test_options_go_before_or_after_the_preset_and_its_overrides(argv):
    args = parse_args(argv)
    assert (args.command, args.preset, args.project_dir) == ("run", "cifar10-cpu", "DIR")
    assert args.overrides == ["train.steps=5", "eval.fid=false"]


def test_an_unknown_option_after_the_preset_is_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["run", "cifar10-cpu", "--project-dir", "DIR", "train.steps=5", "--forse"])
    assert exit_.value.code == 2 and "unrecognized arguments: --forse" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_few_whole_lines_in_a_log_and_a_bar_on_a_terminal(monkeypatch):
    log = io.StringIO()
    for step in (bar := progress.progress_bar(range(5000), desc="train gaussian", file=log)):
        bar.set_postfix(loss="0.5", refresh=False)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2  # fast work: where it starts and where it ends
    assert lines[0].startswith("train gaussian:   0% 0/5000")
    assert lines[1].startswith("train gaussian: 100% 5000/5000 [") and "it/s, loss=0.5]" in lines[1]

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # time is no limit: a line each 10% of the work
    log = io.StringIO()
    for _ in progress.progress_bar(range(1000, 5000), desc="resumed", initial=1000, total=5000, file=log):
        time.sleep(1e-5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("resumed:  20% 1000/5000") and "<" in lines[5]  # with an ETA

    terminal = Terminal()
    for _ in progress.progress_bar(range(3), desc="bar", file=terminal):
        pass
    assert "\r" in terminal.getvalue()


def test_the_report_says_where_the_time_went(tmp_path):
    cfg = replace(config.load("demo"), workdir=str(tmp_path))
    folder = tmp_path / ".logdiff" / "timings"
    folder.mkdir(parents=True)
    recorded = {"ingest": (100.0, 2.0), "autoencoder": (103.0, 60.0), "train@gaussian-identity-0": (170.0, 300.0),
                "train@laplace-identity-0": (171.0, 320.0), "evaluate@gaussian-identity-0": (492.0, 30.0),
                "report": (10.0, 3.0), "classifier": (50.0, 5.0)}  # the last two: from an earlier run
    for name, (started, seconds) in recorded.items():
        (folder / f"{name}.json").write_text(json.dumps({"started": started, "seconds": seconds}))
    timings.mark_run_start(cfg, 90.0)
    summary = timings.phases(cfg, running="report", now=530.0)
    assert list(summary["stages"]) == ["ingest", "autoencoder", "train", "evaluate"]
    assert summary["stages"]["train"] == {"seconds": 321.0, "items": 2, "each_min": 300.0, "each_max": 320.0}
    assert summary["total"] == 440.0 and summary["other"] == 440.0 - (2 + 60 + 321 + 30)
    assert summary["up_to_date"] == ["classifier"]
    section = "\n".join(timings.markdown(cfg, running="report"))
    assert "| train | 5 min 21 s | 2 runs, 5 min 00 s to 5 min 20 s each |" in section
    assert "Up to date, not run: classifier." in section
    with timings.timed(cfg, "encode@identity") as timing:
        pass
    assert timing["seconds"] >= 0 and (folder / "encode@identity.json").exists()
