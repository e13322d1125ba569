"""A user's clone of a project whose root pipeline is committed (``logdiff pipeline``, then git): ``dvc repro``
runs every stage from nothing, as DVC starts them (``logdiff stage ...``), and leaves ``dvc status`` clean. Its own
module, with no Prefect or Ray: a test worker can run it beside the flow's tests."""
import json

import pytest
import yaml

from flows.cli import main as cli
from projects import TINY, dvc, dvc_status, git

pytestmark = pytest.mark.slow


def test_dvc_repro_in_a_fresh_clone_runs_the_root_pipeline(tmp_path, capsys):
    project, clone = tmp_path / "project", tmp_path / "clone"
    project.mkdir()
    git(project, "init", "-q")
    one_model = [*TINY, "diffusion.distributions={gaussian: {}}"]  # the later override replaces the mapping
    assert cli(["pipeline", "demo", *one_model, "--project-dir", str(project)]) == 0
    assert "run it with: cd" in capsys.readouterr().out
    git(project, "add", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore")
    git(project, "commit", "-q", "-m", "the demo's pipeline at test size")
    git(tmp_path, "clone", "-q", str(project), str(clone))
    assert yaml.safe_load((clone / "params.yaml").read_text())["diffusion"]["distributions"] == {"gaussian": {}}
    ran = dvc(clone, "repro")
    assert [line.split("'")[1] for line in ran.splitlines() if line.startswith("Running stage")] == [
        "ingest", "autoencoder", "encode@identity", "classifier", "baselines@identity",
        "train@gaussian-identity-0", "evaluate@gaussian-identity-0", "report"]
    assert dvc_status(clone) == {}
    report = json.loads((clone / "artifacts" / "demo" / "metrics" / "report.json").read_text())
    assert set(report) == {"changed", "gaussian"} and report["gaussian"] > 0
