"""The cifar10 preset measured in one call on a CUDA machine (about 10 minutes on an H100/H200): training
throughput of the autoencoder and the diffusion model at the preset's size, a short end-to-end CIFAR-10 run (the
autoencoder + one distribution) scored with the pipeline's own metric beside its baselines, sampled without and
with restarts, and the time to sample and decode 10,000 images. Prints one table.

    python bench/gpu_check.py                                # ../shared/datasets/cifar10/train.zip, CUDA if present
    python bench/gpu_check.py --data .data/train.zip         # the zip copied into the checkout (the GPU machine)
    python bench/gpu_check.py --smoke --data tiny.zip        # CPU, shrunken: proves the script runs (tests do this)

Runs the stage functions directly (no Prefect, Ray or MLflow) in a temp folder. Throughputs are medians over
logging windows, the first (warm-up, torch.compile) dropped; the run is short, so the model is far from its best
and its score says "learns", not "final quality".
"""
from __future__ import annotations

import argparse
import statistics
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
from tasks.encode import encode_latents  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.paths import train_dir  # noqa: E402
from tasks.runtime import bf16_enabled, resolve_device  # noqa: E402
from tasks.sample import load_trained  # noqa: E402
from tasks.train import train_diffusion  # noqa: E402

DEFAULT_ZIP = ROOT.parent / "shared" / "datasets" / "cifar10" / "train.zip"
# a short run at the preset's model sizes and batch sizes: ~10 minutes on one H100/H200
FULL = {"ae_steps": 3000, "classifier_steps": None, "steps": 6000, "sample_count": 10_000, "log_every": 100,
        "overrides": []}
COMPARED_RESTARTS = 2  # the demo's sample.restarts, scored beside none
# the same code on a few hundred images and tiny networks: seconds on one CPU core
SMOKE = {"ae_steps": 20, "classifier_steps": 20, "steps": 20, "sample_count": 64, "log_every": 5,
         "overrides": ["data.limit=240", "data.val_fraction=0.2", "train.device=cpu", "train.cpus_per_worker=1",
                       "autoencoder.base_channels=8", "autoencoder.batch_size=16", "network.base_channels=8",
                       "network.num_heads=2", "train.batch_size=16", "classifier.base_channels=8",
                       "classifier.batch_size=16", "sample.steps=3", "sample.restart_steps=2", "sample.batch_size=32",
                       "eval.grid_size=16", "eval.bootstrap=20"]}


class WindowClock:
    """A training callback: the images/s of every logging window, from the wall time between calls."""

    def __init__(self, batch_size: int, log_every: int):
        self.images_per_window, self.stamps = batch_size * log_every, [time.perf_counter()]

    def __call__(self, step: int, metrics: dict) -> None:
        self.stamps.append(time.perf_counter())

    def median_rate(self) -> float:
        rates = [self.images_per_window / (b - a) for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(rates[1:] or rates)  # the first window holds warm-up and compilation


def measure(args: argparse.Namespace, workdir: str) -> list[tuple[str, str, str]]:
    plan = SMOKE if args.smoke else FULL
    overrides = ["data.source=folder", f"data.path={args.data}", f"autoencoder.steps={plan['ae_steps']}",
                 f"autoencoder.log_every={plan['log_every']}", f"autoencoder.checkpoint_every={plan['ae_steps']}",
                 f"train.steps={plan['steps']}", f"train.log_every={plan['log_every']}",
                 f"train.checkpoint_every={plan['steps']}", "train.eval_every=0", "eval.fid=false",
                 f"diffusion.distributions={{{args.distribution}: {{}}}}", *plan["overrides"], *args.overrides]
    if plan["classifier_steps"]:
        overrides.append(f"classifier.steps={plan['classifier_steps']}")
    cfg = replace(config.load(args.preset, overrides), workdir=workdir)
    gpu = cfg.train.device != "cpu" and torch.cuda.is_available()
    device = torch.cuda.get_device_name() if gpu else "CPU"
    rows = [("device", device, f"torch {torch.__version__}, preset {args.preset}"
                                f"{' (smoke: shrunken)' if args.smoke else ''}")]

    began = time.perf_counter()
    manifest = ingest(cfg)
    held_out = manifest["counts"]["val"]
    cfg = replace(cfg, eval=replace(cfg.eval, num_samples=held_out))  # the metric compares at the held-out size
    rows.append(("ingest", f"{sum(manifest['counts'].values())} images", f"{time.perf_counter() - began:.1f} s"))

    clock = WindowClock(cfg.autoencoder.batch_size, cfg.autoencoder.log_every)
    ae = train_autoencoder(cfg, callback=clock)
    rows.append(("autoencoder", f"{clock.median_rate():,.0f} images/s",
                 f"{ae['parameters'] / 1e6:.2f} M params, batch {cfg.autoencoder.batch_size}, {cfg.autoencoder.steps}"
                 f" steps in {ae['seconds']:.0f} s, held-out PSNR {ae['val_psnr']:.2f} dB"))
    variant = cfg.variants()[0]
    latents = encode_latents(cfg, variant.transform)
    judge = train_classifier(cfg)
    rows.append(("judge classifier", f"{judge['accuracy']:.1%} held-out accuracy",
                 f"{cfg.classifier.steps} steps at batch {cfg.classifier.batch_size} in {judge['seconds']:.0f} s"))
    began = time.perf_counter()
    compute_baselines(cfg, variant.transform)
    rows.append(("baselines", f"{held_out} samples each", f"{time.perf_counter() - began:.1f} s"))

    clock = WindowClock(cfg.train.batch_size, cfg.train.log_every)
    trained = train_diffusion(cfg, variant, callback=clock, progress=not args.smoke)
    bf16 = bf16_enabled(resolve_device(cfg.train.device), cfg.train.bf16)
    rows.append(("diffusion training", f"{clock.median_rate():,.0f} images/s",
                 f"{trained['parameters'] / 1e6:.2f} M params on {tuple(latents['latent_shape'])} latents, batch "
                 f"{cfg.train.batch_size}, {cfg.train.steps} steps in {trained['seconds']:.0f} s, "
                 f"compile={cfg.train.compile and gpu}, bf16={bf16}"))

    for restarts in (0, COMPARED_RESTARTS):  # the demo's restarts, unmeasured on CIFAR-10 until this runs
        record = evaluate(replace(cfg, sample=replace(cfg.sample, restarts=restarts)), variant)
        metric = record["champion_metric"]
        ratio = record["ceiling_ratio"]
        rows.append((f"{variant.label} after {cfg.train.steps} steps, {restarts} restarts",
                     f"{metric} {record[metric]:.3g} [{record[metric + '_low']:.3g}, {record[metric + '_high']:.3g}]",
                     ", ".join(f"{name} {scores[metric]:.3g}" for name, scores in record["baselines"].items())
                     + ("" if ratio is None else f"; {ratio:.2f}x the ceiling's distance above the floor")))

    model = load_trained(train_dir(cfg, variant))
    options = asdict(cfg.sample)  # every sample setting, as the evaluate stage passes them
    model.sample(min(plan["sample_count"], cfg.sample.batch_size), device=cfg.train.device, progress=False,
                 **options)  # warm-up: kernels and allocator
    began = time.perf_counter()
    images = model.sample(plan["sample_count"], device=cfg.train.device, progress=False, **options).data
    seconds = time.perf_counter() - began
    rows.append((f"sample + decode {len(images):,}", f"{seconds:.1f} s",
                 f"{len(images) / seconds:,.0f} images/s, {cfg.sample.sampler} {cfg.sample.steps} steps, "
                 f"{cfg.sample.restarts} restarts, "
                 f"batch {cfg.sample.batch_size}"))
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    print(f"\n| {'what':<{widths[0]}} | {'figure':<{widths[1]}} | notes |")
    print(f"| {'-' * widths[0]} | {'-' * widths[1]} | --- |")
    for what, figure, notes in rows:
        print(f"| {what:<{widths[0]}} | {figure:<{widths[1]}} | {notes} |")


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_ZIP), help="CIFAR-10 as an image-folder zip or folder")
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--distribution", default="gaussian")
    parser.add_argument("--smoke", action="store_true", help="a shrunken CPU run that proves the script works")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        sys.exit(f"no CIFAR-10 data at {args.data}; pass --data PATH (an image-folder zip, class/NNNN.jpg)")
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU: these figures are a CPU's (use --smoke for a quick check)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="logdiff-gpu-check-") as workdir:
        rows = measure(args, workdir)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
