"""The one-step generator every distiller trains: the teacher's preconditioned denoiser evaluated at a
fixed input noise level, x = D_theta(sigma_init * z; sigma_init, c) (anchors A.0). Shared by training
and evaluation so both draw images the same way."""

from __future__ import annotations

import torch


def one_step(net: torch.nn.Module, z: torch.Tensor, sigma_init: float, class_labels=None) -> torch.Tensor:
    """Images in [-1, 1] (not clamped) from unit Gaussian noise z of shape (B, C, H, W)."""
    sigma = torch.full((z.shape[0],), float(sigma_init), device=z.device, dtype=torch.float32)
    return net(z * sigma_init, sigma, class_labels)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """EDM's quantisation: (x * 127.5 + 128).clip(0, 255) then truncation, i.e. round-to-nearest of x*127.5+127.5."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8)
