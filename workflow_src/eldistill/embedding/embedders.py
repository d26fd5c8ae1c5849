"""The embedder zoo: small, frozen, randomly initialised feature networks, one class per family.

Each embedder maps images (B, C, S, S) at the working size S to features (B, D). It is built
deterministically from (family, seed) without touching the global RNG, its weights are non-persistent
buffers (no parameters: no optimizer can pick them up and no state_dict carries them; the seed rebuilds
them), and it is per-sample (no batch statistics), so its features do not depend on the batch.
Weights use a variance-preserving (He) init so activations neither vanish nor blow up with depth; the
`Embedder` resizes any input resolution to the working size and divides the output by sqrt(D), so
squared feature distances are O(1) and fixed bandwidths near 1 make sense.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("cnn", "multiscale", "resnet", "attention")
SLOPE = 0.2  # leaky-ReLU slope: keeps every unit's gradient alive in a network nobody trains


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, SLOPE)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class CNNEmbedder(nn.Module):
    """Plain CNN: three strided 3x3 convs (S -> S/8), features = the flattened map pooled to 4x4."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        chans = [in_channels, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList([_conv(chans[i], chans[i + 1], stride=2) for i in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = _act(conv(x))
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


class MultiScaleEmbedder(nn.Module):
    """Multi-scale network: a conv pyramid whose every level (S, S/2, S/4, S/8) contributes features,
    each level pooled to 2x2, so both fine texture and coarse layout enter the kernel."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 4 * width]
        self.stem = _conv(in_channels, chans[0])
        self.downs = nn.ModuleList([_conv(chans[i], chans[i + 1], stride=2) for i in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _act(self.stem(x))
        feats = [F.adaptive_avg_pool2d(x, 2).flatten(1)]
        for down in self.downs:
            x = _act(down(x))
            feats.append(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return torch.cat(feats, 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv0 = _conv(cin, cout, stride=stride)
        self.conv1 = _conv(cout, cout)
        self.skip = _conv(cin, cout, k=1, stride=stride) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_act(self.conv0(_act(x))))
        s = x if self.skip is None else self.skip(x)
        return (s + h) * math.sqrt(0.5)  # keeps the variance of the sum equal to that of each branch


class ResNetEmbedder(nn.Module):
    """Residual network: stem + three residual blocks, two of them downsampling (S -> S/4), pooled to 4x4."""

    def __init__(self, in_channels: int, width: int = 24):
        super().__init__()
        self.stem = _conv(in_channels, width, stride=2)
        self.blocks = nn.ModuleList(
            [ResBlock(width, width, 1), ResBlock(width, 2 * width, 2), ResBlock(2 * width, 2 * width, 2)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(_act(x), 4).flatten(1)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention then an MLP, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm0 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp0 = nn.Linear(dim, 2 * dim)
        self.mlp1 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm0(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = (x + self.proj(a)) * math.sqrt(0.5)
        return (x + self.mlp1(_act(self.mlp0(self.norm1(x))))) * math.sqrt(0.5)


class AttentionEmbedder(nn.Module):
    """Attention network: patch embedding (patch S/4 -> 4x4 tokens) + random position embedding +
    two self-attention blocks; features = the mean token and the token grid pooled to 2x2."""

    def __init__(self, in_channels: int, dim: int = 64, heads: int = 4, working_size: int = 32):
        super().__init__()
        self.patch = max(1, working_size // 4)
        self.embed = nn.Conv2d(in_channels, dim, self.patch, stride=self.patch)
        grid = working_size // self.patch
        self.pos = nn.Parameter(torch.empty(1, grid * grid, dim))
        self.blocks = nn.ModuleList([AttentionBlock(dim, heads) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos[:, : h * w]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        grid = x.transpose(1, 2).reshape(b, d, h, w)
        return torch.cat([x.mean(1), F.adaptive_avg_pool2d(grid, 2).flatten(1)], 1)


def family_seed(family: str, seed: int) -> int:
    """A stable 63-bit seed for (family, seed), so two families with one seed still differ."""
    return int.from_bytes(hashlib.sha256(f"eldistill-embedder/{family}/{int(seed)}".encode()).digest()[:8], "big") >> 1


def _init_random(module: nn.Module, gen: torch.Generator) -> None:
    """He-normal weights (leaky-ReLU gain), small random biases, N(0, 1) position embeddings.
    LayerNorms keep their identity affine."""
    gain = math.sqrt(2.0 / (1.0 + SLOPE**2))
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0.0, gain / math.sqrt(fan_in), generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=gen)
        elif isinstance(m, AttentionEmbedder):
            with torch.no_grad():
                m.pos.normal_(0.0, 1.0, generator=gen)


def _freeze_as_buffers(module: nn.Module) -> None:
    """Turn every parameter into a non-persistent buffer and switch to eval mode."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            if p is not None:
                m.register_buffer(name, p.detach().requires_grad_(False), persistent=False)
    module.eval()


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average down to (size, size) (anti-aliased for any input >= size), bilinear up when smaller."""
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-2] >= size and x.shape[-1] >= size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Embedder(nn.Module):
    """One frozen embedder: resize images to the working size, run the random network, scale features
    by 1/sqrt(D) so a squared distance is a mean over feature dimensions."""

    def __init__(self, family: str, seed: int, net: nn.Module, in_channels: int, working_size: int):
        super().__init__()
        self.family, self.seed = family, int(seed)
        self.in_channels, self.working_size = in_channels, working_size
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.net(resize_to(images, self.working_size))
        return f * (1.0 / math.sqrt(f.shape[1]))

    def train(self, mode: bool = True) -> Embedder:
        return super().train(False)  # always eval: a frozen embedder has no training mode


def build_embedder(family: str, seed: int, in_channels: int = 3, working_size: int = 32) -> Embedder:
    """A frozen embedder of `family`, deterministic in (family, seed); the global RNG is left untouched."""
    if family not in FAMILIES:
        raise ValueError(f"unknown embedder family {family!r}; choose from {', '.join(FAMILIES)}")
    if in_channels not in (1, 3, 4):
        raise ValueError(f"in_channels must be 1, 3 or 4, got {in_channels!r}")
    if not isinstance(working_size, int) or isinstance(working_size, bool) or working_size < 8:
        raise ValueError(f"working_size must be an integer >= 8, got {working_size!r}")
    with torch.random.fork_rng(devices=[]):  # module constructors draw default inits from the global RNG
        if family == "cnn":
            net = CNNEmbedder(in_channels)
        elif family == "multiscale":
            net = MultiScaleEmbedder(in_channels)
        elif family == "resnet":
            net = ResNetEmbedder(in_channels)
        else:
            net = AttentionEmbedder(in_channels, working_size=working_size)
    _init_random(net, torch.Generator().manual_seed(family_seed(family, seed)))
    _freeze_as_buffers(net)
    return Embedder(family, seed, net, in_channels, working_size)
