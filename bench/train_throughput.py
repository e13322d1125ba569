"""Training throughput of the autoencoder and the latent diffusion trainer, through the real stage code.

Ingests CIFAR-10 from the image-folder zip (default: ../shared/datasets/cifar10/train.zip), trains the
autoencoder and one diffusion model for a few hundred steps with the chosen preset, and prints the median
images/s over the logging windows (the first window, which holds warm-up and compilation, is dropped).

    python bench/train_throughput.py                       # CUDA if present, the cifar10 preset
    python bench/train_throughput.py --device cpu --limit 5000 train.batch_size=64 autoencoder.batch_size=64
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks import config  # noqa: E402
from tasks.autoencoder import train_autoencoder  # noqa: E402
from tasks.encode import encode_latents  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.paths import train_dir  # noqa: E402
from tasks.train import train_diffusion  # noqa: E402

DEFAULT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "train.zip"


def median_window_rate(history_csv: Path) -> float:
    rows = list(csv.DictReader(history_csv.open()))
    rates = [float(r["images_per_s"]) for r in rows[1:]] or [float(r["images_per_s"]) for r in rows]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_ZIP), help="CIFAR-10 image-folder zip or folder")
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="ingest at most this many images")
    parser.add_argument("--ae-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=600, help="diffusion training steps")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"no CIFAR-10 data at {args.data}; pass --data PATH (an image-folder zip)")

    workdir = tempfile.mkdtemp(prefix="logdiff-bench-")
    log_every = max(1, min(args.steps, args.ae_steps) // 6)
    cfg = config.load(args.preset, [
        f"workdir={workdir}", "data.source=folder", f"data.path={args.data}", f"data.limit={args.limit or 'null'}",
        f"train.device={args.device}", f"autoencoder.steps={args.ae_steps}", f"train.steps={args.steps}",
        f"autoencoder.log_every={log_every}", f"train.log_every={log_every}", "train.eval_every=0",
        "eval.fid=false", *args.overrides])
    gpu = cfg.train.device != "cpu" and torch.cuda.is_available()
    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"device: {device}; preset {args.preset}; {cfg.autoencoder.steps} AE steps at batch "
          f"{cfg.autoencoder.batch_size}; {cfg.train.steps} diffusion steps at batch {cfg.train.batch_size}")

    began = time.perf_counter()
    manifest = ingest(cfg)
    print(f"ingest: {sum(manifest['counts'].values())} images in {time.perf_counter() - began:.1f} s")
    ae = train_autoencoder(cfg)
    print(f"autoencoder: {ae['images_per_s']:.0f} images/s (mean over {cfg.autoencoder.steps} steps), "
          f"{ae['parameters'] / 1e6:.2f} M parameters, val PSNR {ae['val_psnr']:.2f} dB")
    variant = cfg.variants()[0]
    latents = encode_latents(cfg, variant.transform)
    record = train_diffusion(cfg, variant, progress=False)
    rate = median_window_rate(train_dir(cfg, variant) / "history.csv")
    print(f"diffusion ({variant.name}, latents {tuple(latents['latent_shape'])}, "
          f"{record['parameters'] / 1e6:.2f} M parameters, compile={cfg.train.compile and gpu}, "
          f"bf16={cfg.train.bf16 and gpu}): "
          f"median {rate:.0f} images/s over logging windows; mean {record['images_per_s']:.0f} images/s incl. warm-up")


if __name__ == "__main__":
    main()
