"""Teacher networks: EDM preconditioners and the backbones whose parameter names match the published
EDM/EDM2 checkpoints, built from EDM's recorded constructor call (see INTERFACES.md, "Networks")."""

from __future__ import annotations

import copy
from typing import Any

import torch

from .edm2 import EDM2Precond
from .precond import EDMPrecond, VEPrecond, VPPrecond

PRECONDS = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "EDM2Precond": EDM2Precond}

# Class names found in published/derived pickles -> ours (anchors B.2; same parameter names).
CLASS_ALIASES = {
    "EDMPrecond_EncoderDecoder": "EDMPrecond",
    "Precond": "EDM2Precond",
    "EDM_2_Precond_Generator": "EDM2Precond",
    "EDM_2_Precond_EncoderDecoder": "EDM2Precond",
}
MODEL_TYPE_ALIASES = {"SongUNet_EncoderDecoder": "SongUNet", "DhariwalUNet_EncoderDecoder": "DhariwalUNet"}

PRESETS: dict[str, dict[str, Any]] = {
    # The miniature teacher (~0.19 M params at 1x16x16): one level of attention-free DDPM++.
    # Override img_resolution / img_channels / label_dim to fit the dataset.
    "mini": {
        "class_name": "EDMPrecond",
        "model_type": "SongUNet",
        "img_resolution": 16,
        "img_channels": 1,
        "label_dim": 0,
        "use_fp16": False,
        "model_channels": 16,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
        "embedding_type": "positional",
        "encoder_type": "standard",
        "decoder_type": "standard",
        "channel_mult_noise": 1,
        "resample_filter": [1, 1],
    },
    # EDM's CIFAR-10 DDPM++ teacher (edm-cifar10-32x32-{uncond,cond}-vp.pkl): 55.7 M params.
    "cifar10": {
        "class_name": "EDMPrecond",
        "model_type": "SongUNet",
        "img_resolution": 32,
        "img_channels": 3,
        "label_dim": 0,
        "use_fp16": False,
        "augment_dim": 9,
        "model_channels": 128,
        "channel_mult": [2, 2, 2],
        "dropout": 0.13,
        "embedding_type": "positional",
        "encoder_type": "standard",
        "decoder_type": "standard",
        "channel_mult_noise": 1,
        "resample_filter": [1, 1],
    },
    # EDM's FFHQ 64x64 DDPM++ teacher (edm-ffhq-64x64-uncond-vp.pkl).
    "ffhq64": {
        "class_name": "EDMPrecond",
        "model_type": "SongUNet",
        "img_resolution": 64,
        "img_channels": 3,
        "label_dim": 0,
        "use_fp16": False,
        "augment_dim": 9,
        "model_channels": 128,
        "channel_mult": [1, 2, 2, 2],
        "dropout": 0.05,
        "embedding_type": "positional",
        "encoder_type": "standard",
        "decoder_type": "standard",
        "channel_mult_noise": 1,
        "resample_filter": [1, 1],
    },
    # EDM's ImageNet-64 ADM teacher (edm-imagenet-64x64-cond-adm.pkl).
    "imagenet64": {
        "class_name": "EDMPrecond",
        "model_type": "DhariwalUNet",
        "img_resolution": 64,
        "img_channels": 3,
        "label_dim": 1000,
        "use_fp16": False,
        "model_channels": 192,
        "channel_mult": [1, 2, 3, 4],
        "dropout": 0.10,
    },
    # EDM2-XS on ImageNet-512 latents (64x64x4), ~125 M params.
    "edm2-xs": {
        "class_name": "EDM2Precond",
        "img_resolution": 64,
        "img_channels": 4,
        "label_dim": 1000,
        "use_fp16": True,
        "model_channels": 128,
        "dropout": 0.0,
    },
}
# EDM's AFHQv2 64x64 teacher: the FFHQ network with more dropout.
PRESETS["afhqv2-64"] = {**PRESETS["ffhq64"], "dropout": 0.25}


def preset(name: str, **overrides) -> dict[str, Any]:
    """A copy of a named config with some keys replaced (e.g. img_resolution, img_channels, label_dim)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown network preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**copy.deepcopy(PRESETS[name]), **overrides}


def build_network(config: dict[str, Any]) -> torch.nn.Module:
    """Build a preconditioned network from EDM's recorded constructor call; `net.config` keeps it."""
    if not isinstance(config, dict):
        raise ValueError(f"network config: expected a mapping, got {type(config).__name__}")
    kwargs = copy.deepcopy(dict(config))
    name = kwargs.pop("class_name", None)
    if name is None:
        raise ValueError("network config: missing key 'class_name'")
    name = CLASS_ALIASES.get(name, name)
    if name not in PRECONDS:
        raise ValueError(f"network config: 'class_name' is {name!r}; choose one of {', '.join(PRECONDS)}")
    if "model_type" in kwargs:
        kwargs["model_type"] = MODEL_TYPE_ALIASES.get(kwargs["model_type"], kwargs["model_type"])
    for key in ("img_resolution", "img_channels"):
        if key not in kwargs:
            raise ValueError(f"network config: missing key {key!r}")
    try:
        return PRECONDS[name](**kwargs)
    except TypeError as e:  # an unknown or missing constructor argument
        raise ValueError(f"network config ({name}): {e}") from None


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "PRESETS",
    "PRECONDS",
    "CLASS_ALIASES",
    "MODEL_TYPE_ALIASES",
    "preset",
    "build_network",
    "count_parameters",
    "EDMPrecond",
    "VPPrecond",
    "VEPrecond",
    "EDM2Precond",
]
