"""EDM's preconditioners (EDM, VP, VE) wrapping a SongUNet or DhariwalUNet backbone under `model.`.

D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), c)   (anchors A.0)

| variant | c_skip                 | c_out                          | c_in                | c_noise               |
| EDM     | sd^2/(s^2+sd^2)        | s sd / sqrt(s^2+sd^2)          | 1/sqrt(s^2+sd^2)    | ln(s)/4               |
| VP      | 1                      | -s                             | 1/sqrt(s^2+1)       | (M-1) sigma_inv(s)    |
| VE      | 1                      | s                              | 1                   | ln(s/2)               |

Each preconditioner records its constructor call as `self.config` (what `build_network` takes back).
"""

from __future__ import annotations

import numpy as np
import torch

from .dhariwal import DhariwalUNet
from .songunet import SongUNet


def prepare_inputs(x, sigma, class_labels, label_dim: int, use_fp16: bool, force_fp32: bool):
    """What every preconditioner does first (EDM and EDM2 alike): float32 input, sigma as (B, 1, 1, 1), labels
    as (B, label_dim) float or None, and the dtype the backbone runs in (fp16 only on CUDA, as EDM does)."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    if sigma.shape[0] == 1:
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
    if label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, label_dim)
    dtype = torch.float16 if use_fp16 and x.device.type == "cuda" and not force_fp32 else torch.float32
    return x, sigma, class_labels, dtype


BACKBONES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def jsonable(value):
    """Tuples to lists and numpy scalars to Python numbers, recursively: net.config must be plain JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


class _EDMFamilyPrecond(torch.nn.Module):
    """What the three EDM preconditioners share: the backbone, the label handling, fp16, the config."""

    default_model_type = "SongUNet"

    def __init__(self, config, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs):
        super().__init__()
        model_type = model_type or self.default_model_type
        if model_type not in BACKBONES:
            raise ValueError(f"{type(self).__name__}: 'model_type' is {model_type!r}; choose one of {list(BACKBONES)}")
        self.config = jsonable({"class_name": type(self).__name__, **config, "model_type": model_type})
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)  # honoured on CUDA only, as in EDM
        self.model = BACKBONES[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for sigma of shape (B, 1, 1, 1)."""
        raise NotImplementedError

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_features=False, augment_labels=None):
        x, sigma, class_labels, dtype = prepare_inputs(
            x, sigma, class_labels, self.label_dim, self.use_fp16, force_fp32
        )
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        out = self.model(
            (c_in * x).to(dtype), c_noise.flatten(), class_labels,
            augment_labels=augment_labels, return_features=return_features,
        )  # fmt: skip
        F_x, features = out if return_features else (out, None)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return (D_x, features.to(torch.float32)) if return_features else D_x


class EDMPrecond(_EDMFamilyPrecond):
    default_model_type = "DhariwalUNet"  # EDM's default; the CIFAR/FFHQ/AFHQ pickles record SongUNet

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        sigma_min=0.0,
        sigma_max=float("inf"),
        sigma_data=0.5,
        model_type=None,
        **model_kwargs,
    ):
        config = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, use_fp16=use_fp16)
        if sigma_min != 0 or sigma_max != float("inf") or sigma_data != 0.5:
            config.update(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
        super().__init__(
            {**config, **model_kwargs}, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs
        )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(_EDMFamilyPrecond):
    """Song et al.'s variance-preserving parameterisation, in EDM's sigma form (the `-vp` baseline pickles)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        beta_d=19.9,
        beta_min=0.1,
        M=1000,
        epsilon_t=1e-5,
        model_type=None,
        **model_kwargs,
    ):
        config = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, use_fp16=use_fp16)
        config.update(beta_d=beta_d, beta_min=beta_min, M=M, epsilon_t=epsilon_t)
        super().__init__(
            {**config, **model_kwargs}, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs
        )
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.sigma_data = 0.5  # the data's std; VP's own coefficients do not use it

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(_EDMFamilyPrecond):
    """Song et al.'s variance-exploding parameterisation (the `-ve` baseline pickles)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        sigma_min=0.02,
        sigma_max=100,
        model_type=None,
        **model_kwargs,
    ):
        config = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, use_fp16=use_fp16)
        config.update(sigma_min=sigma_min, sigma_max=sigma_max)
        super().__init__(
            {**config, **model_kwargs}, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs
        )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = 0.5  # the data's std; VE's own coefficients do not use it

    def coefficients(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()
