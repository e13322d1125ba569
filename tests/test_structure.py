"""The structure the project relies on: stage modules never import each other, and the DVC pipelines are what the
one stage table writes."""
import ast
from pathlib import Path

import yaml

from flows.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
STAGE_MODULES = {"ingest", "autoencoder", "encode", "classifier", "baselines", "train", "evaluate", "report"}


def imported_task_modules(path: Path) -> set[str]:
    """The ``tasks`` modules a file imports, relative (``from .x``) or absolute (``from tasks.x``, ``import tasks.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("tasks."):
                found.add(node.module.split(".")[1])
            elif node.module == "tasks":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tasks."))
    return found


def test_every_stage_has_a_module_and_the_table_names_them_all():
    assert set(STAGES) == STAGE_MODULES
    assert all((ROOT / "tasks" / f"{name}.py").is_file() for name in STAGE_MODULES)


def test_no_stage_module_imports_another():
    offenders = {name: sorted(imported_task_modules(ROOT / "tasks" / f"{name}.py") & (STAGE_MODULES - {name}))
                 for name in STAGE_MODULES}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_check_can_fail(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("from .train import x\nfrom tasks.report import y\nfrom . import encode\nimport tasks.ingest\n")
    assert imported_task_modules(module) == {"train", "report", "encode", "ingest"}


def test_the_committed_root_pipeline_is_what_the_stage_table_writes():
    """dvc.yaml and params.yaml at the project root are the demo's pipeline, generated: regenerate them with
    `logdiff pipeline` when the stage table or the demo preset changes."""
    from flows.project import pipeline_text
    from flows.stages import ROOT_WORK
    from tasks import config

    assert (ROOT / "dvc.yaml").read_text() == pipeline_text(ROOT_WORK), "run `logdiff pipeline` and commit dvc.yaml"
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == config.load("demo").to_dict(), \
        "run `logdiff pipeline` and commit params.yaml"


def test_the_pipeline_follows_the_stage_table():
    """Every stage of the table, in order, running its own command, writing its folder, reading its upstream
    stages' outputs; a model's stages depend on its own distribution's settings only."""
    from flows.stages import pipeline_yaml

    stages = pipeline_yaml(".")["stages"]
    assert list(stages) == list(STAGES)
    bodies = {name: declared.get("do", declared) for name, declared in stages.items()}
    for name, body in bodies.items():
        fan_out = "variant" if "matrix" in stages[name] else "transform" if "foreach" in stages[name] else "once"
        assert fan_out == STAGES[name].fan_out and body["cmd"].startswith(f"logdiff stage {name}"), name
    assert bodies["train"]["deps"] == ["data", "latents/${item.transform}", "classifier"]  # curves: the judge
    # the copying test encodes the samples as the latents were encoded
    assert bodies["evaluate"]["deps"] == ["data", "classifier", "latents/${item.transform}", "baselines/${item.transform}",
                                          "train/${item.distribution}-${item.transform}-${item.seed}"]
    assert bodies["report"]["deps"] == ["baselines", "train", "eval"]
    train = bodies["train"]["params"]
    assert "diffusion.distributions.${item.distribution}" in train and "train.lr" in train and "network" in train
    assert not {"diffusion.transforms", "train.seeds", "diffusion.log_floor", "diffusion", "train"} & set(train)
    assert bodies["encode"]["params"] == ["diffusion.log_floor"]
    # one DVC metrics file (a column per model in `dvc exp show`); the others are outputs kept by git
    assert bodies["report"]["metrics"] == [{"metrics/report.json": {"cache": False}}]
    assert {"metrics/train/${item.distribution}-${item.transform}-${item.seed}.json": {"cache": False}} \
        in bodies["train"]["outs"]


def test_a_training_worker_does_not_import_torchvision():
    """Five Ray workers start on two cores: torchvision and torch-fidelity (grids and FID only) would cost each a
    CPU-second and more before training begins."""
    import subprocess
    import sys

    code = ("import sys, flows.distributed, flows.stages, tasks.train, tasks.scoring; "
            "print(sorted(m for m in ('torchvision', 'torch_fidelity') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
