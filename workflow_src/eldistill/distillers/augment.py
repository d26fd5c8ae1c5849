"""EDM's non-leaking augmentation (Karras et al. 2022, after ADA) as the SiD family and Diff-Instruct use it on
the fake score's (and SiDA's discriminator's) inputs: x-flip, y-flip, isotropic scale, rotation, anisotropic
scale and fractional translation, each applied with probability p, and the 9 augment labels the EDM teachers
were trained to condition on (`augment_dim` 9).

The references build it with `AugmentPipe(p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
translate_frac=1)` (NVlabs/edm `train.py` L143-146; SiD `sid_train.py` L192-195). Here every random draw comes
from the loop's SampleNoise, one value per sample, so the augmentation of a sample does not depend on how the
batch is split. The geometric part resamples every image as EDM does (reflect-pad, 2x upsampling with the sym6
wavelet, bilinear sampling of the inverse transform, sym6 downsampling), also when its own draw is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eldistill.distillers.base import SampleNoise, as_images

# Low-pass filter of the sym6 wavelet (a standard constant; EDM's `wavelets['sym6']`).
SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)
XFLIP_MULTIPLIER = 1e8  # the references' xflip=1e8: an x-flip is drawn for every sample (then 50 % flipped)
SCALE_STD, ANISO_STD, TRANSLATE_STD = 0.2, 0.2, 0.125  # log2 std of the scalings; translation std / image size
ANISO_ROTATE_PROB = 0.5
NUM_LABELS = 9


def matrices(rows: list[list[torch.Tensor | float]], like: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) from rows of per-sample tensors (n,) or numbers."""
    full = [[e if isinstance(e, torch.Tensor) else torch.full_like(like, float(e)) for e in row] for row in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in full], dim=-2)


def translate(tx, ty, like):
    return matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]], like)


def scale(sx, sy, like):
    return matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def rotate(theta: torch.Tensor):
    c, s = theta.cos(), theta.sin()
    return matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def augment(images: torch.Tensor, noise: SampleNoise, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented images (n, C, H, W) and their augment labels (n, 9)."""
    n, _, h, w = images.shape
    zeros = torch.zeros(n, device=images.device, dtype=torch.float32)

    def gated(value: torch.Tensor, multiplier: float) -> torch.Tensor:
        return torch.where(noise.rand().to(images.device) < multiplier * p, value, torch.zeros_like(value))

    labels = []
    for dim, multiplier in ((3, XFLIP_MULTIPLIER), (2, 1.0)):  # x-flip, then y-flip
        flip = gated(noise.randint(0, 2).to(images.device), multiplier)
        images = torch.where(as_images(flip == 1), images.flip(dim), images)
        labels.append(flip.float())
    # The inverse of the geometric transform, built as EDM composes it (output pixel -> input pixel).
    g_inv = torch.eye(3, device=images.device).expand(n, 3, 3)
    s = gated(noise.randn().to(images.device).float(), 1.0)  # isotropic scale
    g_inv = g_inv @ scale(2 ** (-s * SCALE_STD), 2 ** (-s * SCALE_STD), zeros)
    labels.append(s)
    theta = gated(((noise.rand() * 2 - 1) * math.pi).to(images.device).float(), 1.0)  # rotation
    g_inv = g_inv @ rotate(theta)
    labels += [theta.cos() - 1, theta.sin()]
    a = noise.randn().to(images.device).float()  # anisotropic scale, along a random axis half of the time
    r = ((noise.rand() * 2 - 1) * math.pi).to(images.device).float()
    a = gated(a, 1.0)
    r = torch.where(noise.rand().to(images.device) < ANISO_ROTATE_PROB, r, torch.zeros_like(r))
    g_inv = g_inv @ rotate(-r) @ scale(2 ** (-a * ANISO_STD), 2 ** (a * ANISO_STD), zeros) @ rotate(r)
    labels += [a * r.cos(), a * r.sin()]
    t = noise.randn(2).to(images.device).float()  # fractional translation
    t = torch.where((noise.rand().to(images.device) < p)[:, None], t, torch.zeros_like(t))
    g_inv = g_inv @ translate(-t[:, 0] * w * TRANSLATE_STD, -t[:, 1] * h * TRANSLATE_STD, zeros)
    labels += [t[:, 0], t[:, 1]]
    return resample(images, g_inv), torch.stack(labels, dim=1)


def resample(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Apply the inverse pixel transforms g_inv (n, 3, 3), in pixel coordinates centred on the image, with EDM's
    anti-aliased resampling."""
    n, c, h, w = images.shape
    dev, dtype = images.device, images.dtype
    taps = torch.tensor(SYM6, dtype=dtype, device=dev)
    pad = len(SYM6) // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Reflect-pad by what the transformed corners of the whole batch need (a sample's result does not depend on it).
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=dev).t()
    reach = (g_inv @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, n * 4]
    margin = torch.cat([-reach, reach]).max(dim=1).values  # x0, y0, x1, y1
    margin = margin + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, device=dev)
    margin = margin.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, device=dev, dtype=margin.dtype))
    mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    g_inv = translate((mx0 - mx1) / 2, (my0 - my1) / 2, g_inv[:, 0, 0]) @ g_inv
    # 2x upsampling: zero-stuff, then the (reversed) filter along x and y.
    up = taps.flip(0).reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)
    up_pad = (len(SYM6) + 1) // 2
    images = torch.stack([images, torch.zeros_like(images)], dim=4).reshape(n, c, images.shape[2], -1)[..., :-1]
    images = F.conv2d(images, up, groups=c, padding=[0, up_pad])
    images = torch.stack([images, torch.zeros_like(images)], dim=3).reshape(n, c, -1, images.shape[3])[:, :, :-1]
    images = F.conv2d(images, up.transpose(2, 3), groups=c, padding=[up_pad, 0])
    ones = g_inv[:, 0, 0] * 0 + 1
    g_inv = scale(2 * ones, 2 * ones, ones) @ g_inv @ scale(0.5 * ones, 0.5 * ones, ones)
    g_inv = translate(-0.5, -0.5, ones) @ g_inv @ translate(0.5, 0.5, ones)
    out_h, out_w = (h + pad * 2) * 2, (w + pad * 2) * 2
    to_unit = scale(2 / images.shape[3] * ones, 2 / images.shape[2] * ones, ones)
    g_inv = to_unit @ g_inv @ scale(out_w / 2 * ones, out_h / 2 * ones, ones)
    grid = F.affine_grid(g_inv[:, :2, :].to(dtype), [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # 2x downsampling with the filter, then crop the padding.
    down = taps.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)
    down_pad = (len(SYM6) - 1) // 2
    images = F.conv2d(images, down, groups=c, stride=[1, 2], padding=[0, down_pad])[:, :, :, pad:-pad]
    images = F.conv2d(images, down.transpose(2, 3), groups=c, stride=[2, 1], padding=[down_pad, 0])[:, :, pad:-pad]
    return images
