"""The map between data and the space the diffusion model works in, and the loaders of what the encode
stage writes.

data --transform--> (autoencoder encode) --(x - shift) * scale--> diffusion space, and back. Everything a
sampler needs to return data in its original units (uint8 images or arrays) is in one ``Codec``, saved beside
the latents and bundled with every trained model. A table's class labels can be modelled too (``classes``): as
one-hot channels after the transformed features, decoded to the most likely class as a last column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from logdiff_core import transforms
from logdiff_core.autoencoder import ConvAutoencoder

from .config import Config
from .data import float_to_images, images_to_float
from .io import load_safetensors, read_json, under_prefix, with_prefix
from .paths import MODEL_FILE, autoencoder_dir, latents_dir


@dataclass
class Codec:
    kind: str  # "image" or "array"
    transform: transforms.Transform
    autoencoder: ConvAutoencoder | None
    shift: torch.Tensor  # broadcasts over one latent
    scale: torch.Tensor
    latent_shape: tuple[int, ...]
    classes: int = 0  # arrays: class labels modelled as this many one-hot channels after the features (0: none)

    def to_model_input(self, values: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 1024,
                       device="cpu") -> torch.Tensor:
        """Data (uint8 images or float arrays, with their labels when the codec models them) -> autoencoder latents
        or transformed data, before scaling."""
        if self.kind == "image":
            x = images_to_float(values)
        else:
            x = self.transform.forward(torch.as_tensor(values, dtype=torch.float32))
            if self.classes:
                one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), self.classes)
                x = torch.cat([x, one_hot.to(x.dtype)], dim=1)
        if self.autoencoder is None:
            return x
        self.autoencoder.to(device).eval()
        with torch.no_grad():
            parts = [self.autoencoder.encode(chunk.to(device)).cpu() for chunk in x.split(batch_size)]
        return torch.cat(parts)

    def encode(self, values: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 1024,
               device="cpu") -> torch.Tensor:
        return (self.to_model_input(values, labels, batch_size, device) - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        x = z / self.scale.to(z.device) + self.shift.to(z.device)
        if self.autoencoder is not None:
            self.autoencoder.to(z.device).eval()
            x = torch.cat([self.autoencoder.decode(chunk) for chunk in x.split(batch_size)])
        if self.kind == "image":
            return float_to_images(x)
        x = x.double().cpu()
        if not self.classes:
            return self.transform.inverse(x).numpy()
        features = self.transform.inverse(x[:, :-self.classes]).numpy()
        return np.column_stack([features, x[:, -self.classes:].argmax(1).double().numpy()])

    def to_safe(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able settings) for ``io.save_safetensors``."""
        transform_state = self.transform.state_dict()
        tensors = {"shift": self.shift, "scale": self.scale,
                   **with_prefix("transform.", {k: v for k, v in transform_state.items() if torch.is_tensor(v)})}
        ae = self.autoencoder
        if ae is not None:
            tensors.update(with_prefix("autoencoder.", ae.state_dict()))
        settings = {"kind": self.kind, "latent_shape": list(self.latent_shape), "classes": self.classes,
                    "transform": {k: v for k, v in transform_state.items() if not torch.is_tensor(v)},
                    "autoencoder": None if ae is None else ae.init_args}
        return tensors, settings

    @classmethod
    def from_safe(cls, tensors: dict[str, torch.Tensor], settings: dict) -> "Codec":
        ae = None
        if settings["autoencoder"] is not None:
            ae = ConvAutoencoder(**settings["autoencoder"])
            ae.load_state_dict(under_prefix("autoencoder.", tensors))
            ae.eval()
        transform = transforms.from_state({**settings["transform"], **under_prefix("transform.", tensors)})
        return cls(settings["kind"], transform, ae, tensors["shift"], tensors["scale"],
                   tuple(settings["latent_shape"]), settings.get("classes", 0))


def load_autoencoder(cfg: Config) -> ConvAutoencoder | None:
    """The autoencoder stage's model, or None when the preset diffuses the data directly."""
    tensors, settings = load_safetensors(autoencoder_dir(cfg) / MODEL_FILE, "autoencoder")
    if settings["kind"] == "none":
        return None
    model = ConvAutoencoder(**settings["init"])
    model.load_state_dict(tensors)
    return model.eval()


def load_codec(cfg: Config, transform: str) -> Codec:
    return Codec.from_safe(*load_safetensors(latents_dir(cfg, transform) / "codec.safetensors", "codec"))


def load_latents(cfg: Config, transform: str, split: str) -> torch.Tensor:
    path = latents_dir(cfg, transform) / f"{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"no latents at {path}; run the encode stage first "
                                f"(logdiff stage encode --transform {transform})")
    return torch.from_numpy(np.load(path))


def latents_manifest(cfg: Config, transform: str) -> dict:
    return read_json(latents_dir(cfg, transform) / "manifest.json")
