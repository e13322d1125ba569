"""The cifar10-cpu preset's sizes against CPU time: each part of the pipeline measured on pilots in CPU-seconds (one
thread, ``time.process_time``, so that a busy machine changes the wall time and not the figures), scored with the
pipeline's own metric, so that the preset's choices can be read off curves.

    .venv/bin/python bench/cifar_cpu_curve.py judge          # judge width x steps -> held-out accuracy
    .venv/bin/python bench/cifar_cpu_curve.py autoencoder    # latent shape, width, steps -> ceiling, floor, trivial
    .venv/bin/python bench/cifar_cpu_curve.py denoiser       # residual MLP vs small U-Net, steps -> fd_classifier
    .venv/bin/python bench/cifar_cpu_curve.py samples        # scored sets per model -> interval width, eval time
    .venv/bin/python bench/cifar_cpu_curve.py compile        # torch.compile on CPU: compile time against step time
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
UNET = ["network.kind=unet", "network.base_channels=32", "network.channel_mults=[1, 2]",
        "network.attention_resolution=4", "network.num_heads=4"]
DENOISERS = {
    "the preset": [],
    "mlp 512": ["network.hidden=512"],
    "mlp 1024, 4 blocks": ["network.layers=4"],
    "steps/2": ["train.steps=2000"],
    "steps x2": ["train.steps=8000"],
    "u-net 32, 2000 steps": [*UNET, "train.steps=2000"],
    "float32": ["train.bf16=false"],
    "no restarts": ["sample.restarts=0"],
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
        checkpoint_file(cfg, variant.name).unlink(missing_ok=True)  # "steps x2" must not resume "the preset"
        _, train_cpu = cpu_seconds(lambda: train_diffusion(cfg, variant, progress=False))
        record, eval_cpu = cpu_seconds(lambda: evaluate(cfg, variant))
        first = first or record
        metric = record["champion_metric"]
        interval = f"{record[metric]:.3g} [{record[metric + '_low']:.3g}, {record[metric + '_high']:.3g}]"
        ratio = (f"{record['ceiling_ratio']:.2f} [{record['ceiling_ratio_low']:.2f}, "
                 f"{record['ceiling_ratio_high']:.2f}]")
        print(f"{name:<22}{train_cpu:>12.0f}{eval_cpu:>11.0f}  {interval:<24}{ratio:<20}{record['precision']:>10.2f}"
              f"{record['recall']:>8.2f}", flush=True)
    if first:
        metric = first["champion_metric"]
        print(f"baselines ({first['metric_sample_size']} samples): " + ", ".join(
            f"{name} {scores[metric]:.3g}" for name, scores in first["baselines"].items()))


def samples_part(args, base: Path) -> None:
    """The preset's model (the denoiser part's first row, reused when it is the last trained there), scored on 1, 2,
    5 and 10 sets."""
    upstream = load(args, ["diffusion.distributions={%s: {}}" % args.distribution], base / "upstream")
    prepare(upstream, upstream.work)
    variant = Variant(args.distribution, "identity", upstream.train.seeds[0])
    trained = train_dir(upstream, variant) / "record.json"
    record = read_json(trained) if trained.exists() else {}
    if (record.get("fingerprint"), record.get("steps")) != (training_fingerprint(upstream, variant),
                                                           upstream.train.steps):
        checkpoint_file(upstream, variant.name).unlink(missing_ok=True)
        train_diffusion(upstream, variant, progress=False)
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


def compile_part(args, base: Path) -> None:
    """The preset's denoiser trained eagerly and under torch.compile on CPU: what compiling costs and gains."""
    from logdiff_core import noise as noise_lib
    from logdiff_core.diffusion import training_loss
    from tasks.runtime import bf16_autocast
    from tasks.sample import build_network, network_spec, schedule_from

    cfg = load(args, [], base / "upstream")
    prepare(cfg, cfg.work, ("data", "autoencoder"))
    from tasks.codec import latents_manifest

    shape = tuple(latents_manifest(cfg, "identity")["latent_shape"])
    schedule = schedule_from(cfg.to_dict())
    x0 = torch.randn(cfg.train.batch_size, *shape)
    noise = noise_lib.get(args.distribution)
    print(f"{'mode':<10}{'first step CPU-s':>18}{'ms per step after':>19}")
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_network(network_spec(cfg.to_dict(), shape), schedule)
        stepped = torch.compile(model) if mode == "compiled" else model
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)

        def step():
            with bf16_autocast(torch.device("cpu"), cfg.train.bf16):
                loss = training_loss(stepped, schedule, noise, x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        _, first = cpu_seconds(step)
        for _ in range(3):  # settle (recompiles for the last batch shape, allocator)
            step()
        _, later = cpu_seconds(lambda: [step() for _ in range(20)])
        print(f"{mode:<10}{first:>18.1f}{later / 20 * 1000:>19.1f}", flush=True)


def selected(rows: dict, only: list[str] | None) -> dict:
    return {name: rows[name] for name in only} if only else rows


PARTS = {"judge": judge_part, "autoencoder": autoencoder_part, "denoiser": denoiser_part, "samples": samples_part,
         "compile": compile_part}


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
