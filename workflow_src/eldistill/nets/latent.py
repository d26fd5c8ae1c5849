"""The latent interface of ImageNet 512 (EDM2): the Stable Diffusion VAE around a 64x64x4 latent teacher.

EDM2's conventions (anchors B.4; edm2 `training/encoders.py::StabilityVAEEncoder`):
- encode: uint8 / 255 (range [0, 1]) -> VAE encoder -> the 8-channel raw latents (mean, std);
- final latents = (mean + std * eps) * scale + bias, scale = final_std / raw_std, bias = final_mean - raw_mean * scale,
  so they have mean 0 and std 0.5 (SD's 0.18215 factor is not used);
- decode: (x - bias) / scale -> VAE decoder -> clamp(0, 1) * 255 -> uint8 (truncation, as EDM2).
diffusers is optional: it is imported only by `LatentCodec.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

RAW_MEAN = (5.81, 3.25, 0.12, -2.15)  # EDM2's assumed statistics of sd-vae-ft-mse latents on ImageNet
RAW_STD = (4.17, 4.62, 3.71, 3.28)


def edm2_scale_bias(raw_mean=RAW_MEAN, raw_std=RAW_STD, final_mean=0.0, final_std=0.5):
    """(scale, bias) float32 tensors of shape (C,), computed in float32 like EDM2."""
    raw_mean = torch.as_tensor(raw_mean, dtype=torch.float32)
    raw_std = torch.as_tensor(raw_std, dtype=torch.float32)
    scale = torch.tensor(final_std, dtype=torch.float32) / raw_std
    return scale, torch.tensor(final_mean, dtype=torch.float32) - raw_mean * scale


def posterior_sample(raw: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Raw (mean, std) latents (B, 2C, h, w) and standard normal noise (B, C, h, w) -> final latents, as EDM2's
    `StabilityVAEEncoder.encode_latents`: (mean + std * noise) * scale + bias, in float32."""
    mean, std = raw.to(torch.float32).chunk(2, dim=1)
    if noise.shape != mean.shape:
        raise ValueError(f"latent noise has shape {tuple(noise.shape)}, the latents {tuple(mean.shape)}")
    scale = torch.as_tensor(scale, dtype=torch.float32, device=mean.device).reshape(1, -1, 1, 1)
    bias = torch.as_tensor(bias, dtype=torch.float32, device=mean.device).reshape(1, -1, 1, 1)
    return (mean + noise.to(mean) * std) * scale + bias


def _field(output, name):
    """diffusers returns dataclass-like outputs that also index like dicts; stand-ins may offer either."""
    return getattr(output, name) if hasattr(output, name) else output[name]


class LatentCodec(torch.nn.Module):
    """Pixels <-> EDM2 final latents through a frozen VAE (diffusers AutoencoderKL or anything alike:
    `vae.encode(x).latent_dist.{mean,std}` and `vae.decode(z).sample`)."""

    def __init__(self, vae: torch.nn.Module, scale=None, bias=None, batch_size: int = 8):
        super().__init__()
        default_scale, default_bias = edm2_scale_bias()
        scale = default_scale if scale is None else torch.as_tensor(scale, dtype=torch.float32).flatten()
        bias = default_bias if bias is None else torch.as_tensor(bias, dtype=torch.float32).flatten()
        if scale.shape != bias.shape or (scale == 0).any():
            raise ValueError(
                f"latent codec: 'scale' {list(scale.shape)} and 'bias' {list(bias.shape)} must match and be non-zero"
            )
        if batch_size < 1:
            raise ValueError(f"latent codec: 'batch_size' must be >= 1, got {batch_size}")
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.batch_size = int(batch_size)

    @property
    def latent_channels(self) -> int:
        return self.scale.numel()

    @classmethod
    def from_pretrained(cls, folder: str | Path, encoder_info: dict[str, Any] | None = None, **kwargs) -> LatentCodec:
        """Load an AutoencoderKL saved in a local folder (e.g. a download of stabilityai/sd-vae-ft-mse);
        `encoder_info` is the `encoder` entry of a converted EDM2 teacher's meta (its scale and bias)."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"VAE folder {folder}: no config.json; put a local copy of stabilityai/sd-vae-ft-mse there "
                "(files config.json and diffusion_pytorch_model.safetensors)"
            )
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError("the ImageNet-512 latent interface needs diffusers: pip install diffusers") from e
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        info = encoder_info or {}
        return cls(vae, scale=info.get("scale"), bias=info.get("bias"), **kwargs)

    def _batched(self, fn, x):
        return torch.cat([fn(chunk) for chunk in x.split(self.batch_size)])

    @torch.no_grad()
    def encode_pixels(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> raw latents (B, 2C, H/8, W/8): the VAE posterior's mean and std."""
        x = images_uint8.to(torch.float32) / 255

        def run(chunk):
            dist = _field(self.vae.encode(chunk), "latent_dist")
            return torch.cat([dist.mean, dist.std], dim=1)

        return self._batched(run, x)

    def encode_latents(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw (mean, std) latents -> final latents: one posterior draw, then EDM2's scale and bias."""
        shape = (raw.shape[0], raw.shape[1] // 2, *raw.shape[2:])
        noise = torch.randn(shape, generator=generator, device=raw.device, dtype=torch.float32)
        return posterior_sample(raw, noise, self.scale, self.bias)

    def encode(self, images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.encode_latents(self.encode_pixels(images_uint8), generator)

    def _decode01(self, latents: torch.Tensor) -> torch.Tensor:
        x = (latents.to(torch.float32) - self.bias.reshape(1, -1, 1, 1)) / self.scale.reshape(1, -1, 1, 1)
        return self._batched(lambda z: _field(self.vae.decode(z), "sample"), x)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> images in [-1, 1] (float, differentiable w.r.t. the latents, not clamped)."""
        return self._decode01(latents) * 2 - 1

    @torch.no_grad()
    def decode_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> uint8 images for FID, exactly as EDM2: clamp(0, 1) * 255, truncated."""
        return self._decode01(latents).clamp(0, 1).mul(255).to(torch.uint8)
