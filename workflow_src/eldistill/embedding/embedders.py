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


# --- one family's initialisations as one network --------------------------------------------------------------
# K embedders of one family differ only in their weights, so they can run as one network: the first layer sees
# the same image for every init (one dense conv with K x C_out channels), every later conv is a grouped conv
# (groups = K, block k = init k's channels) and every linear layer a batched matmul over stacked (K, out, in)
# weights. One forward replaces K small ones, which on a CPU is mostly per-op overhead.


def _stack(modules: list[nn.Module], name: str) -> torch.Tensor:
    return torch.cat([getattr(m, name) for m in modules])


class _GroupedConv(nn.Module):
    """K convs with the same shape as one conv: dense over a shared input (first layer), grouped after."""

    def __init__(self, convs: list[nn.Conv2d], shared_input: bool):
        super().__init__()
        first = convs[0]
        self.register_buffer("weight", _stack(convs, "weight"), persistent=False)
        self.register_buffer("bias", _stack(convs, "bias"), persistent=False)
        self.stride, self.padding = first.stride, first.padding
        self.groups = 1 if shared_input else len(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)


class _GroupedLinear(nn.Module):
    """K linear layers on (K, N, in) inputs: one batched matmul."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.register_buffer("weight_t", torch.stack([m.weight.t() for m in linears]), persistent=False)
        self.register_buffer("bias", torch.stack([m.bias for m in linears]).unsqueeze(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K, N, in) -> (K, N, out)
        return torch.baddbmm(self.bias, x, self.weight_t)


class _GroupedLayerNorm(nn.Module):
    def __init__(self, norms: list[nn.LayerNorm]):
        super().__init__()
        self.shape, self.eps = norms[0].normalized_shape, norms[0].eps
        self.register_buffer("weight", torch.stack([m.weight for m in norms]).unsqueeze(1), persistent=False)
        self.register_buffer("bias", torch.stack([m.bias for m in norms]).unsqueeze(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K, N, dim)
        return F.layer_norm(x, self.shape, eps=self.eps) * self.weight + self.bias


def _per_init(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K*C, ...) grouped channels -> (B, K, C*...) per-init flattened features."""
    return x.reshape(x.shape[0], k, -1)


class _GroupedCNN(nn.Module):
    def __init__(self, nets: list[CNNEmbedder]):
        super().__init__()
        self.k = len(nets)
        self.convs = nn.ModuleList(
            [_GroupedConv([n.convs[i] for n in nets], shared_input=i == 0) for i in range(len(nets[0].convs))]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = _act(conv(x))
        return _per_init(F.adaptive_avg_pool2d(x, 4), self.k)


class _GroupedMultiScale(nn.Module):
    def __init__(self, nets: list[MultiScaleEmbedder]):
        super().__init__()
        self.k = len(nets)
        self.stem = _GroupedConv([n.stem for n in nets], shared_input=True)
        self.downs = nn.ModuleList(
            [_GroupedConv([n.downs[i] for n in nets], shared_input=False) for i in range(len(nets[0].downs))]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _act(self.stem(x))
        feats = [_per_init(F.adaptive_avg_pool2d(x, 2), self.k)]
        for down in self.downs:
            x = _act(down(x))
            feats.append(_per_init(F.adaptive_avg_pool2d(x, 2), self.k))
        return torch.cat(feats, 2)


class _GroupedResBlock(nn.Module):
    def __init__(self, blocks: list[ResBlock]):
        super().__init__()
        self.conv0 = _GroupedConv([b.conv0 for b in blocks], shared_input=False)
        self.conv1 = _GroupedConv([b.conv1 for b in blocks], shared_input=False)
        self.skip = None if blocks[0].skip is None else _GroupedConv([b.skip for b in blocks], shared_input=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_act(self.conv0(_act(x))))
        s = x if self.skip is None else self.skip(x)
        return (s + h) * math.sqrt(0.5)


class _GroupedResNet(nn.Module):
    def __init__(self, nets: list[ResNetEmbedder]):
        super().__init__()
        self.k = len(nets)
        self.stem = _GroupedConv([n.stem for n in nets], shared_input=True)
        self.blocks = nn.ModuleList([_GroupedResBlock([n.blocks[i] for n in nets]) for i in range(len(nets[0].blocks))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return _per_init(F.adaptive_avg_pool2d(_act(x), 4), self.k)


class _GroupedAttentionBlock(nn.Module):
    def __init__(self, blocks: list[AttentionBlock]):
        super().__init__()
        self.heads = blocks[0].heads
        self.norm0 = _GroupedLayerNorm([b.norm0 for b in blocks])
        self.qkv = _GroupedLinear([b.qkv for b in blocks])
        self.proj = _GroupedLinear([b.proj for b in blocks])
        self.norm1 = _GroupedLayerNorm([b.norm1 for b in blocks])
        self.mlp0 = _GroupedLinear([b.mlp0 for b in blocks])
        self.mlp1 = _GroupedLinear([b.mlp1 for b in blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K, B, T, d)
        k, b, t, d = x.shape
        flat = x.reshape(k, b * t, d)
        qkv = self.qkv(self.norm0(flat)).reshape(k, b, t, 3, self.heads, d // self.heads)
        q, kk, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (K, B, heads, T, d/heads)
        a = F.scaled_dot_product_attention(q, kk, v).transpose(2, 3).reshape(k, b * t, d)
        flat = (flat + self.proj(a)) * math.sqrt(0.5)
        flat = (flat + self.mlp1(_act(self.mlp0(self.norm1(flat))))) * math.sqrt(0.5)
        return flat.reshape(k, b, t, d)


class _GroupedAttention(nn.Module):
    def __init__(self, nets: list[AttentionEmbedder]):
        super().__init__()
        self.k = len(nets)
        self.embed = _GroupedConv([n.embed for n in nets], shared_input=True)
        self.register_buffer("pos", torch.stack([n.pos[0] for n in nets]).unsqueeze(1), persistent=False)
        self.blocks = nn.ModuleList(
            [_GroupedAttentionBlock([n.blocks[i] for n in nets]) for i in range(len(nets[0].blocks))]
        )
        self.norm = _GroupedLayerNorm([n.norm for n in nets])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # (B, K*d, h, w)
        b, _, h, w = x.shape
        x = x.reshape(b, self.k, -1, h * w).permute(1, 0, 3, 2)  # (K, B, T, d)
        x = x + self.pos[:, :, : h * w]
        for block in self.blocks:
            x = block(x)
        k, _, t, d = x.shape
        x = self.norm(x.reshape(k, b * t, d)).reshape(k, b, t, d)
        grid = x.transpose(2, 3).reshape(k * b, d, h, w)
        pooled = F.adaptive_avg_pool2d(grid, 2).reshape(k, b, -1)
        return torch.cat([x.mean(2), pooled], 2).transpose(0, 1)  # (B, K, D)


_GROUPED = {
    "cnn": _GroupedCNN,
    "multiscale": _GroupedMultiScale,
    "resnet": _GroupedResNet,
    "attention": _GroupedAttention,
}


class GroupedEmbedder(nn.Module):
    """The embedders (family, seed) for several seeds as one frozen network: forward(images) -> (K, B, D), row k
    equal (to float round-off) to build_embedder(family, seeds[k])(images). Same weights, one forward."""

    def __init__(self, family: str, seeds: list[int], in_channels: int = 3, working_size: int = 32):
        super().__init__()
        members = [build_embedder(family, s, in_channels, working_size) for s in seeds]
        self.family, self.seeds = family, [int(s) for s in seeds]
        self.in_channels, self.working_size = in_channels, working_size
        self.net = _GROUPED[family]([m.net for m in members])
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.net(resize_to(images, self.working_size)).transpose(0, 1)  # (K, B, D)
        return f * (1.0 / math.sqrt(f.shape[2]))

    def train(self, mode: bool = True) -> GroupedEmbedder:
        return super().train(False)
