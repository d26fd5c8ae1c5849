"""The small building blocks of EDM's SongUNet and DhariwalUNet (clean-room, EDM parameter names).

Names and shapes of parameters and persistent buffers match NVlabs/edm `training/networks.py`, so the
published state dicts load with strict keys (anchors B.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weight_init(shape: list[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM's four initialisers (used only when training from scratch; loading overwrites them)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init_mode: unknown initialiser {mode!r}")


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


class Conv2d(torch.nn.Module):
    """Convolution with optional FIR up/down-sampling; `kernel=0` means resample only (no weight)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel,
        bias=True,
        up=False,
        down=False,
        resample_filter=(1, 1),
        fused_resample=False,
        init_mode="kaiming_normal",
        init_weight=1,
        init_bias=0,
    ):
        if up and down:
            raise ValueError("Conv2d: 'up' and 'down' cannot both be set")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        w = weight_init([out_channels, in_channels, kernel, kernel], **fans) if kernel else None
        self.weight = torch.nn.Parameter(w * init_weight) if kernel else None
        b = weight_init([out_channels], **fans) * init_bias if kernel and bias else None
        self.bias = torch.nn.Parameter(b) if b is not None else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(
                x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                padding=max(f_pad - w_pad, 0),
            )  # fmt: skip
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(
                    x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad
                )
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(torch.nn.Module):
    """GroupNorm whose group count shrinks for narrow layers (at least 4 channels per group)."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(torch.nn.Module):
    """Transformer-style sinusoidal embedding of the noise label: [cos, sin] halves."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of the noise label (NCSN++); the frequencies are a stored buffer."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(torch.nn.Module):
    """Residual block with noise-embedding modulation and optional self-attention (EDM's UNetBlock)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        emb_channels,
        up=False,
        down=False,
        attention=False,
        num_heads=None,
        channels_per_head=64,
        dropout=0.0,
        skip_scale=1.0,
        eps=1e-5,
        resample_filter=(1, 1),
        resample_proj=False,
        adaptive_scale=True,
        init=None,
        init_zero=None,
        init_attn=None,
    ):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        if not attention:
            self.num_heads = 0
        else:
            # EDM: zero heads (no attention) when the layer is narrower than one head.
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter, **init
            )
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            # Softmax in float32 for fp16 stability, as EDM's AttentionOp does.
            attn = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float()).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", attn.to(v.dtype), v)
            x = (self.proj(a.reshape(b, c, h, w)) + x) * self.skip_scale
        return x
