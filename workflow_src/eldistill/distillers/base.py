"""The one interface every distiller implements, and the EDM helpers they share (anchors A.0).

A distiller owns its networks (the generator and whatever it trains beside it) and says, for each iteration,
which phases run: a phase names the networks it trains and gives a per-sample loss. The training loop does
everything else: batching, accumulation, DDP, optimizers, EMA, checkpoints, and the Embedding Loss, which it
adds to the generator phase of every distiller the same way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


@dataclass(frozen=True)
class Phase:
    """One optimizer turn of an iteration."""

    name: str  # "fake" or "generator"
    nets: tuple[str, ...]  # networks that receive gradients and step in this phase
    step: bool = True  # False: gradients are computed (and logged) but the optimizer does not step
    needs_real: bool = False  # the loss reads a real batch
    needs_generated: bool = True  # the loss reads generated images (the loop makes them anyway when EL is on)
    clip_value: float | None = None  # clip_grad_value_ on the phase's networks
    clip_norm: float | None = None  # clip_grad_norm_ on the phase's networks


class SampleNoise:
    """The randomness of one accumulation round: each call returns `(n, *shape)`, the rows of this round's
    samples in a draw made for the whole global batch. Drawing per global batch (not per round or per
    process) makes the update independent of how the batch is split; the loop provides the implementation."""

    def randn(self, *shape: int) -> torch.Tensor:
        raise NotImplementedError

    def rand(self, *shape: int) -> torch.Tensor:
        raise NotImplementedError

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        raise NotImplementedError


class Distiller:
    """Base class. Subclasses set `name`, `DEFAULTS` and implement `phases` and `loss`."""

    name: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    # Conditional teachers: True draws the generator's labels from the dataset (the reference loops condition
    # the generator on the labels of the real batch they read), False uniformly over the classes (DMD2).
    labels_from_data: ClassVar[bool] = False
    # distiller_args whose null is a setting of its own (e.g. SiDA's clip_value: null = no clipping)
    NULLABLE: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        teacher: nn.Module,
        args: dict[str, Any] | None = None,
        init_generator: nn.Module | None = None,
        augment_p: float = 0.0,
        lpips: str = "",
        lpips_resize: int | None = None,
    ):
        self.args = resolve_args(self.name, self.DEFAULTS, args or {}, self.NULLABLE)
        self.lpips_folder = lpips  # cell.lpips: where the LPIPS weights are, for a distiller that measures with it
        self.lpips_resize = lpips_resize  # cell.lpips_resize: LPIPS's input size (None: eldistill.distillers.lpips's)
        self._lpips = None
        self.teacher = teacher.eval().requires_grad_(False)
        # EDM's augmentation of the fake score's inputs (cell.augment_p); the teacher must take augment labels.
        self.augment_p = float(augment_p)
        if self.augment_p > 0 and getattr(getattr(teacher, "model", None), "map_augment", None) is None:
            raise ValueError(
                f"augment_p = {self.augment_p}: the teacher has no augment-label input (it was trained without "
                "augmentation, augment_dim 0); set augment_p to 0"
            )
        # Every generator starts from the teacher's weights (anchors A.0), or from a given generator (SiD2A).
        generator = copy.deepcopy(init_generator if init_generator is not None else teacher)
        self.nets: dict[str, nn.Module] = {"generator": generator.train().requires_grad_(False)}

    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per sample (n,), the network loaded from the cell's lpips folder on first use."""
        if self._lpips is None:
            from eldistill.distillers.lpips import LPIPS

            if not self.lpips_folder:
                raise ValueError(f"{self.name}: the LPIPS distance needs the cell's 'lpips' folder of weights")
            self._lpips = LPIPS.from_folder(self.lpips_folder)
        net = self._lpips.to(a.device)
        return net(a.float(), b.float(), resize=self.lpips_resize)

    # --- what the loop asks ---------------------------------------------------------------------------
    @property
    def sigma_init(self) -> float:
        return float(self.args["sigma_init"])

    @property
    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules that are part of the training state but never trained by an optimizer (CM's target)."""
        return {}

    def phases(self, images_seen: int, iteration: int) -> list[Phase]:
        raise NotImplementedError

    def loss(
        self,
        phase: str,
        x_gen: torch.Tensor | None,
        labels: torch.Tensor | None,
        real: torch.Tensor | None,
        real_labels: torch.Tensor | None,
        noise: SampleNoise,
        images_seen: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample loss of shape (n,), loss scalings included; the loop averages it over the global batch.
        Returns also a dict of per-sample terms to log."""
        raise NotImplementedError

    def after_step(self, phase: str) -> None:
        """Called after the optimizers of `phase` stepped (CM updates its target here)."""


def resolve_args(
    name: str, defaults: dict[str, Any], overrides: dict[str, Any], nullable: tuple[str, ...] = ()
) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"distiller_args: unknown key(s) {', '.join(unknown)} for distiller {name!r}; "
            f"known: {', '.join(sorted(defaults))}"
        )
    for key, value in overrides.items():
        wanted = None if (value is None and key in nullable) else _same_type(defaults[key], value)
        if wanted:
            raise ValueError(f"distiller_args: '{key}' of distiller {name!r} must be {wanted}, got {value!r}")
    return {**defaults, **overrides}


def set_dropout(net: nn.Module, p: float) -> nn.Module:
    """Set the dropout probability of every block of an EDM/EDM2 network (the references build the teacher and
    its copies with the run's --dropout, which may differ from the teacher's training value)."""
    for module in net.modules():
        if module is not net and isinstance(getattr(module, "dropout", None), (int, float)):
            module.dropout = float(p)
    if isinstance(getattr(net, "config", None), dict) and "dropout" in net.config:
        net.config["dropout"] = float(p)  # saved generators record the dropout they trained with
    return net


def same_dropout(device: torch.device, *calls):
    """Evaluate each call from the same random-number state, so that networks of one architecture in train mode
    draw the same dropout masks (Diff-Instruct restores the CUDA RNG state between its two denoisers; the
    consistency models share one dropout key between the online and the target call)."""
    cuda = device.type == "cuda"
    state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    outputs = []
    for i, call in enumerate(calls):
        if i:
            torch.cuda.set_rng_state(state, device) if cuda else torch.set_rng_state(state)
        outputs.append(call())
    return outputs


def _same_type(default: Any, value: Any) -> str | None:
    """None when an override has the type of the default it replaces, else what was expected (in words)."""
    if default is None:
        return None  # "unset" defaults take any value; the distiller checks it
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, (list, tuple)) else "a list"
    return None


def fresh_copy(net: nn.Module) -> nn.Module:
    """A trainable copy of a network (fake score, discriminator backbone), starting from its weights."""
    return copy.deepcopy(net).train().requires_grad_(False)


# --- EDM machinery shared by the distillers -----------------------------------------------------------------
def as_images(v: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, 1, 1) so a per-sample value broadcasts over an image batch."""
    return v.reshape(-1, 1, 1, 1)


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def lognormal_sigma(noise: SampleNoise, p_mean: float, p_std: float) -> torch.Tensor:
    """ln sigma ~ N(p_mean, p_std^2), shape (n,)."""
    return (noise.randn() * p_std + p_mean).exp()


def karras_sigma(s: torch.Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """The Karras time grid: s = 0 gives sigma_max, s = 1 gives sigma_min."""
    return (sigma_max ** (1 / rho) + s * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def karras_grid(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """n sigmas from sigma_max down to sigma_min (float64)."""
    return karras_sigma(torch.linspace(0, 1, n, dtype=torch.float64), sigma_min, sigma_max, rho)


def denoise(
    net: nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    labels: torch.Tensor | None,
    features=False,
    augment_labels: torch.Tensor | None = None,
    logvar=False,
):
    """D(x; sigma, c) in at least float32; with features=True also the U-Net bottleneck feature map; with
    logvar=True also an EDM2 network's learned log-variance u(sigma), shape (n,) (last); augment_labels are the
    labels of EDM's augmentation of x (None: not augmented)."""
    kwargs = {} if augment_labels is None else {"augment_labels": augment_labels}
    if features:
        kwargs["return_features"] = True
    if logvar:
        kwargs["return_logvar"] = True
    out = net(x, sigma, labels, **kwargs)
    out = list(out) if features or logvar else [out]
    if out[0].dtype in (torch.float16, torch.bfloat16):
        out[0] = out[0].float()
    if logvar:
        u = out[-1].flatten()
        out[-1] = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    return tuple(out) if features or logvar else out[0]


def has_logvar(net: nn.Module) -> bool:
    """Whether `net` learns EDM2's log-variance u(sigma) (the uncertainty weighting of EDM2's loss)."""
    return hasattr(net, "logvar_linear")


def logvar_weighted(weighted_error: torch.Tensor, logvar: torch.Tensor, numel: int) -> torch.Tensor:
    """EDM2's uncertainty-weighted loss per sample, summed over its `numel` values: (weighted error) / e^u + u per
    value (edm2 training/training_loop.py EDM2Loss; SiDA sida_loss_edm2.py L331, L493)."""
    return weighted_error / logvar.exp() + logvar * numel


def edm_fake_score_loss(
    fake: nn.Module,
    x_gen: torch.Tensor,
    labels: torch.Tensor | None,
    noise: SampleNoise,
    p_mean: float,
    p_std: float,
    sigma_data: float,
    augment_p: float = 0.0,
    logvar: bool = False,
) -> torch.Tensor:
    """EDM's denoising loss of the fake score on detached generated images, summed over pixels: (n,). With
    augment_p > 0 the images are augmented first (SiD `training/sid_loss.py` L62-64). With logvar=True (EDM2
    networks) EDM2's uncertainty-weighted form, lambda/e^u ||D - x||^2 + u per pixel."""
    x = x_gen.detach()
    sigma = lognormal_sigma(noise, p_mean, p_std)
    x, augment_labels = maybe_augment(x, noise, augment_p)
    eps = noise.randn(*x.shape[1:])
    if logvar:
        d, u = denoise(fake, x + as_images(sigma) * eps, sigma, labels, augment_labels=augment_labels, logvar=True)
        return logvar_weighted(edm_weight(sigma, sigma_data) * (d - x).square().flatten(1).sum(1), u, x[0].numel())
    d = denoise(fake, x + as_images(sigma) * eps, sigma, labels, augment_labels=augment_labels)
    return (as_images(edm_weight(sigma, sigma_data)) * (d - x) ** 2).flatten(1).sum(1)


def maybe_augment(images: torch.Tensor, noise: SampleNoise, p: float):
    """(augmented images, augment labels), or (images, None) when p is 0."""
    if p <= 0:
        return images, None
    from eldistill.distillers.augment import augment

    return augment(images, noise, p)


def finite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    """(n,) bool: samples whose every value is finite in all the given (n, ...) tensors."""
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.detach()).flatten(1).all(1)
    return ok
