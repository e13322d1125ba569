"""Autoencoder pretraining: the latent space the diffusion models work in, and the cap on their quality (scored
as the "ceiling" by the baselines stage).

Objective: L1 reconstruction + ``gradient_weight`` x image-gradient L1 (edges) + ``kl_weight`` x KL (optional)
+ ``adversarial_weight`` x PatchGAN hinge loss (optional, from ``adversarial_start``). Resumes from its last
checkpoint after a kill; reports validation PSNR.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from logdiff_core.autoencoder import ConvAutoencoder, PatchDiscriminator, gradient_loss, hinge_d_loss, hinge_g_loss
from logdiff_core.networks import count_parameters
from logdiff_core.progress import progress_bar

from .config import Config, write_yaml
from .data import float_to_images, images_to_float, load_split
from .io import Resumable, fingerprint, save_safetensors, stage_output, without_run_length, write_json
from .paths import MODEL_FILE, autoencoder_dir, checkpoint_file, data_dir, metrics_file
from .runtime import StepCallback, bf16_autocast, resolve_device, seed_everything
from .visuals import save_image_grid

# The figure worth comparing across experiments; the reconstructions' score on the pipeline's metric is the
# baselines stage's "ceiling".
HEADLINE = ("val_psnr",)


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




def train_autoencoder(cfg: Config, callback: StepCallback | None = None) -> dict:
    """Train (or resume) the autoencoder on the ingested train split; write its folder (``model.safetensors``,
    ``reconstructions.png``, ``record.json``) and its headline figures in ``metrics/autoencoder.json``."""
    if cfg.autoencoder.kind == "none":  # the model file still marks the stage's output, for DVC and the codec
        return _write_outputs(cfg, {}, {"kind": "none"}, {"kind": "none"})
    train = load_split(data_dir(cfg), "train")
    if train.kind != "image":
        raise ValueError("autoencoder.kind=conv needs image data; set autoencoder.kind=none for array data")
    val = load_split(data_dir(cfg), "val")
    device = resolve_device(cfg.train.device)
    gen = seed_everything(cfg.seed)
    ae_cfg = cfg.autoencoder
    model = build_autoencoder(cfg, train.values.shape[1]).to(device)
    disc = PatchDiscriminator(train.values.shape[1], input_size=train.values.shape[-1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=ae_cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=ae_cfg.lr, betas=(0.5, 0.9))
    data = images_to_float(train.values).to(device)

    run_fingerprint = fingerprint({"seed": cfg.seed, "data": train.manifest["content_hash"],
                                   "autoencoder": without_run_length(cfg.to_dict()["autoencoder"])})
    checkpoint = Resumable(checkpoint_file(cfg, "autoencoder"), run_fingerprint, "autoencoder", model=model,
                           disc=disc, opt=opt, opt_d=opt_d)
    start = 0
    if state := checkpoint.restore(ae_cfg.steps):
        gen.set_state(state["generator"])
        start = state["step"]

    use_adv = ae_cfg.adversarial_weight > 0
    # bf16 on CPU: 1.7x the images per CPU-second for the cifar10-cpu autoencoder (channels_last would cost as
    # much again: GroupNorm has no fast channels_last path on CPU)
    autocast = bf16_autocast(device, ae_cfg.bf16)
    began = time.perf_counter()
    bar = progress_bar(range(start, ae_cfg.steps), desc="autoencoder", initial=start, total=ae_cfg.steps)
    for step in bar:
        model.train()
        x = data[torch.randint(0, len(data), (ae_cfg.batch_size,), generator=gen).to(device)]
        adversarial_on = use_adv and step >= ae_cfg.adversarial_start
        with autocast:
            x_hat, kl = model(x)
            x_hat, kl = x_hat.float(), kl.float()
            losses = {"l1": F.l1_loss(x_hat, x), "gradient": gradient_loss(x_hat, x), "kl": kl}
            loss = losses["l1"] + ae_cfg.gradient_weight * losses["gradient"] + ae_cfg.kl_weight * kl
            if adversarial_on:
                losses["adversarial"] = hinge_g_loss(disc(x_hat).float())
                loss = loss + ae_cfg.adversarial_weight * losses["adversarial"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial_on:
            with autocast:
                losses["discriminator"] = hinge_d_loss(disc(x).float(), disc(x_hat.detach()).float())
            opt_d.zero_grad(set_to_none=True)
            losses["discriminator"].backward()
            opt_d.step()
        if (step + 1) % ae_cfg.log_every == 0 or step + 1 == ae_cfg.steps:
            metrics = {f"ae_{k}": v.item() for k, v in losses.items()} | {"ae_loss": loss.item()}
            bar.set_postfix(loss=f"{metrics['ae_loss']:.4f}", refresh=False)
            if callback:
                callback(step + 1, metrics)
        if (step + 1) % ae_cfg.checkpoint_every == 0:
            checkpoint.save(step + 1, generator=gen.get_state())
    seconds = time.perf_counter() - began
    trained = ae_cfg.steps - start
    checkpoint.save(ae_cfg.steps, generator=gen.get_state())

    recon = reconstruct(model, val.values, device)
    report = {"val_psnr": psnr(recon, val.values), "val_count": len(val.values)}
    record = {"kind": "conv", "steps": ae_cfg.steps, "parameters": count_parameters(model), **report}
    timing = {"seconds": seconds, "images_per_s": trained * ae_cfg.batch_size / seconds if trained else None}
    return _write_outputs(cfg, model.state_dict(), {"kind": "conv", "init": model.init_args}, record, timing,
                          np.concatenate([val.values[:32], recon[:32]]))


def _write_outputs(cfg: Config, tensors: dict, settings: dict, record: dict, timing: dict | None = None,
                   comparison: np.ndarray | None = None) -> dict:
    """The folder holds what the run made, identical whoever runs it; timings go to metrics/ and MLflow only."""
    with stage_output(autoencoder_dir(cfg), "autoencoder") as out:
        write_yaml(out / "config.yaml", cfg.settings("seed", "data", "autoencoder"))
        save_safetensors(out / MODEL_FILE, tensors, settings)
        if comparison is not None:  # originals above, reconstructions below
            save_image_grid(comparison, out / "reconstructions.png", nrow=8)
        write_json(out / "record.json", record)
    headline = {k: v for k, v in record.items() if k in HEADLINE} | (timing or {})
    write_json(metrics_file(cfg, "autoencoder"), headline)
    return {**record, **(timing or {})}
