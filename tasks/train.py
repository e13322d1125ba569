"""Latent diffusion training for one model: a noise distribution under a data transform (a ``Variant``).

AdamW with linear warmup, EMA weights, gradient clipping; bf16 autocast on CUDA and on CPUs with bf16 units; on
CUDA channels_last and optional ``torch.compile``. The whole latent set sits on the device and batches are drawn
by index, so no data loader stalls the GPU. Seeded and deterministic on CPU; atomic periodic checkpoints and
resume after a kill; a per-step callback receives metrics. Runs unchanged under DDP (one process per GPU, e.g. from
Ray Train): gradients are averaged, rank 0 writes the files.
"""
from __future__ import annotations

import copy
import csv
import io
import math
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from logdiff_core import noise as noise_lib
from logdiff_core.diffusion import training_loss
from logdiff_core.networks import count_parameters
from logdiff_core.progress import progress_bar

from .codec import latents_manifest, load_codec, load_latents
from .config import Config, Variant, write_yaml
from .data import column_names, load_manifest
from .io import (Resumable, atomic_write_text, check_replaceable, fingerprint, sha256_file, stage_output,
                 without_run_length, write_json)
from .paths import MODEL_FILE, checkpoint_file, data_dir, latents_dir, metrics_file, train_dir
from .runtime import StepCallback, bf16_autocast, resolve_device, seed_everything
from .sample import build_network, fit_time_schedule, network_spec, save_model, schedule_from
from .visuals import plot_training_curves

Evaluator = Callable[[nn.Module, int], dict]


def training_fingerprint(cfg: Config, variant: Variant) -> str:
    """What a checkpoint must match to be resumed: the latents and every setting except the run's length."""
    settings = {k: v for k, v in cfg.model_settings(variant).items()
                if k in ("seed", "network", "diffusion", "train")}
    settings["train"] = without_run_length(settings["train"])
    return fingerprint({**settings, "latents": sha256_file(latents_dir(cfg, variant.transform) / "train.npy")})


def lr_factor(tc, step: int) -> float:
    """Learning-rate multiplier at ``step``: a linear warm-up, then constant or a cosine decay to 0 at the end
    (``train.lr_schedule``)."""
    warmup = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.lr_schedule == "constant" or step < tc.warmup_steps:
        return warmup
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a model's weights (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - self.decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


def _write_history(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    fields = sorted({"step", *(k for row in rows for k in row)}, key=lambda k: (k != "step", k))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _column_names(cfg: Config) -> list[str] | None:
    """What a trained model's array samples hold, column by column (None for images)."""
    manifest = load_manifest(data_dir(cfg))
    return column_names(manifest, cfg.diffusion.labels) if manifest["kind"] == "array" else None


def train_diffusion(cfg: Config, variant: Variant, callback: StepCallback | None = None,
                    evaluator: Evaluator | None = None, progress: bool = True) -> dict:
    """Train (or resume) the denoiser for ``variant``; write its folder (model file, ``history.csv``, ``curve.csv``,
    ``curves.png``, ``record.json``) and its headline figures in ``metrics/train/<name>.json``."""
    variant = cfg.variant(variant.distribution, variant.transform, variant.seed)  # a configured one, or a clear error
    distribution = variant.distribution
    params = cfg.diffusion.distributions[distribution]
    noise = noise_lib.get(distribution, **params)
    tc = cfg.train
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = resolve_device(tc.device)
    if device.type == "cpu":  # CPU float sums depend on the thread count: fix it, whoever runs the stage
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    check_replaceable(train_dir(cfg, variant))  # before the work, not after it

    # A per-model, per-rank stream: models (and replicates) differ, and DDP ranks draw different batches.
    seed_everything(variant.seed)
    stream_seed = (cfg.seed * 1_000_003 + zlib.crc32(variant.name.encode()) + 7919 * rank) % 2**63
    gen = torch.Generator(device=device).manual_seed(stream_seed)
    data = load_latents(cfg, variant.transform, "train").to(device)
    latent_shape = tuple(latents_manifest(cfg, variant.transform)["latent_shape"])
    spec = network_spec(cfg.to_dict(), latent_shape)
    schedule = noise.forward_schedule(schedule_from(cfg.to_dict())).to(device)
    torch.manual_seed(variant.seed)  # identical initial weights on every rank
    model = build_network(spec, schedule).to(device)
    cuda = device.type == "cuda"
    if cuda and tc.channels_last and data.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    ema = EMA(model, tc.ema_decay)
    # fused: one kernel over all parameters, on CPU too (3x faster there than the per-tensor loop, for the demo's MLP)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                            fused=device.type in ("cuda", "cpu") or None)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, tc))

    checkpoint = Resumable(checkpoint_file(cfg, variant.name), training_fingerprint(cfg, variant), variant.name,
                           model=model, ema=ema.model, opt=opt, lr_schedule=lr_schedule)
    start, history, curve = 0, [], []
    if state := checkpoint.restore(tc.steps):
        gen.set_state(state["generator"][rank % len(state["generator"])].to(gen.get_state().device))
        start, history, curve = state["step"], state["history"], state["curve"]
        if rank == 0:
            print(f"{variant.name}: resuming from its checkpoint at step {start} of {tc.steps}", flush=True)

    def save_checkpoint(step: int) -> None:
        generator_states = [gen.get_state().cpu()]
        if distributed:  # every rank's stream, so a resumed DDP run continues each rank exactly
            generator_states = [torch.empty_like(generator_states[0]) for _ in range(world)]
            dist.all_gather_object(generator_states, gen.get_state().cpu())
        if rank == 0:
            checkpoint.save(step, generator=generator_states, history=history, curve=curve)

    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    if tc.compile and cuda:  # on CPU, inductor's C++ compile costs minutes and small models gain nothing
        train_model = torch.compile(train_model)
    autocast = bf16_autocast(device, tc.bf16)

    loss_sum = torch.zeros((), device=device)
    window_start, window_steps = time.perf_counter(), 0
    began = time.perf_counter()
    bar = progress_bar(range(start, tc.steps), desc=f"train {variant.name}", initial=start, total=tc.steps,
               disable=not progress or rank != 0)
    for step in bar:
        x0 = data[torch.randint(0, len(data), (tc.batch_size,), device=device, generator=gen)]
        with autocast:
            loss = training_loss(train_model, schedule, noise, x0, generator=gen,
                                 min_snr_gamma=tc.min_snr_gamma or None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        lr_schedule.step()
        ema.update(model)
        loss_sum += loss.detach()
        window_steps += 1
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            mean_loss = float(loss_sum) / window_steps  # the one host sync per logging window
            if not torch.isfinite(torch.tensor(mean_loss)):
                raise FloatingPointError(f"{variant.name}: training loss became {mean_loss} at step {done}; "
                                         "lower train.lr or raise train.grad_clip")
            seconds = time.perf_counter() - window_start
            row = {"step": done, "loss": mean_loss, "lr": opt.param_groups[0]["lr"],
                   "images_per_s": window_steps * tc.batch_size * world / max(seconds, 1e-9)}
            history.append(row)
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)  # refresh at tqdm's own pace
            if callback and rank == 0:
                callback(done, {k: v for k, v in row.items() if k != "step"})
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if evaluator and tc.eval_every and done % tc.eval_every == 0 and rank == 0:
            point = {"step": done, **evaluator(ema.model, done)}
            curve.append(point)
            if callback:
                callback(done, {k: v for k, v in point.items() if k != "step"})
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            save_checkpoint(done)
    seconds = time.perf_counter() - began

    if rank != 0:
        return {}
    if curve and curve[-1]["step"] != tc.steps and evaluator:
        curve.append({"step": tc.steps, **evaluator(ema.model, tc.steps)})
    trained_steps = tc.steps - start
    # the folder holds what the run made, identical whoever runs it (and however often it was resumed); how the
    # run went goes to metrics/ and MLflow only
    record = {"distribution": distribution, "transform": variant.transform, "seed": variant.seed,
              "noise_params": params, "steps": tc.steps, "final_loss": history[-1]["loss"] if history else None,
              "parameters": count_parameters(model), "device": str(device), "world_size": world,
              "fingerprint": checkpoint.fingerprint}
    timing = {"seconds": seconds,
              "images_per_s": trained_steps * tc.batch_size * world / seconds if trained_steps else None}
    resumed = {"resumed_from": start}
    time_fit = fit_time_schedule(ema.model, schedule, noise, latent_shape, device)  # for sample.time_schedule=fitted
    with stage_output(train_dir(cfg, variant), "train") as out:
        write_yaml(out / "config.yaml", cfg.model_settings(variant))
        save_model(out / MODEL_FILE, ema.model, spec, distribution, params, load_codec(cfg, variant.transform),
                   cfg.model_settings(variant), _column_names(cfg), time_fit)
        _write_history([{k: v for k, v in row.items() if k != "images_per_s"} for row in history], out / "history.csv")
        _write_history(curve, out / "curve.csv")
        plot_training_curves({variant.label: history}, {variant.label: curve}, out / "curves.png")
        write_json(out / "record.json", record)
    write_json(metrics_file(cfg, "train", variant.name), {"final_loss": record["final_loss"], **timing})
    return {**record, **timing, **resumed}
