"""EDM2's magnitude-preserving UNet and its preconditioner (Karras et al. 2024), clean-room.

Parameter names match NVlabs/edm2 `training/networks_edm2.py` (anchors B.3): no biases; the input gets
a constant-1 channel; every weight is an `MPConv` that is normalised on use and, in training mode,
renormalised in place ("forced weight normalisation"); the preconditioner adds a log-variance head."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .precond import jsonable, prepare_inputs


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + ||x|| / sqrt(numel share)): unit RMS along `dim` (all but the first by default)."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, f=(1, 1), mode: str = "keep") -> torch.Tensor:
    if mode == "keep":
        return x
    f = np.asarray(f, dtype=np.float32)
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    f = torch.as_tensor(np.outer(f, f)[None, None], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == "down":
        return F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    if mode == "up":
        return F.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    raise ValueError(f"resample: 'mode' is {mode!r}; choose keep, down or up")


def mp_silu(x):
    return F.silu(x) / 0.596  # 0.596 = std of silu(N(0, 1)): keeps unit magnitude


def mp_sum(a, b, t=0.5):
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a, b, dim=1, t=0.5):
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([(c / math.sqrt(na) * (1 - t)) * a, (c / math.sqrt(nb) * t) * b], dim=dim)


class MPFourier(torch.nn.Module):
    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x):
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    """Magnitude-preserving linear (kernel=[]) or convolution layer without bias."""

    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self.normalize_in_forward = True  # False: the training loop normalises once per step (defer_...)

    def forward(self, x, gain=1):
        w = self.weight.to(torch.float32)
        if self.training and self.normalize_in_forward:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced weight normalisation: the stored weight stays unit-norm
        w = normalize(w)
        w = w * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))


def defer_forced_normalization(net: torch.nn.Module) -> bool:
    """Move EDM2's forced weight normalisation out of MPConv.forward: the in-place update there bumps the
    weight's autograd version, so a network called twice before one backward (SiDA's fake score reads the
    generated and the real batch) cannot be differentiated. Call `force_normalize_` before each training
    phase instead; weights only change at optimizer steps, so this normalises the same weights EDM2 does.
    Returns whether `net` has any MPConv."""
    convs = [m for m in net.modules() if isinstance(m, MPConv)]
    for m in convs:
        m.normalize_in_forward = False
    return bool(convs)


@torch.no_grad()
def force_normalize_(net: torch.nn.Module) -> None:
    """EDM2's forced weight normalisation of every MPConv of `net`, in place (edm2 networks_edm2.py MPConv)."""
    for m in net.modules():
        if isinstance(m, MPConv):
            m.weight.copy_(normalize(m.weight.to(torch.float32)))


class Block(torch.nn.Module):
    def __init__(
        self,
        in_channels,
        out_channels,
        emb_channels,
        flavor="enc",
        resample_mode="keep",
        resample_filter=(1, 1),
        attention=False,
        channels_per_head=64,
        dropout=0,
        res_balance=0.3,
        attn_balance=0.3,
        clip_act=256,
    ):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x, emb):
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum("nhqk,nhck->nhcq", w, v)
            x = mp_sum(x, self.attn_proj(y.reshape(*x.shape)), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x


class UNet(torch.nn.Module):
    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        channel_mult_noise=None,
        channel_mult_emb=None,
        num_blocks=3,
        attn_resolutions=(16, 8),
        label_balance=0.5,
        concat_balance=0.5,
        **block_kwargs,
    ):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        def block(cin, cout, **kwargs):
            return Block(cin, cout, cemb, **kwargs, **block_kwargs)

        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, flavor="enc", resample_mode="down")
            for idx in range(num_blocks):
                cin, cout = cout, channels
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, flavor="enc", attention=attn)
        skips = [block.out_channels for block in self.enc.values()]
        self.bottleneck_channels = cout

        self.dec = torch.nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, flavor="dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, flavor="dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, flavor="dec", resample_mode="up")
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                attn = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, flavor="dec", attention=attn)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels=None, return_features=False):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            label_emb = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label_emb, t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        features = x
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        x = self.out_conv(x, gain=self.out_gain)
        return (x, features) if return_features else x


class EDM2Precond(torch.nn.Module):
    """EDM preconditioning (c_noise = ln(sigma)/4) around the EDM2 UNet, plus the learned log-variance u(sigma)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=True,
        sigma_data=0.5,
        logvar_channels=128,
        **unet_kwargs,
    ):
        super().__init__()
        self.config = jsonable(
            {
                "class_name": "EDM2Precond",
                "img_resolution": img_resolution,
                "img_channels": img_channels,
                "label_dim": label_dim,
                "use_fp16": use_fp16,
                "sigma_data": sigma_data,
                "logvar_channels": logvar_channels,
                **unet_kwargs,
            }
        )
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)  # honoured on CUDA only, as in EDM2
        self.sigma_data = float(sigma_data)
        self.sigma_min = 0.002  # EDM2's sampler range; the network itself accepts any sigma > 0
        self.sigma_max = 80.0
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(
        self,
        x,
        sigma,
        class_labels=None,
        force_fp32=False,
        return_logvar=False,
        return_features=False,
        augment_labels=None,
    ):
        del augment_labels  # EDM2 trains without augmentation; accepted so every teacher takes the same call
        x, sigma, class_labels, dtype = prepare_inputs(
            x, sigma, class_labels, self.label_dim, self.use_fp16, force_fp32
        )
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.flatten().log() / 4
        out = self.unet((c_in * x).to(dtype), c_noise, class_labels, return_features=return_features)
        F_x, features = out if return_features else (out, None)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        result = [D_x]
        if return_features:
            result.append(features.to(torch.float32))
        if return_logvar:
            result.append(self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1))
        return tuple(result) if len(result) > 1 else D_x
