"""Building blocks shared by the denoisers and the autoencoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Sine(nn.Module):
    """SIREN activation sin(w0 * x)."""

    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)


def activation(siren: bool) -> nn.Module:
    return Sine() if siren else nn.SiLU()


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer positional encoding of timesteps ``t`` [B] (int or float) -> [B, dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))  # odd dim: one zero column


class TimeEmbedding(nn.Module):
    """Timestep -> learned [B, dim] vector: sinusoidal encoding, Linear, activation, Linear."""

    def __init__(self, dim: int, siren: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), activation(siren), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 32 that divides ``channels``."""
    groups = next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class DoubleConv(nn.Module):
    """Residual "double convolution": conv3x3 -> GN -> act (+ time) -> dropout -> conv3x3 -> GN -> act, + skip.

    ``time_dim=None`` makes it time-independent (autoencoder use).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int | None = None,
                 siren: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                   group_norm(out_channels), activation(siren))
        self.time_proj = (nn.Sequential(activation(siren), nn.Linear(time_dim, out_channels))
                          if time_dim is not None else None)
        self.conv2 = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1),
                                   group_norm(out_channels), activation(siren))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor | None = None) -> Tensor:
        h = self.conv1(x)
        if self.time_proj is not None:  # fixed at construction, so no graph break under torch.compile
            h = h + self.time_proj(t_emb)[:, :, None, None]
        return self.conv2(h) + self.skip(x)


def downsample_conv(channels: int, out_channels: int | None = None) -> nn.Conv2d:
    """Halve the spatial size with a stride-2 conv3x3."""
    return nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)


def upsample_conv(channels: int, out_channels: int | None = None) -> nn.Sequential:
    """Double the spatial size: nearest-neighbour upsampling then conv3x3 (no checkerboard artefacts)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(channels, out_channels or channels, 3, padding=1))
