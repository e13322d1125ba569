"""Autoencoder pretraining: the latent space the diffusion models work in, and the cap on their quality.

Objective: L1 reconstruction + ``gradient_weight`` x image-gradient L1 (edges) + ``kl_weight`` x KL (optional)
+ ``adversarial_weight`` x PatchGAN hinge loss (optional, from ``adversarial_start``). Resumes from its last
checkpoint after a kill; reports validation PSNR, the weight-free reconstruction distance (rSWD) and, when the
Inception weights are available, reconstruction FID (rFID).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from logdiff_core.autoencoder import ConvAutoencoder, PatchDiscriminator, gradient_loss, hinge_d_loss, hinge_g_loss
from logdiff_core.metrics import sliced_wasserstein_distance

from .config import Config, dump
from .data import float_to_images, images_to_float, load_split
from .io import atomic_torch_save, fingerprint, load_checkpoint, write_json
from .runtime import resolve_device, seed_everything
from .visuals import save_image_grid

StepCallback = Callable[[int, dict], None]


def stage_dir(cfg: Config) -> Path:
    return cfg.work / "autoencoder"


def build_autoencoder(cfg: Config, in_channels: int) -> ConvAutoencoder:
    ae = cfg.autoencoder
    return ConvAutoencoder(in_channels, latent_channels=ae.latent_channels, downsample=ae.downsample,
                           base_channels=ae.base_channels, kl=ae.kl_weight > 0)


def psnr(reconstructed: np.ndarray, original: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images, in dB."""
    mse = np.mean((reconstructed.astype(np.float64) - original.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def reconstruct(model: ConvAutoencoder, images: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    model.eval()
    parts = [float_to_images(model.decode(model.encode(images_to_float(chunk).to(device))))
             for chunk in np.array_split(images, max(1, math.ceil(len(images) / batch_size)))]
    return np.concatenate(parts)


def reconstruction_report(cfg: Config, model: ConvAutoencoder, originals: np.ndarray, device) -> dict:
    from .evaluate import image_fid  # evaluation owns the Inception path

    recon = reconstruct(model, originals, device)
    report = {"val_psnr": psnr(recon, originals), "val_count": len(originals),
              "val_rswd": sliced_wasserstein_distance(recon, originals)["swd_mean"]}
    report.update({f"r{k}": v for k, v in image_fid(cfg, recon, originals, stats_cache=None).items()})
    save_image_grid(np.concatenate([originals[:32], recon[:32]]), stage_dir(cfg) / "reconstructions.png", nrow=8)
    return report


def train_autoencoder(cfg: Config, callback: StepCallback | None = None) -> dict:
    """Train (or resume) the autoencoder on the ingested train split; write ``model.pt`` and ``record.json``."""
    out = stage_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml", settings_only=True)
    if cfg.autoencoder.kind == "none":  # model.pt still marks the stage's output, for DVC and load_autoencoder
        atomic_torch_save({"kind": "none"}, out / "model.pt")
        return write_record(out, {"kind": "none"})
    train = load_split(cfg.work / "data", "train")
    if train.kind != "image":
        raise ValueError("autoencoder.kind=conv needs image data; set autoencoder.kind=none for array data")
    val = load_split(cfg.work / "data", "val")
    device = resolve_device(cfg.train.device)
    gen = seed_everything(cfg.seed)
    ae_cfg = cfg.autoencoder
    model = build_autoencoder(cfg, train.values.shape[1]).to(device)
    disc = PatchDiscriminator(train.values.shape[1], input_size=train.values.shape[-1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=ae_cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=ae_cfg.lr, betas=(0.5, 0.9))
    data = images_to_float(train.values).to(device)

    checkpoint_path = out / "checkpoint.pt"
    run_fingerprint = fingerprint({
        "seed": cfg.seed, "data": train.manifest["content_hash"],
        "autoencoder": {k: v for k, v in cfg.to_dict()["autoencoder"].items() if k not in ("steps", "checkpoint_every", "log_every")}})
    start = 0
    state = load_checkpoint(checkpoint_path, "autoencoder") if checkpoint_path.exists() else {}
    if state.get("fingerprint") == run_fingerprint and state["step"] <= ae_cfg.steps:
        model.load_state_dict(state["model"]), disc.load_state_dict(state["disc"])
        opt.load_state_dict(state["opt"]), opt_d.load_state_dict(state["opt_d"])
        gen.set_state(state["generator"])
        start = state["step"]

    def save_checkpoint(step: int) -> None:
        atomic_torch_save({"model": model.state_dict(), "disc": disc.state_dict(), "opt": opt.state_dict(),
                           "opt_d": opt_d.state_dict(), "generator": gen.get_state(), "step": step,
                           "fingerprint": run_fingerprint},
                          checkpoint_path)

    use_adv = ae_cfg.adversarial_weight > 0
    began = time.perf_counter()
    bar = tqdm(range(start, ae_cfg.steps), desc="autoencoder", initial=start, total=ae_cfg.steps)
    for step in bar:
        model.train()
        x = data[torch.randint(0, len(data), (ae_cfg.batch_size,), generator=gen).to(device)]
        x_hat, kl = model(x)
        losses = {"l1": F.l1_loss(x_hat, x), "gradient": gradient_loss(x_hat, x), "kl": kl}
        loss = losses["l1"] + ae_cfg.gradient_weight * losses["gradient"] + ae_cfg.kl_weight * kl
        adversarial_on = use_adv and step >= ae_cfg.adversarial_start
        if adversarial_on:
            losses["adversarial"] = hinge_g_loss(disc(x_hat))
            loss = loss + ae_cfg.adversarial_weight * losses["adversarial"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial_on:
            losses["discriminator"] = hinge_d_loss(disc(x), disc(x_hat.detach()))
            opt_d.zero_grad(set_to_none=True)
            losses["discriminator"].backward()
            opt_d.step()
        if (step + 1) % ae_cfg.log_every == 0 or step + 1 == ae_cfg.steps:
            metrics = {f"ae_{k}": v.item() for k, v in losses.items()} | {"ae_loss": loss.item()}
            bar.set_postfix(loss=f"{metrics['ae_loss']:.4f}", refresh=False)
            if callback:
                callback(step + 1, metrics)
        if (step + 1) % ae_cfg.checkpoint_every == 0:
            save_checkpoint(step + 1)
    seconds = time.perf_counter() - began
    trained = ae_cfg.steps - start
    save_checkpoint(ae_cfg.steps)

    report = reconstruction_report(cfg, model, val.values, device)
    atomic_torch_save({"kind": "conv", "init": model.init_args, "state": model.state_dict()}, out / "model.pt")
    return write_record(out, {"kind": "conv", "steps": ae_cfg.steps, "seconds": seconds,
                              "images_per_s": trained * ae_cfg.batch_size / seconds if trained else None,
                              "parameters": sum(p.numel() for p in model.parameters()), **report})


def write_record(out: Path, record: dict) -> dict:
    write_json(out / "record.json", record)
    return record


def load_autoencoder(cfg: Config) -> ConvAutoencoder | None:
    state = load_checkpoint(stage_dir(cfg) / "model.pt", "autoencoder")
    if state["kind"] == "none":
        return None
    model = ConvAutoencoder(**state["init"])
    model.load_state_dict(state["state"])
    return model.eval()
