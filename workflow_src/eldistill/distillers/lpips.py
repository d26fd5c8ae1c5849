"""LPIPS (Zhang et al. 2018, v0.1, VGG16) as the consistency models' distance (openai/consistency_models_cifar10
`jcm/losses.py` L359-366: both images resized bilinearly to 224 first) and DMD1's regression distance.

Weights come from two local files, fetched by `eldistill download` (config `lpips`, with their sha256):
torchvision's ImageNet VGG16 (`vgg16-397923af.pth`, keys `features.<i>.weight|bias`) and the LPIPS linear
heads (`vgg.pth` of richzhang/PerceptualSimilarity v0.1, keys `lin<k>.model.1.weight`). Both are plain state
dicts, read with the bounded `eldistill.untrusted.torch_files.load_torch_file` (either torch file format). A
cell that needs LPIPS checks the files before training (eldistill.cell.LPIPS_FILES)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eldistill.cell import LPIPS_RESIZE
from eldistill.untrusted.torch_files import load_torch_file

VGG_FILE, LIN_FILE = "vgg16.pth", "lpips_vgg_lin.pth"
# LPIPS's input scaling layer (images in [-1, 1]) and the VGG16 layers it reads: relu1_2 ... relu5_3.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = (64, 128, 256, 512, 512)
RESIZE = LPIPS_RESIZE  # 224, the consistency models' LPIPS input size (a cell's lpips_resize, config lpips.resize)


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional part with torchvision's module indices (3x3 convolutions each followed by a ReLU,
    2x2 max-pools), so that its `features.<i>` weights load as they are; the classifier is never built."""
    layers, channels = [], 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).reshape(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @classmethod
    def from_folder(cls, folder: str | Path) -> LPIPS:
        """The network with the weights of `folder`/vgg16.pth and `folder`/lpips_vgg_lin.pth."""
        net = cls()
        vgg = _load(Path(folder) / VGG_FILE)
        features = {k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")}
        _assign(net.features, features, Path(folder) / VGG_FILE)
        lin = _load(Path(folder) / LIN_FILE)
        heads = {f"{k}.weight": lin.get(f"lin{k}.model.1.weight") for k in range(len(CHANNELS))}
        _assign(net.lins, {k: v for k, v in heads.items() if v is not None}, Path(folder) / LIN_FILE)
        return net

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised (over channels) activations of the five read layers."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey images as RGB
        h = (x - self.shift) / self.scale
        out = []
        for start, stop in SLICES:
            for layer in self.features[start:stop]:
                h = layer(h)
            out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor, resize: int | None = None) -> torch.Tensor:
        """Per-sample distance (n,) between image batches in [-1, 1], resized to `resize` (default RESIZE; 0 keeps
        their size)."""
        resize = RESIZE if resize is None else resize
        if resize:
            a = F.interpolate(a, size=(resize, resize), mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=(resize, resize), mode="bilinear", align_corners=False)
        total = 0
        for lin, fa, fb in zip(self.lins, self.layers(a), self.layers(b)):
            total = total + lin((fa - fb) ** 2).mean(dim=(2, 3))
        return total.flatten()


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"LPIPS weights: {path} does not exist (fetch it with `eldistill download`, config lpips)")
    try:
        state = load_torch_file(path, "cpu", "state dict")
    except Exception as e:
        raise ValueError(f"LPIPS weights: {path} is not a readable state dict ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"LPIPS weights: {path} holds {type(state).__name__}, not a state dict")
    return state


def _assign(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"LPIPS weights: {path} lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"LPIPS weights: {path}: {key} has shape {tuple(state[key].shape)}, not {tuple(value.shape)}"
            )
    module.load_state_dict({k: state[k] for k in expected})
