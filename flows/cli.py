"""``logdiff``: run, schedule and inspect the pipeline; run single stages (what ``dvc.yaml`` calls); sample.

Heavy imports (torch, Prefect, Ray, MLflow) happen inside the commands, so ``logdiff --help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from flows.stages import STAGES
from tasks.paths import PARAMS_FILE

EPILOG = """\
examples:
  logdiff run                                  # the demo preset: digits, five noise distributions
  logdiff run cifar10 data.path=train.zip      # a preset plus key=value overrides
  logdiff run wine                             # positive measurements: identity vs log transform
  logdiff run breast_cancer                    # zero-inflated, skewed: identity vs log vs zero-safe log
  logdiff serve --cron "0 3 * * *"             # a scheduled Prefect deployment (starts a local server)
  logdiff ui                                   # the MLflow UI on http://127.0.0.1:5000
  logdiff tracking-server --artifacts s3://bucket/mlartifacts   # for a Ray cluster (docs/cluster.md)
  logdiff sample --model models:/ngldm-digits-laplace@champion -n 64 -o grid.png
  logdiff frontier                             # after logdiff run: quality against network evaluations
  logdiff stage train --distribution laplace   # one stage from params.yaml (what dvc repro runs)
  logdiff pipeline wine                        # write a preset's DVC pipeline, to run with dvc repro
  logdiff config cifar10 train.steps=10        # print the resolved, validated config
"""


def _add_preset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", nargs="?", default="demo",
                        help="preset name in conf/ (demo, cifar10, ...) or a YAML path (default: demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.steps=500 'diffusion.distributions={laplace: {}}'")
    parser.add_argument("--project-dir", default=".", help="where params.yaml, dvc.yaml, artifacts and mlflow.db live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logdiff", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train and compare latent diffusion models with non-Gaussian noise: Prefect flow, Ray "
                    "training fan-out, DVC-versioned stages, MLflow tracking and registry.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    run = sub.add_parser("run", help="run the whole pipeline once (Prefect flow, local ephemeral API)")
    _add_preset_args(run)
    run.add_argument("--force", action="store_true", help="rerun every stage even if DVC says it is up to date")
    run.add_argument("--ray-dashboard", action="store_true",
                     help="start Ray's dashboard (http://127.0.0.1:8265) with the local Ray cluster")

    serve = sub.add_parser("serve", help="serve the flow as a scheduled deployment (starts a Prefect server "
                                         "on 127.0.0.1 unless PREFECT_API_URL is set)")
    _add_preset_args(serve)
    serve.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * *"')
    serve.add_argument("--name", default=None, help="deployment name (default: logdiff-<preset>)")
    serve.add_argument("--port", type=int, default=4200, help="port of the local Prefect server")

    stage = sub.add_parser("stage", help="run one stage from params.yaml (the commands dvc.yaml runs)")
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--distribution", help="noise distribution (train and evaluate)")
    stage.add_argument("--transform", help="data transform (encode, train, evaluate); may be left out when "
                                           "diffusion.transforms names only one")
    stage.add_argument("--seed", type=int, help="training seed (train, evaluate); may be left out when train.seeds "
                                                "names only one")
    stage.add_argument("--params", default=PARAMS_FILE,
                       help="the pipeline's resolved config: the project root's (the root experiment, outputs in "
                            "artifacts/<name>) or an experiment folder's (default: params.yaml)")

    pipeline = sub.add_parser("pipeline", help="write an experiment's DVC pipeline (dvc.yaml, params.yaml) without "
                                               "running it: the root's for demo, artifacts/<name>/ for the others")
    _add_preset_args(pipeline)

    sample = sub.add_parser("sample", help="draw samples from a registered or local model")
    sample.add_argument("--model", required=True,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model.safetensors path / train folder")
    sample.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("-o", "--output", default="samples.png",
                        help="output: .png grid for images; .csv or .parquet for array data")
    sample.add_argument("--sampler", default=None, help="ddpm, ddim, heun, dpmpp2m, dpmpp3m or unipc (default: the "
                                                        "model's config)")
    sample.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's config)")
    sample.add_argument("--time-schedule", default=None, help="uniform, edm or fitted (default: the model's config)")
    sample.add_argument("--option", action="append", metavar="key=value",
                        help="a sampler option, e.g. --option eta=1.0 for ddim (repeatable; default: the model's "
                             "config when the sampler is its own)")
    sample.add_argument("--restarts", type=int, default=None,
                        help="times to noise the samples to sample.restart_t and sample back (default: the model's "
                             "config; 0: none)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="auto")
    sample.add_argument("--project-dir", default=".", help="where mlflow.db lives (unless MLFLOW_TRACKING_URI)")

    frontier = sub.add_parser("frontier", help="sample quality against network evaluations, per sampler and time "
                                               "schedule, for the trained models of an experiment (after logdiff run; "
                                               "minutes): frontier/, the report's section, MLflow")
    _add_preset_args(frontier)
    frontier.add_argument("--distribution", nargs="+", help="only these noise distributions' models (default: all)")
    frontier.add_argument("--samplers", nargs="+", help="default: ddim heun dpmpp2m dpmpp3m unipc")
    frontier.add_argument("--time-schedules", nargs="+", help="default: uniform edm fitted")
    frontier.add_argument("--evaluations", nargs="+", type=int, help="network evaluations per sample (default: 5 10 "
                                                                     "20 50)")
    frontier.add_argument("--num-samples", type=int, help="samples per setting (default: eval.num_samples)")

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the project's store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--project-dir", default=".")

    server = sub.add_parser("tracking-server", help="start an MLflow tracking server for a cluster's workers "
                                                    "(docs/cluster.md); then set MLFLOW_TRACKING_URI to its URL")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on; workers on other machines need "
                                                            "one they can reach (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--project-dir", default=".", help="where its runs and registry live (mlflow.db)")
    server.add_argument("--artifacts", default=None,
                        help="where logged files and models go, e.g. s3://bucket/mlartifacts (default: "
                             "<project-dir>/mlartifacts)")
    server.add_argument("--endpoint", default="", help="S3-compatible endpoint of --artifacts (MinIO, Ceph, ...)")

    cfg = sub.add_parser("config", help="print the resolved, validated config (or list presets)")
    _add_preset_args(cfg)
    cfg.add_argument("--list", action="store_true", help="list the presets")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with a command's options accepted before or after its preset and overrides
    (``logdiff run cifar10 --project-dir DIR key=value``)."""
    parser = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    if not unparsed:
        return args
    # Options after a positional leave the positionals that follow unparsed: parse the command's arguments again,
    # intermixed (argparse's intermixed parsing takes no subcommands, so the command's own parser does it).
    argv = sys.argv[1:] if argv is None else list(argv)
    (commands,) = (action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return commands[args.command].parse_intermixed_args(argv[argv.index(args.command) + 1:],
                                                        argparse.Namespace(command=args.command))


def _stage(args) -> None:
    from dataclasses import replace

    from flows import tracking
    from flows.project import experiment_of
    from flows.runlog import run_log
    from flows.stages import run_stage, stage_params, stage_pictures
    from tasks.timings import mark_run_start

    cfg, project, experiment = experiment_of(args.params)
    cfg = replace(cfg, workdir=str(experiment))
    item = None
    if STAGES[args.name].fan_out == "variant":
        if not args.distribution:
            raise ValueError(f"logdiff stage {args.name} needs --distribution "
                             f"(one of {', '.join(cfg.diffusion.distributions)})")
        item = cfg.variant(args.distribution, args.transform, args.seed)
    elif STAGES[args.name].fan_out == "transform":
        item = cfg.transform(args.transform)
    name = STAGES[args.name].dvc_name(item)
    mark_run_start(cfg, None)  # a stage on its own (dvc repro) is no part of the last `logdiff run`'s timings
    with run_log(project, f"stage-{name.replace('@', '-')}", prefect_console=False) as args.log_path, \
            tracking.standalone_stage_run(cfg, project, name, stage_params(cfg, args.name)) as run_id:
        callback = tracking.MetricLogger(tracking.tracking_uri(project), run_id) if run_id else None
        record = run_stage(cfg, args.name, item, callback=callback)
        if run_id:
            tracking.log_stage_outputs(run_id, record, stage_pictures(cfg, args.name, item))


def _pipeline(args) -> None:
    from tasks import config

    from flows.project import prepare_experiment, project_lock

    project = Path(args.project_dir).resolve()
    cfg = config.load(args.preset, args.overrides)
    with project_lock(project):
        written = prepare_experiment(project, cfg)
    where = "." if written.folder == Path.cwd() else str(written.folder)
    print(f"wrote {written.folder / 'dvc.yaml'} and {PARAMS_FILE} (outputs go to {written.experiment}); "
          f"run it with: cd {where} && dvc repro")


def _sample(args) -> None:
    from flows.sampling import sample_to_file

    from tasks.config import parse_override

    options = None if args.option is None else dict((".".join(key), value) for key, value in map(parse_override,
                                                                                                  args.option))
    path = sample_to_file(args.model, args.n, args.output, sampler=args.sampler, steps=args.steps, options=options,
                          time_schedule=args.time_schedule, restarts=args.restarts, seed=args.seed,
                          device=args.device, project_dir=args.project_dir)
    print(f"wrote {path}")


def _frontier(args) -> None:
    from flows.frontier import frontier_command

    folder, summary = frontier_command(args.preset, args.overrides, args.project_dir, args.distribution,
                                       args.samplers, args.time_schedules, args.evaluations, args.num_samples)
    print("\n".join(summary))
    print(f"wrote {folder}: frontier.md (every setting), frontier.png, frontier.json")


def _run(args) -> int:
    from flows.distributed import stop_ray
    from flows.pipeline import check_before_running, print_summary, run_pipeline, warn_if_over_budget
    from flows.project import project_lock
    from flows.runlog import run_log
    from flows.schedule import prefect_api

    project = Path(args.project_dir).resolve()
    # mistakes are one-line errors before anything starts
    warn_if_over_budget(check_before_running(args.preset, args.overrides))
    with project_lock(project), run_log(project, "run") as args.log_path, prefect_api():
        summary = run_pipeline(args.preset, args.overrides, project_dir=str(project), force=args.force,
                               ray_dashboard=args.ray_dashboard, started=args.started)
        stop_ray()
    print_summary(summary)
    return 1 if any("error" in info for info in summary["models"].values()) else 0


def _serve(args) -> None:
    from flows.schedule import serve

    serve(args.preset, args.overrides, cron=args.cron, name=args.name, project_dir=args.project_dir,
          port=args.port)


def _ui(args) -> None:
    from flows.tracking import ui_command

    argv = ui_command(Path(args.project_dir).resolve(), port=args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    os.execvp(argv[0], argv)


def _config(args) -> None:
    import yaml

    from tasks import config

    if args.list:
        print("\n".join(config.preset_names()))
        return
    print(yaml.safe_dump(config.load(args.preset, args.overrides).to_dict(), sort_keys=False), end="")


def _tracking_server(args) -> None:
    from flows.cluster import tracking_server_command

    argv, env = tracking_server_command(Path(args.project_dir).resolve(), args.host, args.port, args.artifacts,
                                        args.endpoint)
    print(f"MLflow tracking server on http://{args.host}:{args.port}: export "
          f"MLFLOW_TRACKING_URI=http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    os.execvpe(argv[0], argv, env)


COMMANDS = {"stage": _stage, "pipeline": _pipeline, "sample": _sample, "run": _run, "serve": _serve, "ui": _ui,
            "config": _config, "tracking-server": _tracking_server, "frontier": _frontier}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run a command; any failure is one line on stderr (the full trace goes to the command's log file, named in
    that line): exit 2 for a mistake the user can fix, 1 for anything else, 130 on Ctrl-C."""
    started = time.time()  # the report says what start-up took (the heavy imports come after this)
    args = parse_args(argv)
    args.log_path, args.started = None, started
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print(f"logdiff {args.command}: interrupted; training checkpoints are kept, the same command resumes",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place every failure becomes one line
        from flows.runlog import record_exception

        if args.log_path is not None:
            record_exception(args.log_path, err)
        where = f" (full trace: {args.log_path})" if args.log_path is not None else ""
        if isinstance(err, _user_errors()):
            print(f"logdiff {args.command}: error: {_one_line(err)}{where}", file=sys.stderr)
            return 2
        print(f"logdiff {args.command}: unexpected error: {type(err).__name__}: {_one_line(err)}{where}",
              file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that say what to fix: the configuration, the data, the project, a missing download."""
    from tasks.config import ConfigError
    from tasks.fid import FIDUnavailable

    from tasks.storage import StoreError

    from flows.cluster import ClusterError
    from flows.project import DvcError, ProjectLocked
    from flows.schedule import ServerStartError

    return (ConfigError, ValueError, FileNotFoundError, FileExistsError, ProjectLocked, DvcError, FIDUnavailable,
            ServerStartError, StoreError, ClusterError)


if __name__ == "__main__":
    sys.exit(main())
