"""U-Net noise predictor for images and latents (double-convolution blocks, self-attention, SIREN option)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logdiff_core.layers import DoubleConv, TimeEmbedding, activation, downsample_conv, group_norm, upsample_conv


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels: GroupNorm -> qkv 1x1 -> SDPA -> 1x1, residual."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide the attention width {channels}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # [B, 3, heads, head_dim, HW] -> three [B, heads, HW, head_dim] tensors, the layout SDPA expects
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """One U-Net stage: a DoubleConv, followed by self-attention where the feature map is small enough."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, attend: bool, num_heads: int,
                 siren: bool, dropout: float) -> None:
        super().__init__()
        self.block = DoubleConv(in_channels, out_channels, time_dim, siren, dropout)
        self.attn = SelfAttention(out_channels, num_heads) if attend else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        return self.attn(self.block(x, t_emb))


class UNet(nn.Module):
    """Predicts the noise epsilon of x_t at timesteps t: forward(x [B,C,H,W], t [B]) -> [B,out_channels,H,W].

    ``channel_mults`` gives one encoder level per entry (width base_channels * mult) with a stride-2
    downsampling between consecutive levels, so H and W must be divisible by 2 ** (len(channel_mults) - 1).
    ``input_size`` (the expected side) only decides which levels get self-attention: those whose side is
    <= ``attention_resolution``, plus the middle block; ``attention_resolution=0`` disables attention entirely.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 2), attention_resolution: int = 8, num_heads: int = 4,
                 siren: bool = False, dropout: float = 0.0, input_size: int = 32) -> None:
        super().__init__()
        channel_mults = tuple(channel_mults)
        if not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"channel_mults={channel_mults} must be a non-empty sequence of positive integers")
        self.channel_mults = channel_mults
        self.size_multiple = 2 ** (len(channel_mults) - 1)
        self._check_size(input_size, input_size)

        widths = [base_channels * m for m in channel_mults]
        sides = [input_size // 2 ** i for i in range(len(widths))]
        attends = [side <= attention_resolution for side in sides]
        time_dim = 4 * base_channels
        level_args = dict(time_dim=time_dim, num_heads=num_heads, siren=siren, dropout=dropout)

        self.time_embed = TimeEmbedding(time_dim, siren)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList(Level(w_in, w, attend=a, **level_args)
                                     for w_in, w, a in zip([widths[0], *widths[:-1]], widths, attends))
        # Identity after the last level keeps forward a plain zip over equal-length lists.
        self.downsamplers = nn.ModuleList([*map(downsample_conv, widths[:-1]), nn.Identity()])
        self.middle = Level(widths[-1], widths[-1], attend=attention_resolution > 0, **level_args)
        self.middle_out = DoubleConv(widths[-1], widths[-1], time_dim, siren, dropout)
        # Decoder runs deepest level first: upsample (none at the deepest), concatenate the skip, Level.
        rev, rev_attends = widths[::-1], attends[::-1]
        self.upsamplers = nn.ModuleList([nn.Identity(), *map(upsample_conv, rev[:-1])])
        self.decoder = nn.ModuleList(Level(w_prev + w, w, attend=a, **level_args)
                                     for w_prev, w, a in zip([rev[0], *rev[:-1]], rev, rev_attends))
        self.out = nn.Sequential(group_norm(widths[0]), activation(siren),
                                 nn.Conv2d(widths[0], out_channels or in_channels, 3, padding=1))
        # Untrained model predicts exactly 0, which keeps the first training steps stable.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _check_size(self, height: int, width: int) -> None:
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"input size {height}x{width} is not divisible by {self.size_multiple} "
                             f"= 2 ** (len(channel_mults) - 1) for channel_mults={self.channel_mults}")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self._check_size(x.shape[-2], x.shape[-1])  # shape-only check: compiles to a guard
        t_emb = self.time_embed(t)
        h = self.conv_in(x)
        skips = []
        for level, down in zip(self.encoder, self.downsamplers):
            h = level(h, t_emb)
            skips.append(h)
            h = down(h)
        h = self.middle_out(self.middle(h, t_emb), t_emb)
        for up, level, skip in zip(self.upsamplers, self.decoder, reversed(skips)):
            h = level(torch.cat([up(h), skip], dim=1), t_emb)
        return self.out(h)
