"""The config: every key is checked when it is loaded, with a one-line error naming the key, before any work."""
import dataclasses
import typing
from pathlib import Path

import pytest

from tasks import config
from tasks.config import Config, ConfigError, Range

ROOT = Path(__file__).resolve().parent.parent


def numeric_keys(cls=Config, prefix: str = ""):
    """(dotted key, the section class, field name, its type) for every numeric key, lists of numbers included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_keys(hint, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if typing.get_origin(hint) is list:
            args = list(typing.get_args(hint))
        if args[0] in (int, float):
            yield f"{prefix}{f.name}", cls, f.name, hint


def out_of_range(allowed: Range, is_int: bool):
    value = allowed.low - (1 if is_int or not allowed.low_open else 0) if allowed.low is not None else allowed.high + 1
    return int(value) if is_int else float(value)


def test_every_numeric_key_has_a_declared_range():
    missing = [key for key, cls, name, _ in numeric_keys() if name not in getattr(cls, "_ranges", {})
               and name not in getattr(cls, "_choices", {})]
    assert missing == []


@pytest.mark.parametrize("key", [key for key, *_ in numeric_keys()])
def test_every_numeric_key_rejects_an_out_of_range_value(key):
    cls, name, hint = next((c, n, h) for k, c, n, h in numeric_keys() if k == key)
    if name in getattr(cls, "_choices", {}):
        value = 3 if key != "autoencoder.downsample" else 3  # neither 1/3 channels nor a downsample factor
        value = 2 if key == "data.channels" else value
    else:
        allowed = cls._ranges[name]
        value = out_of_range(allowed, int in (typing.get_args(hint) or (hint,)))
    if typing.get_origin(hint) is list:
        value = [value]
    with pytest.raises(ConfigError, match=f"^{key}: ") as err:
        config.load("demo", [f"{key}={value}"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", [
    "autoencoder.steps=0", "autoencoder.batch_size=-4", "train.checkpoint_every=0", "train.log_every=0",
    "autoencoder.checkpoint_every=0", "sample.batch_size=0", "eval.grid_size=-1", "data.image_size=-3",
    "network.channel_mults=[]", "network.channel_mults=[1,0]", "train.cpus_per_worker=0", "train.warmup_steps=-5",
    "autoencoder.lr=-1", "train.seeds=[]", "train.seeds=[0,0]", "diffusion.beta_start=0.5",
    "network.num_heads=0", "eval.confidence=1", "sample.steps=2000", "sample.restarts=-1", "sample.restart_t=1000",
    "sample.restart_steps=202",
])
def test_values_found_by_fault_injection_fail_at_load(override):
    key = override.split("=")[0]
    section = key.split(".")[0]
    with pytest.raises(ConfigError, match=f"^({key}|{section})") as err:
        config.load("demo", [override])
    assert "\n" not in str(err.value)


def test_restart_settings_bind_only_when_restarting():
    short = config.load("demo", ["diffusion.timesteps=100", "sample.steps=50", "sample.restarts=0"])
    assert short.sample.restart_t == 200  # unused: no restarts
    with pytest.raises(ConfigError, match=r"^sample.restart_t: 200 is not a timestep of the schedule; use 0..99"):
        config.load("demo", ["diffusion.timesteps=100", "sample.steps=50"])


def test_attention_heads_must_divide_every_attention_width():
    with pytest.raises(ConfigError, match="^network.num_heads: 3 must divide every attention width"):
        config.load("cifar10", ["network.num_heads=3"])


@pytest.mark.parametrize("source", ["folder", "arrays"])
def test_a_source_that_reads_a_file_needs_data_path(source):
    extra = ["autoencoder.kind=none", "network.kind=mlp"] if source == "arrays" else []
    with pytest.raises(ConfigError, match="^data.path: .*set data.path"):
        config.load("demo", [f"data.source={source}", *extra])


@pytest.mark.parametrize("workdir", [".", "/etc", "../elsewhere", "artifacts/../.."])
def test_workdir_must_be_a_subfolder_of_the_project(workdir):
    with pytest.raises(ConfigError, match="^workdir: .*subfolder of the project"):
        config.load("demo", [f"workdir={workdir}"])
    assert config.load("demo", ["workdir=runs/mine"]).work == Path("runs/mine")
    assert config.load("demo").work == Path("artifacts/demo")


@pytest.mark.parametrize("name", ["a/b", "../x", "", "demo!"])
def test_the_experiment_name_is_a_folder_name(name):
    with pytest.raises(ConfigError, match="^name: "):
        config.load("demo", [f"name={name}"])


def test_choices_come_from_the_core_registries():
    from logdiff_core import samplers, schedules
    from logdiff_core.networks import DENOISERS

    for key, choices in (("sample.sampler", samplers.names()), ("diffusion.schedule", schedules.KINDS),
                         ("network.kind", list(DENOISERS))):
        with pytest.raises(ConfigError, match=", ".join(choices)):
            config.load("demo", [f"{key}=nonsense"])


def test_every_preset_loads_and_every_key_is_documented():
    docs = (ROOT / "docs" / "config.md").read_text()

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            yield from keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [f.name]

    assert [key for key in keys(Config) if f"`{key}`" not in docs] == []
    for preset in config.preset_names():
        config.load(preset)


def test_model_settings_leave_out_other_models():
    cfg = config.load("demo", ["train.seeds=[0,1]"])
    variant = cfg.variants()[-1]
    settings = cfg.model_settings(variant)
    assert settings["train"]["seeds"] == [1] and list(settings["diffusion"]["distributions"]) == ["exponential"]
    assert len(cfg.variants()) == 10 and variant.name == "exponential-identity-1"


def test_non_finite_numbers_are_refused():
    with pytest.raises(ConfigError, match="^train.lr: expected a finite number"):
        config.load("demo", ["train.lr=.inf"])


def test_reading_the_config_imports_no_torch():
    import subprocess
    import sys

    probe = "import sys, tasks.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT).returncode == 0


def test_overrides_between_say_what_changed_was_added_and_was_removed_as_dvc_exp_run_takes_them():
    base = config.load("demo")
    cfg = config.load("demo", ["train.lr=0.001", "sample.sampler=ddim",
                               "diffusion.distributions={gaussian: {}, student_t: {nu: 5}}"])
    assert sorted(config.overrides_between(base, cfg)) == [
        "+diffusion.distributions.student_t.nu=5", "sample.sampler=ddim", "train.lr=0.001",
        "~diffusion.distributions.exponential", "~diffusion.distributions.gumbel", "~diffusion.distributions.laplace",
        "~diffusion.distributions.uniform"]
    assert config.overrides_between(base, base) == []


def test_a_run_over_its_budget_on_this_machine_is_said_in_one_line():
    """The preset's measured time scaled to the cores and bf16 units found: fewer cores or no bf16 push the demo
    over its budget, the machine it was measured on does not; no budget or a GPU, no line."""
    from tasks.config import BudgetConfig
    from tasks.runtime import budget_warning

    budget = BudgetConfig(minutes=8, measured_minutes=5, measured_cores=2, measured_bf16=True, float32_factor=1.4)
    assert budget_warning(budget, "cpu", True, cores=2, bf16_units=True) is None
    assert budget_warning(budget, "cpu", True, cores=4, bf16_units=False) is None  # 7 minutes: fits
    one_core = budget_warning(budget, "cpu", True, cores=1, bf16_units=True)
    assert "about 10 minutes" in one_core and "1 CPU core" in one_core and "\n" not in one_core
    slow = budget_warning(budget, "cpu", True, cores=1, bf16_units=False)
    assert "about 14 minutes" in slow and "no bf16 units" in slow and "8-minute budget" in slow
    assert "bf16 off" in budget_warning(budget, "cpu", False, cores=1, bf16_units=True)
    assert budget_warning(BudgetConfig(), "cpu", True, cores=1, bf16_units=False) is None
    assert budget_warning(BudgetConfig(minutes=8, measured_minutes=5, float32_factor=2.0), "cpu", True, cores=2,
                          bf16_units=False) is not None


def test_the_budget_is_no_setting_of_any_stage():
    cfg = config.load("demo")
    assert "budget" in cfg.to_dict() and "budget" not in cfg.settings() and cfg.budget.minutes > 0
    assert config.load("demo-replicates").budget.minutes == 0  # a preset's budget is its own, never inherited
    with pytest.raises(ConfigError, match="budget.float32_factor"):
        config.load("demo", ["budget.float32_factor=0.5"])
