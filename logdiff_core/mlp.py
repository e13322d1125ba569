"""Residual MLP noise predictor for vector data (tabular features, positive measurements)."""
from __future__ import annotations

from torch import Tensor, nn

from logdiff_core.layers import TimeEmbedding, activation


class ResidualMLPBlock(nn.Module):
    """LayerNorm -> Linear (+ time) -> act -> dropout -> Linear, added back to the input."""

    def __init__(self, hidden: int, time_dim: int, siren: bool, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.time_proj = nn.Sequential(activation(siren), nn.Linear(time_dim, hidden))
        self.fc2 = nn.Sequential(activation(siren), nn.Dropout(dropout), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, t_emb: Tensor) -> Tensor:
        return h + self.fc2(self.fc1(self.norm(h)) + self.time_proj(t_emb))


class MLPDenoiser(nn.Module):
    """Predicts the noise epsilon of x_t at timesteps t: forward(x [B, ...], t [B]) -> like x, on x flattened to
    ``dim`` features: vectors, or small latents where a few wide layers learn faster than a U-Net's many small ones.

    The timestep is embedded in ``time_dim`` numbers (None: ``hidden``, as models saved before the option): at
    ``hidden`` the time path (embedding and one projection per block) costs as much as the blocks' own layers, for
    one scalar input."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3, siren: bool = False,
                 dropout: float = 0.0, time_dim: int | None = None) -> None:
        super().__init__()
        time_dim = time_dim or hidden
        self.time_embed = TimeEmbedding(time_dim, siren)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, time_dim, siren, dropout) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))
        # Untrained model predicts exactly 0, which keeps the first training steps stable.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t_emb = self.time_embed(t)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, t_emb)
        return self.out(h).view_as(x)
