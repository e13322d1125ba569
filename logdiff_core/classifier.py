"""The judge: a small classifier trained on the training split's labels. Its penultimate features give the offline
image metric (``fd_classifier``, a Fréchet distance in these features: not FID, which needs Inception), improved
precision and recall in the same features, and the entropy of the predicted classes.

Two networks, picked by image size: a small CNN for tiny images (8x8 digits) and a ResNet-9 (the DAWNBench
family) for 32x32 and up. Both take uint8 images, converted exactly as the pipeline converts them.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .progress import progress_bar

SMALL_IMAGE = 16  # sides up to this use the small CNN


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Judge(nn.Module):
    """``features(x)`` -> [B, D] penultimate features (global pooling of the last block); ``forward`` -> logits.

    ``x`` is float in [-1, 1] (``to_input``). ``init_args`` rebuild the network from a saved state.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, base_channels: int = 32) -> None:
        super().__init__()
        self.init_args = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
                          "base_channels": base_channels}
        w = base_channels
        if image_size <= SMALL_IMAGE:  # two conv blocks, one halving, then global pooling: 8x8 -> 4x4
            self.body = nn.Sequential(_conv_bn(in_channels, w), _conv_bn(w, w), nn.MaxPool2d(2),
                                      _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w))
            self.feature_dim = 2 * w
        else:  # ResNet-9: prep, (conv, pool, residual), (conv, pool), (conv, pool, residual)
            self.body = nn.Sequential(_conv_bn(in_channels, w),
                                      _conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),
                                      _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
                                      _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w))
            self.feature_dim = 8 * w
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x).amax(dim=(2, 3))  # global max pooling, as ResNet-9

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, C, H, W] -> float32 in [-1, 1], the pipeline's one image convention."""
    return torch.as_tensor(images).float() / 127.5 - 1.0


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random translation by up to 1/8 of the side (padding with the image's background, -1) and, for colour
    images of 32 px and up, horizontal flips. Digits are never flipped: a flipped 2 is not a 2."""
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, :]
    shifted = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]
    out = shifted.permute(0, 3, 1, 2)
    if c == 3 and h > SMALL_IMAGE:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(flip, out.flip(-1), out)
    return out.contiguous()


def train_judge(model: Judge, images: np.ndarray, labels: np.ndarray, *, steps: int, batch_size: int, lr: float,
                generator: torch.Generator, device: torch.device | str = "cpu", progress: bool = True,
                bf16: bool = False) -> dict:
    """AdamW with a one-cycle learning rate (20% warm-up, then linear decay to 0), label smoothing 0.1 and
    ``augment``; bf16 autocast when ``bf16`` (the caller decides whether the device has it), with channels_last
    (on a CPU with bf16 units: 2.3x the images per CPU-second of float32 for a width-16 ResNet-9, 1.5x for the
    digits' CNN, which float32 channels_last would slow down 2x). Deterministic on CPU for a seeded ``generator``."""
    device = torch.device(device)
    model.to(device).train()
    memory_format = torch.channels_last if bf16 or device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)
    data = to_input(images).to(device)
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    warmup = max(1, steps // 5)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
    began, losses = time.perf_counter(), []
    for _ in progress_bar(range(steps), desc="judge classifier", disable=not progress, leave=False):
        index = torch.randint(0, len(data), (batch_size,), generator=generator).to(device)
        x = augment(data[index], generator).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), targets[index], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.detach())
    model.eval()
    tail = torch.stack(losses[-max(1, steps // 10):]).mean().item() if losses else math.nan
    return {"steps": steps, "seconds": time.perf_counter() - began, "final_loss": tail}


@torch.no_grad()
def predict(model: Judge, images: np.ndarray, batch_size: int = 512,
            device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features [N, D], class probabilities [N, K]), both float64, for uint8 images [N, C, H, W]."""
    device = torch.device(device)
    model.to(device).eval()
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size]).to(device)
        f = model.features(x).float()
        features.append(f.double().cpu())
        probabilities.append(model.head(f).softmax(dim=1).double().cpu())
    if not features:
        return np.empty((0, model.feature_dim)), np.empty((0, model.head.out_features))
    return torch.cat(features).numpy(), torch.cat(probabilities).numpy()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))
