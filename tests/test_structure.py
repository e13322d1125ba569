"""The structure the project relies on: stage modules never import each other, and the one stage table agrees
with dvc.yaml."""
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


def test_stage_table_matches_dvc_yaml():
    stages = yaml.safe_load((ROOT / "conf" / "pipeline" / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)  # same stages, same order
    for name, declared in stages.items():
        stage = STAGES[name]
        fan_out = "variant" if "matrix" in declared else "transform" if "foreach" in declared else "once"
        assert fan_out == stage.fan_out, name
        body = declared.get("do", declared)
        assert body["cmd"].startswith(f"logdiff stage {name}"), name
        for param in body.get("params", []):
            assert param.split(".")[0] in stage.params, (name, param)


def test_a_training_worker_does_not_import_torchvision():
    """Five Ray workers start on two cores: torchvision and torch-fidelity (grids and FID only) would cost each a
    CPU-second and more before training begins."""
    import subprocess
    import sys

    code = ("import sys, flows.distributed, flows.stages, tasks.train, tasks.scoring; "
            "print(sorted(m for m in ('torchvision', 'torch_fidelity') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_dependency_in_dvc_yaml_is_a_declared_input():
    """What a stage fetches from the store on another node (``Stage.inputs``) covers what DVC says it reads."""
    from tasks import config

    cfg = config.load("demo")
    owner = {STAGES[name].folder(cfg, item).relative_to(cfg.work).parts[0]: name
             for name in STAGES for item in STAGES[name].items(cfg)}
    stages = yaml.safe_load((ROOT / "conf" / "pipeline" / "dvc.yaml").read_text())["stages"]
    for name, declared in stages.items():
        for dep in declared.get("do", declared).get("deps", []):
            assert owner[dep.split("/")[0]] in STAGES[name].inputs, (name, dep)
