"""Convolutional (optionally KL-regularised) autoencoder for latent diffusion, plus its training losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logdiff_core.layers import DoubleConv, downsample_conv, group_norm, upsample_conv

DOWNSAMPLE_FACTORS = (1, 2, 4)


class ConvAutoencoder(nn.Module):
    """Maps images in [-1, 1] of shape [B, C, H, W] to latents [B, latent_channels, H/d, W/d], d = ``downsample``.

    The width doubles at each downsampling (base_channels * 2**i). With ``kl=True`` the encoder outputs a
    diagonal Gaussian posterior (VAE-style); ``encode`` then returns its mean so latents are deterministic.
    The decoder output is not squashed: callers clamp to [-1, 1] when they need valid images.
    """

    def __init__(self, in_channels: int, latent_channels: int = 4, downsample: int = 2,
                 base_channels: int = 32, kl: bool = False) -> None:
        super().__init__()
        if downsample not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"downsample={downsample} is not supported; choose one of {DOWNSAMPLE_FACTORS}")
        self.kl = kl
        # saved with the weights so a checkpoint rebuilds its own architecture
        self.init_args = {"in_channels": in_channels, "latent_channels": latent_channels,
                          "downsample": downsample, "base_channels": base_channels, "kl": kl}
        widths = [base_channels * 2 ** i for i in range(downsample.bit_length())]  # one more than log2(d)

        encoder: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for w, w_next in zip(widths, widths[1:]):
            encoder += [DoubleConv(w, w), downsample_conv(w, w_next)]
        encoder += [DoubleConv(widths[-1], widths[-1]), group_norm(widths[-1]), nn.SiLU(),
                    nn.Conv2d(widths[-1], latent_channels * (2 if kl else 1), 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1),
                                    DoubleConv(widths[-1], widths[-1])]
        for w, w_next in zip(widths[::-1], widths[::-1][1:]):
            decoder += [upsample_conv(w, w_next), DoubleConv(w_next, w_next)]
        decoder += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    def encode_distribution(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean, logvar) of the posterior when kl; (z, None) otherwise."""
        h = self.encoder(x)
        if not self.kl:
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_distribution(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(reconstruction, KL to N(0, I) averaged over latent elements; 0 without kl)."""
        mean, logvar = self.encode_distribution(x)
        if logvar is None:
            return self.decode(mean), mean.new_zeros(())
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        kl_loss = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return self.decode(z), kl_loss


class PatchDiscriminator(nn.Module):
    """PatchGAN: stride-2 4x4 convs with GroupNorm and LeakyReLU, then a conv3x3 to a [B, 1, h, w] logit map.

    Uses min(max_downsamples, log2(input_size) - 1) stride-2 convs, so the logit map is at least 2x2 for
    inputs as small as 4x4 (8x8 -> 2x2, 32x32 -> 4x4).
    """

    def __init__(self, in_channels: int, base_channels: int = 32, input_size: int = 32,
                 max_downsamples: int = 3) -> None:
        super().__init__()
        num_downsamples = max(0, min(max_downsamples, input_size.bit_length() - 2))
        layers: list[nn.Module] = []
        width_in, width = in_channels, base_channels
        for i in range(num_downsamples):
            layers.append(nn.Conv2d(width_in, width, 4, stride=2, padding=1))
            if i > 0:  # no norm on the first layer, as in pix2pix: it would wash out the input statistics
                layers.append(group_norm(width))
            layers.append(nn.LeakyReLU(0.2))
            width_in, width = width, min(2 * width, 8 * base_channels)
        layers.append(nn.Conv2d(width_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss; 0 once real logits >= 1 and fake logits <= -1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator (autoencoder) adversarial loss: raise the discriminator's logits on reconstructions."""
    return -fake_logits.mean()


def gradient_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """L1 between finite-difference image gradients along H and W: a sharpness term needing no pretrained net."""
    def grads(img: Tensor) -> tuple[Tensor, Tensor]:
        return img[..., 1:, :] - img[..., :-1, :], img[..., :, 1:] - img[..., :, :-1]

    (dh_hat, dw_hat), (dh, dw) = grads(x_hat), grads(x)
    return (dh_hat - dh).abs().mean() + (dw_hat - dw).abs().mean()
