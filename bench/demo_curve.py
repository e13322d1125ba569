"""The demo's sample quality against CPU time: for a few training settings, one model trained on one thread (as
the demo trains each of its five side by side), scored with the pipeline's own metric beside the baselines.

    .venv/bin/python bench/demo_curve.py                      # every setting below, the gaussian model
    .venv/bin/python bench/demo_curve.py --only demo long     # some of them
    .venv/bin/python bench/demo_curve.py --distribution laplace
    .venv/bin/python bench/demo_curve.py --only demo --upstream artifacts/demo   # reuse a run's data, AE, judge

Prints one row per setting: training CPU-seconds, evaluation seconds, the champion metric with its interval (the
mean over the demo's 8 scored sets of 449 samples, so rows differ by more than sampling luck), and the distance
above the real-vs-real floor in multiples of the autoencoder ceiling's; then the same against the held-out split,
and whether the model copies its training digits: C_T in the judge's features and in pixels (below -3: copies),
the share of samples nearer a training digit than 95% of held-out digits are (5% for real data), the
point-by-point copying rate, and the timestep at which the model parts from the optimal denoiser. The baselines
are scored once per data/autoencoder setting (or taken from ``--upstream``, an experiment folder whose data,
autoencoder, latents, judge and baselines match). Runs the stage functions directly (no Prefect, Ray or MLflow)
in a temp folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
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
from tasks.data import load_split  # noqa: E402
from tasks.paths import data_dir  # noqa: E402
from tasks.scoring import build_scorer  # noqa: E402
from tasks.train import train_diffusion  # noqa: E402

# name -> overrides of the demo preset; the first is the demo as it ships
SETTINGS = {
    "demo": [],
    "steps/2": ["train.steps=3000"],
    "steps x2": ["train.steps=12000"],
    "no restarts": ["sample.restarts=0"],
    "ddim 50": ["sample.sampler=ddim", "sample.steps=50"],
    "ancestral 250": ["sample.sampler=ddpm", "sample.steps=250"],
    "min-snr 2": ["train.min_snr_gamma=2"],
    "min-snr 5": ["train.min_snr_gamma=5"],
    "ema 0.998": ["train.ema_decay=0.998"],
    "lr 3e-3": ["train.lr=0.003"],
    "batch 512": ["train.batch_size=512", "train.steps=3000"],
    "float32": ["train.bf16=false"],
    "time_dim 256": ["network.time_dim=256", "train.steps=3000"],
    "previous demo": ["network.time_dim=256", "train.bf16=false", "train.steps=3000", "sample.sampler=ddim",
                      "sample.steps=50", "sample.restarts=0"],
    "5 blocks": ["network.layers=5"],
    "hidden 512": ["network.hidden=512"],
    "ae no kl": ["autoencoder.kl_weight=0"],
    # against copying the training digits (docs/generalisation.md)
    "dropout 0.1": ["network.dropout=0.1"],
    "dropout 0.2": ["network.dropout=0.2"],
    "hidden 128": ["network.hidden=128"],
    "weight decay": ["train.weight_decay=0.1"],
    "all three": ["network.dropout=0.2", "network.hidden=128", "sample.restarts=0"],
}
UPSTREAM = ("data", "autoencoder", "classifier", "eval", "seed", "sample")  # sections the baselines depend on
UPSTREAM_FOLDERS = ("data", "autoencoder", "latents", "classifier", "baselines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SETTINGS), help="settings to run (default: all)")
    parser.add_argument("--distribution", default="gaussian")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0, help="the models' training (and sampling) seed")
    parser.add_argument("--pixel-gmm", action="store_true", help="also score a Gaussian mixture fitted to the pixels")
    parser.add_argument("--upstream", type=Path, help="an experiment folder to take data, autoencoder, latents, "
                        "judge and baselines from (they must match the settings' upstream sections)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each model trains in the demo: five Ray tasks, one thread each, on two cores
    rows = []
    with tempfile.TemporaryDirectory(prefix="logdiff-bench-") as tmp:
        prepared: dict[str, Path] = {}
        for name in args.only or SETTINGS:
            cfg = config.load(args.preset, [*SETTINGS[name], f"diffusion.distributions={{{args.distribution}: {{}}}}",
                                            f"train.seeds=[{args.seed}]"])
            key = repr(cfg.settings(*UPSTREAM))
            if key not in prepared:  # data, autoencoder, judge and baselines once per upstream setting
                prepared[key] = Path(tmp) / f"upstream{len(prepared)}"
                cfg = replace(cfg, workdir=str(prepared[key]))
                if args.upstream:
                    for folder in UPSTREAM_FOLDERS:
                        shutil.copytree(args.upstream / folder, prepared[key] / folder)
                steps = (ingest, train_autoencoder, lambda c: encode_latents(c, "identity"), train_classifier,
                         lambda c: compute_baselines(c, "identity"))
                for step in () if args.upstream else steps:
                    step(cfg)
            cfg = replace(cfg, workdir=str(prepared[key]))
            variant = Variant(args.distribution, "identity", cfg.train.seeds[0])
            started = time.process_time()
            train_diffusion(cfg, variant, progress=False)
            train_cpu = time.process_time() - started
            started = time.perf_counter()
            record = evaluate(cfg, variant)
            rows.append((name, train_cpu, time.perf_counter() - started, record))
            print_row(*rows[-1], header=len(rows) == 1)
            if args.pixel_gmm and len(rows) == 1:
                gmm_score = pixel_gmm_score(cfg)
    baselines = rows[0][3]["baselines"]
    metric = rows[0][3]["champion_metric"]
    print(f"\nbaselines ({rows[0][3]['metric_sample_size']} samples): " + ", ".join(
        f"{name} {scores[metric]:.3g}" for name, scores in baselines.items()))
    if args.pixel_gmm:
        print(f"a 10-component Gaussian mixture fitted to the training pixels (no latent space): {metric} "
              f"{gmm_score[metric]:.3g} [{gmm_score[metric + '_low']:.3g}, {gmm_score[metric + '_high']:.3g}]")


def pixel_gmm_score(cfg) -> dict:
    """A simple generator that needs no autoencoder, scored as the models are: what a latent model should beat."""
    from sklearn.mixture import GaussianMixture

    train = load_split(data_dir(cfg), "train").values
    scorer = build_scorer(cfg)
    gmm = GaussianMixture(10, covariance_type="full", random_state=cfg.seed).fit(train.reshape(len(train), -1) / 1.0)
    pixels = gmm.sample(scorer.size)[0].clip(0, 255).round().astype("uint8").reshape(-1, *train.shape[1:])
    return scorer.score(pixels)


def print_row(name: str, train_cpu: float, eval_s: float, record: dict, header: bool) -> None:
    metric = record["champion_metric"]
    held_out = f"held_out_{metric}"
    if header:
        print(f"{'setting':<14}{'train CPU-s':>12}{'eval s':>8}  {metric + ' [95% interval]':<28}{'x ceiling':>10}"
              f"{'precision':>10}{'recall':>8}  {'held-out [95% interval]':<28}{'x ceiling':>10}"
              f"{'C_T judge':>10}{'C_T pixels':>11}{'near 5%':>8}{'copy rate':>10}{'parts at t':>11}")
    ratio = record["ceiling_ratio"]
    ratio_h = record.get("held_out_ceiling_ratio")
    copied = record.get("copying", {})
    c_t = {space: f"{copied[space]['c_t']:.1f}" if space in copied else "n/a" for space in ("judge", "pixels")}
    first = copied.get("pixels") or next(iter(copied.values()), {})  # near-copies and the rate: pixels if tested
    parted = record.get("deviation", {}).get("parting_t")
    print(f"{name:<14}{train_cpu:>12.1f}{eval_s:>8.1f}  {_interval(record, metric):<28}"
          f"{'n/a' if ratio is None else f'{ratio:.2f}':>10}"
          f"{record.get('precision', float('nan')):>10.2f}{record.get('recall', float('nan')):>8.2f}  "
          f"{_interval(record, held_out):<28}{'n/a' if ratio_h is None else f'{ratio_h:.2f}':>10}"
          f"{c_t['judge']:>10}{c_t['pixels']:>11}{first.get('near_copy_5', float('nan')):>8.1%}"
          f"{first.get('copying_rate', float('nan')):>10.1%}{str(parted):>11}", flush=True)


def _interval(record: dict, metric: str) -> str:
    if metric not in record:
        return "n/a"
    return f"{record[metric]:.3g} [{record[metric + '_low']:.3g}, {record[metric + '_high']:.3g}]"


if __name__ == "__main__":
    main()
