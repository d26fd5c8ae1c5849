"""Backbones: parameter layouts identical to the published EDM/EDM2 checkpoints, forward passes of the
full-size teachers on the CPU, and EDM2's magnitude-preserving rules checked against their closed forms.

The layout digests are sha256 of the sorted (state-dict key, shape) list of NVlabs/edm and NVlabs/edm2's
own classes built with the same constructor arguments (computed once from those repositories; no
upstream code runs here). Parameter counts: EDM reports 55.7 M (CIFAR-10 DDPM++), SiD's README 125 M (EDM2-XS)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from eldistill.nets import build_network, count_parameters, layers, preset
from eldistill.nets.edm2 import MPConv, mp_cat, mp_silu, mp_sum, normalize

UPSTREAM_LAYOUT = {  # preset -> (digest, number of state-dict entries, number of parameters)
    "mini": ("46a1929680b00841", 134, 180_193),
    "cifar10": ("84ab9525314f388b", 425, 55_733_891),
    "ffhq64": ("023d7b04f5fc8d70", 553, 61_805_571),
    "imagenet64": ("41cda29163f861ea", 553, 295_899_267),
    "edm2-xs": ("03db932ce6beac66", 203, 124_713_253),
}


def layout_digest(net):
    items = sorted((k, list(v.shape)) for k, v in net.state_dict().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16], len(items), count_parameters(net)


@pytest.mark.parametrize("name", ["mini", "ffhq64", "imagenet64"])
def test_layout_matches_upstream(name, monkeypatch):
    # Shapes only: skip EDM's random initialisation, which dominates building a 300 M-parameter network.
    monkeypatch.setattr(layers, "weight_init", lambda shape, mode, fan_in, fan_out: torch.empty(shape))
    assert layout_digest(build_network(preset(name))) == UPSTREAM_LAYOUT[name]


def test_cifar10_teacher_layout_and_cpu_forward():
    torch.manual_seed(0)
    net = build_network(preset("cifar10")).eval()
    assert layout_digest(net) == UPSTREAM_LAYOUT["cifar10"]
    keys = net.state_dict().keys()
    for key in (  # anchors B.3, by hand
        "model.map_augment.weight",
        "model.enc.32x32_conv.weight",
        "model.enc.16x16_down.conv0.resample_filter",
        "model.enc.16x16_block0.qkv.weight",
        "model.dec.8x8_in0.qkv.weight",
        "model.dec.16x16_block4.proj.weight",
        "model.dec.32x32_aux_conv.weight",
    ):
        assert key in keys
    assert "model.map_label.weight" not in keys and "model.dec.16x16_block3.qkv.weight" not in keys
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        d, feats = net(x, torch.tensor([2.0]), return_features=True)
    assert d.shape == x.shape and torch.isfinite(d).all() and feats.shape == (1, 256, 8, 8)


def test_edm2_xs_layout_and_cpu_forward():
    torch.manual_seed(0)
    net = build_network(preset("edm2-xs")).eval()
    assert layout_digest(net) == UPSTREAM_LAYOUT["edm2-xs"]
    keys = net.state_dict().keys()
    for key in (
        "unet.out_gain",
        "unet.emb_fourier.freqs",
        "unet.emb_label.weight",
        "unet.enc.64x64_conv.weight",
        "unet.enc.16x16_block0.attn_qkv.weight",
        "logvar_linear.weight",
    ):
        assert key in keys
    assert not any(k.endswith(".bias") for k in keys)  # EDM2 has no biases
    assert net.state_dict()["unet.enc.64x64_conv.weight"].shape[1] == 5  # 4 latent channels + the constant one
    x = torch.randn(1, 4, 64, 64)
    labels = torch.nn.functional.one_hot(torch.tensor([7]), 1000).float()
    with torch.no_grad():
        d, feats, logvar = net(x, torch.tensor([1.5]), labels, return_features=True, return_logvar=True)
    assert d.shape == x.shape and torch.isfinite(d).all()
    assert feats.shape == (1, 512, 8, 8) and logvar.shape == (1, 1, 1, 1)


def test_ncsnpp_and_skip_variants_run_and_differ(randomize):
    x = torch.randn(2, 3, 16, 16)
    sigma = torch.tensor([0.3, 3.0])
    outs = []
    for variant in (
        dict(),
        dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
        dict(encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
    ):
        net = randomize(build_network(preset("mini", img_channels=3, attn_resolutions=[8], **variant)), seed=1).eval()
        with torch.no_grad():
            outs.append(net(x, sigma))
        assert outs[-1].shape == x.shape and torch.isfinite(outs[-1]).all()
    assert "model.map_noise.freqs" in build_network(preset("mini", embedding_type="fourier")).state_dict()
    assert (outs[0] - outs[1]).abs().max() > 1e-3 and (outs[0] - outs[2]).abs().max() > 1e-3


def test_dhariwal_unet_small(randomize):
    cfg = preset(
        "mini", model_type="DhariwalUNet", img_channels=3, label_dim=10, model_channels=64, attn_resolutions=[8]
    )
    cfg = {
        k: v
        for k, v in cfg.items()
        if k not in ("embedding_type", "encoder_type", "decoder_type", "channel_mult_noise", "resample_filter")
    }
    net = randomize(build_network(cfg), seed=2).eval()
    keys = net.state_dict().keys()
    assert "model.map_label.weight" in keys and "model.map_label.bias" not in keys  # ADM's label map has no bias
    assert "model.out_conv.weight" in keys and "model.dec.8x8_in0.qkv.weight" in keys
    x = torch.randn(2, 3, 16, 16)
    labels = torch.eye(10)[[2, 5]]
    with torch.no_grad():
        d, feats = net(x, torch.tensor([0.5, 5.0]), labels, return_features=True)
        d2 = net(x, torch.tensor([0.5, 5.0]), labels.flip(0))
    assert feats.shape == (2, 128, 8, 8) and (d - d2).abs().max() > 1e-4


def test_mp_primitives_preserve_magnitude():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 2_000_000, generator=g).chunk(2, dim=0)
    for t in (0.3, 0.5):
        assert mp_sum(a, b, t).std().item() == pytest.approx(1.0, abs=3e-3)
    c = mp_cat(a[:, :1000].reshape(2, 1000), b[:, :3000].reshape(2, 3000), t=0.5)
    # total energy is preserved and split evenly between the two parts
    assert c.pow(2).sum(dim=1).mean().item() == pytest.approx(4000, rel=0.05)
    assert c[:, :1000].pow(2).sum().item() == pytest.approx(c[:, 1000:].pow(2).sum().item(), rel=0.1)
    assert mp_silu(torch.randn(1_000_000, generator=g)).pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=0.01)
    x = torch.randn(3, 8, 5, 5, generator=g) * 7
    assert normalize(x).pow(2).mean(dim=(1, 2, 3)).sqrt().tolist() == pytest.approx([1.0] * 3, abs=1e-4)


def test_forced_weight_normalisation_only_in_training_mode():
    torch.manual_seed(0)
    conv = MPConv(6, 4, kernel=[3, 3])
    with torch.no_grad():
        conv.weight.mul_(5)
    before = conv.weight.detach().clone()
    x = torch.randn(2, 6, 8, 8)
    conv.eval()
    y_eval = conv(x)
    assert torch.equal(conv.weight, before)  # eval: stored weight untouched
    conv.train()
    y_train = conv(x)
    fan_in = 6 * 9
    norms = conv.weight.detach().pow(2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(norms, torch.full((4,), float(fan_in)), rtol=1e-3, atol=0)  # unit RMS per element
    torch.testing.assert_close(y_train, y_eval, rtol=1e-4, atol=1e-5)  # the normalised weight gives the same output
    # the output uses w / ||w|| * 1/sqrt(fan_in): a closed form in float64
    w = before.double()
    w = w / (1e-4 + w.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) / math.sqrt(fan_in)) / math.sqrt(fan_in)
    ref = torch.nn.functional.conv2d(x.double(), w, padding=1)
    torch.testing.assert_close(y_eval.double(), ref, rtol=1e-5, atol=1e-5)
