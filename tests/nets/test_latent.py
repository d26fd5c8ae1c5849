"""The ImageNet-512 latent interface with a small stand-in VAE whose encoder and decoder are known exactly,
checked against EDM2's latent scale/bias conventions computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from eldistill.nets.latent import RAW_MEAN, RAW_STD, LatentCodec, edm2_scale_bias
from eldistill.rehearsal.standins import tiny_autoencoderkl

MIX = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.25, 0.25]])  # 3 -> 4 channels


class StandInVAE(torch.nn.Module):
    """8x downsampling 'VAE': mean = channel mix of 8x8 block averages, std constant; decode inverts it."""

    def __init__(self, std=0.0):
        super().__init__()
        self.std = std
        self.calls = 0

    def encode(self, x):
        self.calls += 1
        mean = torch.einsum("oc,bchw->bohw", MIX, F.avg_pool2d(x, 8))
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.full_like(mean, self.std)))

    def decode(self, z):
        self.calls += 1
        return {"sample": F.interpolate(z[:, :3], scale_factor=8, mode="nearest")}  # dict access, like EDM2 uses


def blocky_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, 2, 2), generator=g, dtype=torch.uint8)
    return small.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # 16x16, constant on 8x8 blocks


def test_scale_and_bias_closed_form():
    scale, bias = edm2_scale_bias()
    for c in range(4):
        assert scale[c].item() == pytest.approx(0.5 / RAW_STD[c], rel=1e-6)
        assert bias[c].item() == pytest.approx(-RAW_MEAN[c] * 0.5 / RAW_STD[c], rel=1e-6)


def test_final_latents_have_mean_zero_and_std_half():
    codec = LatentCodec(StandInVAE())
    g = torch.Generator().manual_seed(1)
    mean = (
        torch.tensor(RAW_MEAN).reshape(1, 4, 1, 1)
        + torch.randn(64, 4, 16, 16, generator=g) * torch.tensor(RAW_STD).reshape(1, 4, 1, 1) * 0.6
    )
    std = torch.tensor(RAW_STD).reshape(1, 4, 1, 1).expand_as(mean) * 0.8  # var 0.36 + 0.64 = 1 raw_std^2
    final = codec.encode_latents(torch.cat([mean, std], dim=1), generator=g)
    per_channel_mean = final.mean(dim=(0, 2, 3))
    per_channel_std = final.std(dim=(0, 2, 3))
    assert per_channel_mean.abs().max() < 0.02 and (per_channel_std - 0.5).abs().max() < 0.01


def test_encode_decode_match_edm2_conventions():
    vae = StandInVAE()
    codec = LatentCodec(vae, batch_size=2)
    images = blocky_images(5)
    latents = codec.encode(images)
    assert latents.shape == (5, 4, 2, 2) and vae.calls == 3  # batches of 2, 2, 1
    # by hand: block average of x/255, mixed to 4 channels, then * scale + bias (std 0: no noise)
    scale, bias = (t.double() for t in edm2_scale_bias())
    raw = torch.einsum("oc,bchw->bohw", MIX.double(), images[:, :, ::8, ::8].double() / 255)
    expected = raw * scale.reshape(1, 4, 1, 1) + bias.reshape(1, 4, 1, 1)
    torch.testing.assert_close(latents.double(), expected, rtol=1e-6, atol=1e-6)
    decoded = codec.decode_uint8(latents)
    assert decoded.dtype == torch.uint8 and decoded.shape == images.shape
    assert (decoded.int() - images.int()).abs().max() <= 1  # truncation of x * 255 may lose one level
    pixels = codec.decode(latents)
    torch.testing.assert_close(pixels, images.float() / 127.5 - 1, atol=1e-5, rtol=0)


def test_decode_clamps_like_edm2():
    codec = LatentCodec(StandInVAE())
    scale, bias = edm2_scale_bias()
    raw = torch.tensor([-0.3, 0.5, 1.7, 0.0]).reshape(1, 4, 1, 1).expand(1, 4, 2, 2)
    out = codec.decode_uint8(raw * scale.reshape(1, 4, 1, 1) + bias.reshape(1, 4, 1, 1))
    assert out[0, :, 0, 0].tolist() == [0, 127, 255]  # clamp(0, 1) * 255, truncated: 127.5 -> 127


def test_scale_bias_from_a_converted_teacher_and_errors(tmp_path):
    codec = LatentCodec(StandInVAE(), scale=[1.0, 2.0, 4.0, 8.0], bias=[0.0, 0.0, 0.0, 1.0])
    z = codec.encode_latents(torch.cat([torch.ones(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)], dim=1))
    assert z.flatten().tolist() == [1.0, 2.0, 4.0, 9.0]
    with pytest.raises(ValueError, match="scale"):
        LatentCodec(StandInVAE(), scale=[1.0, 2.0], bias=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="no-vae-here"):
        LatentCodec.from_pretrained(tmp_path / "no-vae-here")


def test_real_autoencoderkl_from_a_local_folder(tmp_path):
    torch.manual_seed(0)
    tiny = tiny_autoencoderkl()  # a real diffusers AutoencoderKL (diffusers is in the test extra)
    tiny.save_pretrained(tmp_path / "vae")
    codec = LatentCodec.from_pretrained(tmp_path / "vae", batch_size=3)
    images = blocky_images(4).repeat(1, 1, 2, 2)  # 32x32
    raw = codec.encode_pixels(images)
    assert raw.shape == (4, 8, 4, 4)
    dist = tiny.eval().encode(images.float() / 255).latent_dist  # the same VAE, called directly
    torch.testing.assert_close(raw, torch.cat([dist.mean, dist.std], dim=1), rtol=1e-4, atol=1e-5)
    out = codec.decode_uint8(codec.encode_latents(raw, generator=torch.Generator().manual_seed(0)))
    assert out.shape == images.shape and out.dtype == torch.uint8
