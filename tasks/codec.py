"""The map between data and the space the diffusion model works in, and the loaders of what the encode
stage writes.

data --transform--> (autoencoder encode) --(x - shift) * scale--> diffusion space, and back. Everything a
sampler needs to return data in its original units (uint8 images or arrays) is in one ``Codec``, saved beside
the latents and bundled with every trained model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from logdiff_core import transforms
from logdiff_core.autoencoder import ConvAutoencoder

from .config import Config
from .data import float_to_images, images_to_float
from .io import load_checkpoint, read_json
from .paths import autoencoder_dir, latents_dir


@dataclass
class Codec:
    kind: str  # "image" or "array"
    transform: transforms.Transform
    autoencoder: ConvAutoencoder | None
    shift: torch.Tensor  # broadcasts over one latent
    scale: torch.Tensor
    latent_shape: tuple[int, ...]

    def to_model_input(self, values: np.ndarray, batch_size: int = 1024, device="cpu") -> torch.Tensor:
        """Data (uint8 images or float arrays) -> autoencoder latents or transformed data, before scaling."""
        if self.kind == "image":
            x = images_to_float(values)
        else:
            x = self.transform.forward(torch.as_tensor(values, dtype=torch.float32))
        if self.autoencoder is None:
            return x
        self.autoencoder.to(device).eval()
        with torch.no_grad():
            parts = [self.autoencoder.encode(chunk.to(device)).cpu() for chunk in x.split(batch_size)]
        return torch.cat(parts)

    def encode(self, values: np.ndarray, batch_size: int = 1024, device="cpu") -> torch.Tensor:
        return (self.to_model_input(values, batch_size, device) - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        x = z / self.scale.to(z.device) + self.shift.to(z.device)
        if self.autoencoder is not None:
            self.autoencoder.to(z.device).eval()
            x = torch.cat([self.autoencoder.decode(chunk) for chunk in x.split(batch_size)])
        if self.kind == "image":
            return float_to_images(x)
        return self.transform.inverse(x.double().cpu()).numpy()

    def state_dict(self) -> dict:
        ae = self.autoencoder
        return {
            "kind": self.kind, "transform": self.transform.state_dict(), "shift": self.shift, "scale": self.scale,
            "latent_shape": list(self.latent_shape),
            "autoencoder": None if ae is None else {"init": ae.init_args, "state": ae.state_dict()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "Codec":
        ae = None
        if state["autoencoder"] is not None:
            ae = ConvAutoencoder(**state["autoencoder"]["init"])
            ae.load_state_dict(state["autoencoder"]["state"])
            ae.eval()
        return cls(state["kind"], transforms.from_state(state["transform"]), ae, state["shift"], state["scale"],
                   tuple(state["latent_shape"]))


def load_autoencoder(cfg: Config) -> ConvAutoencoder | None:
    """The autoencoder stage's model, or None when the preset diffuses the data directly."""
    state = load_checkpoint(autoencoder_dir(cfg) / "model.pt", "autoencoder")
    if state["kind"] == "none":
        return None
    model = ConvAutoencoder(**state["init"])
    model.load_state_dict(state["state"])
    return model.eval()


def load_codec(cfg: Config, transform: str) -> Codec:
    return Codec.from_state(load_checkpoint(latents_dir(cfg, transform) / "codec.pt", "codec"))


def load_latents(cfg: Config, transform: str, split: str) -> torch.Tensor:
    path = latents_dir(cfg, transform) / f"{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"no latents at {path}; run the encode stage first "
                                f"(logdiff stage encode --transform {transform})")
    return torch.from_numpy(np.load(path))


def latents_manifest(cfg: Config, transform: str) -> dict:
    return read_json(latents_dir(cfg, transform) / "manifest.json")
