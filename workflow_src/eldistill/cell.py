"""One run cell: the complete, validated settings of one distillation run.

A cell is what `eldistill train --config CELL.json` reads, what the workflow writes for each job and what
`eldistill launch` submits. Its id hashes only the settings that change results; hardware knobs
(per-GPU batch, where files go, the NaN guard) never enter it, so the same experiment run on another
cluster keeps its id and its results.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DISTILLERS = ("di", "sid", "sida", "sid2a", "dmd", "cm")
EMBEDDER_FAMILIES = ("cnn", "multiscale", "resnet", "attention")
PRECISIONS = ("fp32", "bf16", "fp16")
# LPIPS weights a cell reads from its `lpips` folder (eldistill.distillers.lpips), fetched by `eldistill download`.
LPIPS_FILES = ("vgg16.pth", "lpips_vgg_lin.pth")
# LPIPS's input size: both images are resized bilinearly to 224 first (openai/consistency_models_cifar10
# jcm/losses.py L359-366); config `lpips.resize` sets it (the rehearsal: 16, the least VGG16's four pools before
# relu5_3 take).
LPIPS_RESIZE = 224
LPIPS_MIN_RESIZE = 16
EMA_RAMPUP = 0.05  # EDM's and SiD's training_loop: the EMA half-life is at most 5 % of the images seen so far
# Networks a distiller trains (each gets its own optimizer) and the settings a cell may give one of them.
NETWORKS = ("generator", "fake_score", "gan_head")
NETWORK_OPTIM_KEYS = ("lr", "betas", "weight_decay", "warmup_images")
EL_SCOPES = ("global", "round")


class CellError(ValueError):
    """A cell setting is wrong; the message names the key."""


@dataclass
class ELConfig:
    """The Embedding Loss term the training loop adds to the generator loss (weight 0 = off)."""

    weight: float = 0.0  # lambda_EL
    archs: list[str] = field(default_factory=lambda: list(EMBEDDER_FAMILIES))
    inits_per_arch: int = 4
    bandwidths: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    bandwidth_mode: str = "median"  # "median": multiples of the median pairwise distance; "fixed": absolute
    estimator: str = "unbiased"  # or "biased"
    feature_norm: str = "none"  # "none" | "l2" | "standardize"
    working_size: int = 32  # embedders resize/pool their input to this resolution
    seed: int = 0  # embedder k is built from (family, seed + init index)
    # Latent teachers (EDM2): "model" compares the teacher's latents (the default; see config/paper.yaml),
    # "pixels" decodes generated and real latents with the VAE in `vae` (a local diffusers folder) first.
    space: str = "model"
    vae: str = ""
    # "global": MMD^2 of the whole global batch (any split into processes and rounds gives the same loss);
    # "round": estimated per accumulation round of batch_gpu samples and averaged (depends on batch_gpu).
    scope: str = "global"

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    @property
    def embedders(self) -> int:
        """The ensemble's size when EL is on, else 0."""
        return len(self.archs) * self.inits_per_arch if self.enabled else 0


@dataclass
class Cell:
    distiller: str
    teacher: str  # our .pt teacher checkpoint (see eldistill.checkpoints)
    dataset: str  # EDM-layout zip or folder: real images for EL (and SiDA's discriminator)
    batch: int  # global batch per iteration
    total_images: int  # training length, in generated images (EDM counts kimg the same way)
    distiller_args: dict[str, Any] = field(default_factory=dict)  # overrides of the distiller's defaults
    init_generator: str | None = None  # SiD2A: the SiD generator to start from
    lr: float = 1e-5  # fake score / discriminator
    glr: float | None = None  # generator; None = lr
    adam_betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    weight_decay: float = 0.0  # every optimizer (AdamW's decoupled decay for DMD2)
    warmup_images: int = 0  # linear learning-rate warm-up from 0 over this many images (DMD2)
    # per-network overrides of lr / betas / weight_decay / warmup_images, e.g. {"generator": {"betas": [0.9, 0.999]}}
    network_optim: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropout: float | None = None  # dropout of the teacher and its trainable copies; None keeps the teacher's
    augment_p: float = 0.0  # EDM's augmentation of the fake score's (and SiDA's discriminator's) inputs
    lpips: str = ""  # folder of the LPIPS weights (LPIPS_FILES), for CM's or DMD1's LPIPS distance
    lpips_resize: int = LPIPS_RESIZE  # LPIPS's input size (pixels), for such a cell
    ema_halflife_images: int = 500_000
    ema_beta: float | None = None  # a fixed EMA decay per iteration (CM's 0.9999) instead of the half-life
    # EDM's ramp-up: the half-life is at most this fraction of the images seen so far; None = no ramp-up
    ema_rampup: float | None = EMA_RAMPUP
    snapshot_images: int = 0  # 0 = only the final snapshot
    log_images: int = 0  # 0 = one log line per iteration
    seed: int = 0
    precision: str = "fp32"
    el: ELConfig = field(default_factory=ELConfig)
    # --- not part of the id: hardware knobs and locations -------------------------------------------
    cell_id: str = ""
    batch_gpu: int | None = None  # per-process batch; gradient accumulation fills the global batch
    run_dir: str = ""  # results/<scale>/runs/<cell_id>
    state_dir: str = ""  # results/<scale>/state/<cell_id>, outside Snakemake's outputs
    max_nonfinite_steps: int = 20
    labels: dict[str, Any] = field(default_factory=dict)  # free-form tags (experiment, dataset name)

    HARDWARE_KEYS = ("cell_id", "batch_gpu", "run_dir", "state_dir", "max_nonfinite_steps", "labels")
    # settings added after cells were first identified: at their default they stay out of the id, so an existing
    # cell keeps its id (and its results) when a new setting appears
    ADDED_LATER = ("lpips_resize", "ema_rampup")

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "cell") -> Cell:
        """A validated cell. A given `cell_id` must be the id of these settings: a stale id (settings edited
        after the id was written) would make the cell reuse another cell's folders and results."""
        if not isinstance(data, dict):
            raise CellError(f"{where}: a cell must be a JSON object (a mapping of settings), got {_kind(data)}")
        data = dict(data)
        el = data.pop("el", None)
        el = _strict(ELConfig, {} if el is None else el, where, "el.")
        cell = _strict(cls, data, where)
        cell.el = el
        cell.validate(where)
        computed = cell.compute_id()
        if cell.cell_id and cell.cell_id != computed:
            raise CellError(
                f"{where}: 'cell_id' is {cell.cell_id!r} but these settings have the id {computed!r}; the id is "
                "computed from the settings: remove 'cell_id' or restore the settings it was computed from"
            )
        cell.cell_id = computed
        return cell

    @classmethod
    def load(cls, path: str | Path) -> Cell:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise CellError(f"cell config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise CellError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from eldistill.io import atomic_write_json

        atomic_write_json(self.to_dict(), path)  # a kill mid-write never leaves half a cell

    # --- identity ---------------------------------------------------------------------------------
    def result_settings(self) -> dict[str, Any]:
        """The settings that change results (the id's input)."""
        d = self.to_dict()
        for key in self.HARDWARE_KEYS:
            d.pop(key, None)
        if not self.el.enabled:
            d["el"] = {"weight": 0.0}  # the embedder knobs are irrelevant when EL is off
        else:
            for key, default in (("space", "model"), ("vae", "")):  # added later: defaults keep older ids
                if d["el"].get(key) == default:
                    d["el"].pop(key)
        if not self.lpips:
            d.pop("lpips_resize")  # LPIPS's input size means nothing to a cell without LPIPS
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in self.ADDED_LATER:
            if key in d and d[key] == defaults[key]:
                d.pop(key)
        return d

    def compute_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.result_settings(), sort_keys=True).encode()).hexdigest()
        el = "el" if self.el.enabled else "noel"
        return f"{self.distiller}-{el}-b{self.batch}-{digest[:10]}"

    # --- checks -----------------------------------------------------------------------------------
    def validate(self, where: str = "cell", world_size: int = 1, check_files: bool = False) -> None:
        def bad(key: str, msg: str) -> CellError:
            return CellError(f"{where}: '{key}' {msg}")

        _check_types(self, where)
        if not isinstance(self.el, ELConfig):
            raise bad("el", f"must be a mapping of EL settings, got {_kind(self.el)}")
        _check_types(self.el, where, "el.")
        if self.distiller not in DISTILLERS:
            raise bad("distiller", f"is {self.distiller!r}; choose one of {', '.join(DISTILLERS)}")
        for key in ("batch", "total_images"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(key, f"must be a positive integer, got {value!r}")
        if self.total_images % self.batch:
            down, up = self.total_images // self.batch * self.batch, -(-self.total_images // self.batch) * self.batch
            raise bad(
                "total_images",
                f"= {self.total_images} is not a multiple of batch = {self.batch}: training runs whole iterations, "
                f"so it would train {up} images; ask for {up}" + (f" or {down}" if down else ""),
            )
        for key in ("snapshot_images", "log_images", "ema_halflife_images"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise bad(key, f"must be a non-negative integer, got {value!r}")
        if self.batch_gpu is not None:
            if not isinstance(self.batch_gpu, int) or self.batch_gpu <= 0:
                raise bad("batch_gpu", f"must be a positive integer, got {self.batch_gpu!r}")
            if self.batch % (self.batch_gpu * world_size):
                raise bad(
                    "batch",
                    f"= {self.batch} is not divisible by batch_gpu x world size = {self.batch_gpu} x {world_size}",
                )
        elif self.batch % world_size:
            raise bad("batch", f"= {self.batch} is not divisible by the world size {world_size}")
        if self.lr <= 0 or (self.glr is not None and self.glr <= 0):
            raise bad("lr", "and 'glr' must be positive")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise bad("adam_betas", f"must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise bad("weight_decay", f"must be a non-negative number, got {self.weight_decay!r}")
        if not isinstance(self.warmup_images, int) or self.warmup_images < 0:
            raise bad("warmup_images", f"must be a non-negative integer, got {self.warmup_images!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise bad("dropout", f"must be in [0, 1) or null (the teacher's), got {self.dropout!r}")
        if not isinstance(self.augment_p, (int, float)) or not 0 <= self.augment_p <= 1:
            raise bad("augment_p", f"must be a probability in [0, 1], got {self.augment_p!r}")
        if self.augment_p > 0 and self.distiller in ("dmd", "cm"):
            raise bad("augment_p", f"must be 0 for {self.distiller} (its reference trains without augmentation)")
        if self.ema_rampup is not None and (
            isinstance(self.ema_rampup, bool) or not isinstance(self.ema_rampup, int | float) or self.ema_rampup <= 0
        ):
            raise bad("ema_rampup", f"must be a positive fraction of the images seen or null, got {self.ema_rampup!r}")
        if self.ema_beta is not None and not 0 <= self.ema_beta < 1:
            raise bad("ema_beta", f"must be in [0, 1) or null (use ema_halflife_images), got {self.ema_beta!r}")
        self._validate_network_optim(bad)
        if self.precision not in PRECISIONS:
            raise bad("precision", f"is {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.distiller == "sid2a" and not self.init_generator:
            raise bad("init_generator", "is required for sid2a (SiD2A starts from a SiD generator)")
        el = self.el
        if el.weight < 0:
            raise bad("el.weight", f"must be >= 0, got {el.weight}")
        unknown = [a for a in el.archs if a not in EMBEDDER_FAMILIES]
        if unknown or not el.archs:
            raise bad("el.archs", f"has {unknown or 'no families'}; choose from {', '.join(EMBEDDER_FAMILIES)}")
        if not isinstance(el.inits_per_arch, int) or el.inits_per_arch < 1:
            raise bad("el.inits_per_arch", f"must be a positive integer, got {el.inits_per_arch!r}")
        if not el.bandwidths or any(b <= 0 for b in el.bandwidths):
            raise bad("el.bandwidths", f"must be a non-empty list of positive numbers, got {el.bandwidths!r}")
        if el.bandwidth_mode not in ("median", "fixed"):
            raise bad("el.bandwidth_mode", f"is {el.bandwidth_mode!r}; choose median or fixed")
        if el.estimator not in ("unbiased", "biased"):
            raise bad("el.estimator", f"is {el.estimator!r}; choose unbiased or biased")
        if el.feature_norm not in ("none", "l2", "standardize"):
            raise bad("el.feature_norm", f"is {el.feature_norm!r}; choose none, l2 or standardize")
        if el.space not in ("model", "pixels"):
            raise bad("el.space", f"is {el.space!r}; choose model or pixels")
        if el.space == "pixels" and el.enabled and not el.vae:
            raise bad("el.vae", "must name the VAE folder when el.space is pixels (EL on decoded latents)")
        if el.scope not in EL_SCOPES:
            raise bad("el.scope", f"is {el.scope!r}; choose {' or '.join(EL_SCOPES)}")
        if el.enabled and el.estimator == "unbiased":
            # The unbiased estimator needs two samples per estimate: the global batch, or each round.
            if el.scope == "global" and self.batch < 2:
                raise bad("batch", f"= {self.batch}; the unbiased EL estimator needs at least 2 samples")
            if el.scope == "round" and self.batch_gpu is not None and self.batch_gpu < 2:
                raise bad("batch_gpu", f"= {self.batch_gpu}; EL per round (el.scope round) needs at least 2")
        if needs_lpips(self.distiller, self.distiller_args) and not self.lpips:
            raise bad("lpips", f"must name the folder of the LPIPS weights ({', '.join(LPIPS_FILES)}): the cell's "
                      "distiller_args ask for the LPIPS distance")  # fmt: skip
        if (
            isinstance(self.lpips_resize, bool)
            or not isinstance(self.lpips_resize, int)
            or (self.lpips_resize < LPIPS_MIN_RESIZE)
        ):
            raise bad("lpips_resize", f"must be an integer >= {LPIPS_MIN_RESIZE} (VGG16's pools before the last LPIPS "
                      f"layer halve the image four times), got {self.lpips_resize!r}")  # fmt: skip
        if check_files and self.lpips:
            for name in LPIPS_FILES:
                if not (Path(self.lpips) / name).is_file():
                    raise bad("lpips", f"lacks {Path(self.lpips) / name}; fetch it with `eldistill download` (the "
                              "config's lpips urls and sha256; the workflow's download_lpips rule does)")  # fmt: skip
        if check_files:
            for key in ("teacher", "dataset", "init_generator"):
                path = getattr(self, key)
                if path and not Path(path).exists():
                    raise bad(key, f"points to a file that does not exist: {path}")
            if el.enabled and el.space == "pixels" and not (Path(el.vae) / "config.json").is_file():
                raise bad("el.vae", f"is not a diffusers VAE folder (no config.json): {el.vae}")

    def _validate_network_optim(self, bad) -> None:
        if not isinstance(self.network_optim, dict):
            raise bad("network_optim", f"must be a mapping of network name -> settings, got {self.network_optim!r}")
        for name, settings in self.network_optim.items():
            key = f"network_optim.{name}"
            if name not in NETWORKS:
                raise bad(key, f"names no network; choose from {', '.join(NETWORKS)}")
            if not isinstance(settings, dict):
                raise bad(key, f"must be a mapping, got {settings!r}")
            unknown = sorted(set(settings) - set(NETWORK_OPTIM_KEYS))
            if unknown:
                raise bad(f"{key}.{unknown[0]}", f"is not a setting; choose from {', '.join(NETWORK_OPTIM_KEYS)}")
            if "lr" in settings and not (isinstance(settings["lr"], (int, float)) and settings["lr"] > 0):
                raise bad(f"{key}.lr", f"must be positive, got {settings['lr']!r}")
            betas = settings.get("betas", [0.0, 0.0])
            if not (isinstance(betas, list) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
                raise bad(f"{key}.betas", f"must be two numbers in [0, 1), got {betas!r}")
            if settings.get("weight_decay", 0) < 0:
                raise bad(f"{key}.weight_decay", f"must be >= 0, got {settings['weight_decay']!r}")
            warmup = settings.get("warmup_images", 0)
            if not isinstance(warmup, int) or warmup < 0:
                raise bad(f"{key}.warmup_images", f"must be a non-negative integer, got {warmup!r}")

    @property
    def generator_lr(self) -> float:
        return self.lr if self.glr is None else self.glr

    def optim_settings(self, network: str) -> dict[str, Any]:
        """The optimizer settings of one network: the cell-wide ones, then network_optim[network] over them."""
        settings = {
            "lr": self.generator_lr if network == "generator" else self.lr,
            "betas": list(self.adam_betas),
            "weight_decay": float(self.weight_decay),
            "warmup_images": self.warmup_images,
        }
        settings.update(self.network_optim.get(network, {}))
        return settings


def _strict(cls: type, data: dict[str, Any], where: str, prefix: str = ""):
    """Build a dataclass from a dict, refusing unknown keys and missing required ones by name."""
    if not isinstance(data, dict):
        raise CellError(f"{where}: '{prefix.rstrip('.') or 'cell'}' must be a mapping, got {_kind(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(prefix + str(k) for k in set(data) - names)
    if unknown:
        known = ", ".join(prefix + n for n in sorted(names))
        raise CellError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    missing = [
        prefix + f.name
        for f in dataclasses.fields(cls)
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise CellError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**data)


# --- types: every field is checked against its annotation, so a wrong type is named, not a TypeError ----------
def _check_types(obj: Any, where: str, prefix: str = "") -> None:
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints.get(f.name)
        if hint is None or hint is ELConfig:
            continue
        value = getattr(obj, f.name)
        wanted = _expected(value, hint)
        if wanted is not None:
            raise CellError(f"{where}: '{prefix}{f.name}' must be {wanted}, got {value!r} ({_kind(value)})")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # resolving the string annotations costs ~0.3 ms a call (cProfile); a grid checks two objects per cell, in
    # both Snakemake processes of every SLURM job, so resolve each class once
    return typing.get_type_hints(cls)


def _expected(value: Any, hint: Any) -> str | None:
    """None when `value` fits the annotation `hint`, else what was expected (in words). Annotations this does not
    know are left to the field's own check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        wanted = [_expected(value, a) for a in options]
        if any(w is None for w in wanted):
            return None
        return " or ".join(w for w in wanted if w) + (" or null" if len(options) < len(args) else "")
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "an integer"
    if hint is float:
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin is list:
        item = args[0] if args else Any
        describe = _expected(object(), item) if item is not Any else None
        of = f" of {_plural(describe)}" if describe else ""
        if not isinstance(value, list):
            return f"a list{of}"
        return None if all(_expected(v, item) is None for v in value) else f"a list{of}"
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return "a mapping with string keys"
    return None


def _plural(description: str) -> str:
    words = {"an integer": "integers", "a finite number": "finite numbers", "a string": "strings"}
    return words.get(description, description)


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
    names.update({float: "a number", type(None): "null"})
    return names.get(type(value), f"a {type(value).__name__}")


def needs_lpips(distiller: str, distiller_args: dict[str, Any]) -> bool:
    """Whether a cell's distiller reads the LPIPS network: CM with distance lpips, DMD1's regression with it."""
    if distiller == "cm":
        return distiller_args.get("distance") == "lpips"
    if distiller == "dmd":
        return distiller_args.get("regression_distance") == "lpips" and distiller_args.get("regression_weight", 0) > 0
    return False
