"""The cifar10-cpu preset's sizes against CPU time: each part of the pipeline measured on pilots in CPU-seconds (one
thread, ``time.process_time``, so that a busy machine changes the wall time and not the figures), scored with the
pipeline's own metric, so that the preset's choices can be read off curves.

    .venv/bin/python bench/cifar_cpu_curve.py judge          # judge width x steps -> held-out accuracy
    .venv/bin/python bench/cifar_cpu_curve.py autoencoder    # latent shape, width, steps -> ceiling, floor, trivial
    .venv/bin/python bench/cifar_cpu_curve.py denoiser       # residual MLP vs small U-Net, steps -> fd_classifier
    .venv/bin/python bench/cifar_cpu_curve.py samples        # scored sets per model -> interval width, eval time
    .venv/bin/python bench/cifar_cpu_curve.py speed          # a training step: bf16, float32, torch.compile
    .venv/bin/python bench/cifar_cpu_curve.py denoiser --only "mlp 1024" --workdir .data/curve   # keep the upstream

Every part starts from the preset (``--preset``, default cifar10-cpu) and changes only what its rows say. The
upstream a part needs (ingest, the preset's autoencoder and judge, baselines) is made once in ``--workdir`` (a temp
folder by default) and reused by later calls with the same folder. Runs the stage functions directly (no Prefect,
Ray or MLflow). Rows print as they finish; the last line of each part says what the baselines were.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks import config  # noqa: E402
from tasks.autoencoder import train_autoencoder  # noqa: E402
from tasks.baselines import compute_baselines  # noqa: E402
from tasks.classifier import train_classifier  # noqa: E402
from tasks.config import Variant  # noqa: E402
from tasks.encode import encode_latents  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.paths import checkpoint_file, train_dir  # noqa: E402
from tasks.sample import load_trained  # noqa: E402
from tasks.scoring import build_scorer  # noqa: E402
from tasks.io import read_json  # noqa: E402
from tasks.train import train_diffusion, training_fingerprint  # noqa: E402

DEFAULT_ZIP = ROOT.parent / "shared" / "datasets" / "cifar10" / "train.zip"

# part -> row name -> overrides of the preset
JUDGES = {f"width {width}, {steps} steps": [f"classifier.base_channels={width}", f"classifier.steps={steps}"]
          for width, steps in ((8, 600), (8, 1200), (16, 300), (16, 600), (16, 1200), (32, 300))}
# each autoencoder trains in legs (it resumes): a row per leg, so one run gives its curve
AUTOENCODER_LEGS = (500, 1000, 2000, 3000)
AUTOENCODERS = {
    "8x8x4, width 16": ["autoencoder.downsample=4", "autoencoder.latent_channels=4", "autoencoder.base_channels=16"],
    "8x8x8, width 16": ["autoencoder.downsample=4", "autoencoder.latent_channels=8", "autoencoder.base_channels=16"],
    "16x16x4, width 16": ["autoencoder.downsample=2", "autoencoder.latent_channels=4", "autoencoder.base_channels=16"],
    "8x8x4, width 32": ["autoencoder.downsample=4", "autoencoder.latent_channels=4", "autoencoder.base_channels=32"],
}
UNET = ["network.kind=unet", "network.base_channels=16", "network.channel_mults=[1, 2, 2]",
        "network.attention_resolution=4", "network.num_heads=4"]
DENOISERS = {
    "the preset": [],
    "u-net 16, same CPU-s": [*UNET, "train.steps=1400"],  # a step costs ~2.8x the MLP's (batch 256, bf16)
    "u-net 16, 2x CPU-s": [*UNET, "train.steps=2800"],
    "steps x2": ["train.steps=8000"],
    "steps/2": ["train.steps=2000"],
    "mlp 2048": ["network.hidden=2048"],
    "no restarts": ["sample.restarts=0"],  # sampling only: the preset's model, when it is the last one trained
}
SET_COUNTS = (1, 2, 5, 10)  # scored sets of the held-out size per model, for the samples part


def prepare(cfg, work: Path, parts: tuple[str, ...] = ("data", "autoencoder", "classifier", "baselines")) -> None:
    """The upstream stages, each run once per folder (what is there already is reused)."""
    steps = {"data": ingest, "autoencoder": train_autoencoder, "latents": lambda c: encode_latents(c, "identity"),
             "classifier": train_classifier, "baselines": lambda c: compute_baselines(c, "identity")}
    marks = {"data": "data/manifest.json", "autoencoder": "autoencoder/record.json",
             "latents": "latents/identity/manifest.json", "classifier": "classifier/record.json",
             "baselines": "baselines/identity/record.json"}
    wanted = [*parts[:2], "latents", *parts[2:]] if "autoencoder" in parts else list(parts)
    for part in wanted:
        if not (work / marks[part]).exists():
            steps[part](cfg)


def load(args, overrides: list[str], work: Path):
    cfg = config.load(args.preset, ["data.source=folder", f"data.path={args.data}", "eval.fid=false",
                                    *args.overrides, *overrides])
    return replace(cfg, workdir=str(work))


def cpu_seconds(run):
    began = time.process_time()
    result = run()
    return result, time.process_time() - began


def judge_part(args, base: Path) -> None:
    print(f"{'judge':<24}{'train CPU-s':>12}{'held-out accuracy [95%]':>28}")
    for name, overrides in selected(JUDGES, args.only).items():
        cfg = load(args, overrides, base / "judge")
        prepare(cfg, cfg.work, ("data",))
        record, seconds = cpu_seconds(lambda: train_classifier(cfg))
        print(f"{name:<24}{seconds:>12.0f}{record['accuracy']:>14.1%} [{record['accuracy_low']:.1%}, "
              f"{record['accuracy_high']:.1%}]", flush=True)


def autoencoder_part(args, base: Path) -> None:
    shared = load(args, [], base / "upstream")
    prepare(shared, shared.work, ("data", "classifier"))
    print(f"{'autoencoder':<22}{'steps':>6}{'CPU-s':>7}{'PSNR':>7}{'floor':>8}{'ceiling':>9}{'trivial':>9}"
          f"{'(ceiling-floor)/(trivial-floor)':>33}")
    for name, overrides in selected(AUTOENCODERS, args.only).items():
        work = base / ("ae " + name.replace(",", "").replace(" ", "-"))
        for folder in ("data", "classifier"):  # the same data and judge for every autoencoder
            if not (work / folder).exists():
                work.mkdir(parents=True, exist_ok=True)
                os.symlink((shared.work / folder).resolve(), work / folder)
        trained = 0.0
        for leg in AUTOENCODER_LEGS:
            cfg = load(args, [*overrides, f"autoencoder.steps={leg}", f"autoencoder.checkpoint_every={leg}"], work)
            record, seconds = cpu_seconds(lambda: train_autoencoder(cfg))  # resumes from the previous leg
            trained += seconds
            encode_latents(cfg, "identity")
            scores = {k: v["fd_classifier"] for k, v in compute_baselines(cfg, "identity").items()
                      if k in ("floor", "ceiling", "trivial")}
            share = (scores["ceiling"] - scores["floor"]) / (scores["trivial"] - scores["floor"])
            print(f"{name:<22}{leg:>6}{trained:>7.0f}{record['val_psnr']:>7.2f}{scores['floor']:>8.3g}"
                  f"{scores['ceiling']:>9.3g}{scores['trivial']:>9.3g}{share:>33.3f}", flush=True)


def denoiser_part(args, base: Path) -> None:
    upstream = load(args, [], base / "upstream")
    prepare(upstream, upstream.work)
    print(f"{'denoiser':<22}{'train CPU-s':>12}{'eval CPU-s':>11}  {'fd_classifier [95%]':<24}{'x ceiling [95%]':<20}"
          f"{'precision':>10}{'recall':>8}")
    first = None
    for name, overrides in selected(DENOISERS, args.only).items():
        cfg = load(args, [*overrides, "diffusion.distributions={%s: {}}" % args.distribution], upstream.work)
        variant = Variant(args.distribution, "identity", cfg.train.seeds[0])
        train_cpu = train_unless_trained(cfg, variant)
        record, eval_cpu = cpu_seconds(lambda: evaluate(cfg, variant))
        first = first or record
        metric = record["champion_metric"]
        interval = f"{record[metric]:.3g} [{record[metric + '_low']:.3g}, {record[metric + '_high']:.3g}]"
        ratio = (f"{record['ceiling_ratio']:.2f} [{record['ceiling_ratio_low']:.2f}, "
                 f"{record['ceiling_ratio_high']:.2f}]")
        trained = "(reused)" if train_cpu is None else f"{train_cpu:.0f}"
        print(f"{name:<22}{trained:>12}{eval_cpu:>11.0f}  {interval:<24}{ratio:<20}{record['precision']:>10.2f}"
              f"{record['recall']:>8.2f}", flush=True)
    if first:
        metric = first["champion_metric"]
        print(f"baselines ({first['metric_sample_size']} samples): " + ", ".join(
            f"{name} {scores[metric]:.3g}" for name, scores in first["baselines"].items()))


def train_unless_trained(cfg, variant: Variant) -> float | None:
    """Train ``variant`` afresh unless its folder holds a model of exactly these settings (rows that change only
    the sampling reuse it); the training's CPU-seconds, or None when reused."""
    trained = train_dir(cfg, variant) / "record.json"
    record = read_json(trained) if trained.exists() else {}
    if (record.get("fingerprint"), record.get("steps")) == (training_fingerprint(cfg, variant), cfg.train.steps):
        return None
    checkpoint_file(cfg, variant.name).unlink(missing_ok=True)  # "steps x2" must not resume "the preset"
    return cpu_seconds(lambda: train_diffusion(cfg, variant, progress=False))[1]


def samples_part(args, base: Path) -> None:
    """The preset's model (the denoiser part's first row, reused when it is the last trained there), scored on 1, 2,
    5 and 10 sets."""
    upstream = load(args, ["diffusion.distributions={%s: {}}" % args.distribution], base / "upstream")
    prepare(upstream, upstream.work)
    variant = Variant(args.distribution, "identity", upstream.train.seeds[0])
    train_unless_trained(upstream, variant)
    model = load_trained(train_dir(upstream, variant))
    scorer = build_scorer(upstream)
    options = asdict(upstream.sample)  # every sample setting, as the evaluate stage passes them
    print(f"{'sets of ' + str(scorer.size):<14}{'samples':>8}{'sample CPU-s':>13}{'score CPU-s':>12}  "
          f"{'fd_classifier [95%]':<24}{'half-width':>11}")
    for sets in SET_COUNTS:
        n = sets * scorer.size
        images, sample_cpu = cpu_seconds(lambda: model.generate(n, seed=variant.seed, device="cpu", progress=False,
                                                                **options))
        scores, score_cpu = cpu_seconds(lambda: scorer.score(images))
        half = (scores["fd_classifier_high"] - scores["fd_classifier_low"]) / 2
        print(f"{sets:<14}{n:>8}{sample_cpu:>13.0f}{score_cpu:>12.0f}  {scores['fd_classifier']:.3g} "
              f"[{scores['fd_classifier_low']:.3g}, {scores['fd_classifier_high']:.3g}]".ljust(26)
              + f"{half:>11.3g}", flush=True)


def speed_part(args, base: Path) -> None:
    """A training step of the preset's denoiser: bf16 autocast (where the CPU has bf16 units), float32, and under
    torch.compile: what compiling costs (its first step) and gains (the steps after)."""
    from logdiff_core import noise as noise_lib
    from logdiff_core.diffusion import training_loss
    from tasks.runtime import bf16_autocast
    from tasks.sample import build_network, network_spec, schedule_from

    cfg = load(args, [], base / "upstream")
    side = 32 // cfg.autoencoder.downsample  # CIFAR-10's 32x32 images; no data needed
    shape = (cfg.autoencoder.latent_channels, side, side)
    schedule = schedule_from(cfg.to_dict())
    x0 = torch.randn(cfg.train.batch_size, *shape)
    noise = noise_lib.get(args.distribution)
    # compiling runs a C++ compiler in other processes, which this process's CPU time misses: wall time too
    print(f"{'mode':<18}{'first step s (wall)':>20}{'CPU-ms per step after':>23}")
    for mode, bf16, compiled in (("bf16", True, False), ("float32", False, False), ("bf16, compiled", True, True),
                                 ("float32, compiled", False, True)):
        torch.manual_seed(0)
        model = build_network(network_spec(cfg.to_dict(), shape), schedule)
        stepped = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)

        def step():
            with bf16_autocast(torch.device("cpu"), bf16):
                loss = training_loss(stepped, schedule, noise, x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        began = time.perf_counter()
        step()
        first = time.perf_counter() - began
        for _ in range(3):  # settle (allocator, any recompilation)
            step()
        _, later = cpu_seconds(lambda: [step() for _ in range(20)])
        print(f"{mode:<18}{first:>20.1f}{later / 20 * 1000:>23.1f}", flush=True)


def selected(rows: dict, only: list[str] | None) -> dict:
    return {name: rows[name] for name in only} if only else rows


PARTS = {"judge": judge_part, "autoencoder": autoencoder_part, "denoiser": denoiser_part, "samples": samples_part,
         "speed": speed_part}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--only", nargs="*", help="rows of the part to run (default: all)")
    parser.add_argument("--data", default=str(DEFAULT_ZIP), help="CIFAR-10 as an image-folder zip")
    parser.add_argument("--preset", default="cifar10-cpu")
    parser.add_argument("--distribution", default="gaussian")
    parser.add_argument("--workdir", help="keep the upstream here, to reuse it in later calls (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every row (e.g. data.limit=5000)")
    args = parser.parse_intermixed_args(argv)
    rows = {"judge": JUDGES, "autoencoder": AUTOENCODERS, "denoiser": DENOISERS}.get(args.part, {})
    if args.only and (unknown := [name for name in args.only if name not in rows]):
        parser.error(f"no row {unknown[0]!r} in the {args.part} part; rows: {', '.join(rows) or 'none'}")
    torch.set_num_threads(1)  # CPU-seconds of one thread: the figures hold on a busy machine
    with tempfile.TemporaryDirectory(prefix="logdiff-cifar-cpu-") as tmp:
        PARTS[args.part](args, Path(args.workdir or tmp).resolve())


if __name__ == "__main__":
    main()
