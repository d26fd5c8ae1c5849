"""`evaluate` on a 4-channel (EDM2 latent) generator: decoded with a tiny random diffusers VAE, features from
stand-in detectors whose features are affine in the images, against a reference whose FID is known in closed
form: generated statistics (mu, S) computed independently here, reference (mu + d, S), so FID = |d|^2."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from eldistill.checkpoints import save_network
from eldistill.generator import one_step
from eldistill.metrics import PAPER, protocols
from eldistill.metrics import evaluate as ev
from eldistill.nets.latent import edm2_scale_bias

N = 16


class _StandInDino(torch.nn.Module):
    """The interface of a TorchScript DINOv2 ViT-L/14 (normalised 224x224 images -> (B, 1024)), not its weights."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (224, 224)
        return self.proj(x.mean(dim=(2, 3)))


@pytest.fixture
def latent_run(latent, tmp_path):
    torch.manual_seed(0)
    net = latent.tiny_edm2(label_dim=3, res=8)
    scale, bias = edm2_scale_bias()
    meta = {"kind": "generator", "sigma_init": 2.5, "images_seen": 8, "iterations": 2, "cell_id": "latent-cell",
            "encoder": {"scale": scale.tolist(), "bias": bias.tolist()}}  # fmt: skip
    run_dir = tmp_path / "run"
    save_network(run_dir / "generator.pt", net, meta)
    vae_dir = latent.tiny_vae(tmp_path / "vae")
    dino = tmp_path / "dinov2-vitl14.pt"
    torch.jit.script(_StandInDino()).save(str(dino))
    return run_dir, net, vae_dir, dino


def _decoded_images(net, vae_dir) -> torch.Tensor:
    """EDM2's decode, written from its spec: z -> one-step generator -> (x - bias) / scale -> VAE decoder ->
    clamp(0, 1) * 255 truncated to uint8; float64 afterwards."""
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    scale, bias = (t.reshape(1, 4, 1, 1) for t in edm2_scale_bias())
    z = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(N)])
    labels = torch.nn.functional.one_hot(torch.arange(N) % 3, 3).float()
    with torch.no_grad():
        x = one_step(net.eval(), z, 2.5, labels)
        pixels = vae.decode((x - bias) / scale).sample
    return (pixels.clamp(0, 1) * 255).to(torch.uint8).double()


def _stats(features: np.ndarray):
    return features.mean(0), np.cov(features, rowvar=False)


@pytest.mark.slow
def test_latent_generator_closed_form_fid_and_fd_dinov2(latent_run, fake_detector, tmp_path, monkeypatch):
    run_dir, net, vae_dir, dino = latent_run
    images = _decoded_images(net, vae_dir)
    assert images.shape == (N, 3, 64, 64)
    # stand-in Inception: features = W (channel means / 255) + b (tests/metrics/conftest.py)
    inception = torch.jit.load(str(fake_detector)).proj
    w, b = inception.weight.detach().double().numpy(), inception.bias.detach().double().numpy()
    mu, sigma = _stats((images.mean(dim=(2, 3)).numpy() / 255) @ w.T + b)
    # stand-in DINOv2 after EDM2's preprocessing: bicubic antialiased 224x224, / 255, ImageNet mean/std
    x = torch.nn.functional.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True) / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).reshape(
        1, 3, 1, 1
    )
    proj = torch.jit.load(str(dino)).proj
    dmu, dsigma = _stats(
        x.double().mean(dim=(2, 3)).numpy() @ proj.weight.detach().double().numpy().T
        + proj.bias.detach().double().numpy()
    )
    rng = np.random.default_rng(0)
    d, dd = rng.normal(size=2048) * 0.002, rng.normal(size=1024) * 0.002  # small: a sensitive check
    ref = tmp_path / "img512.pkl"  # EDM2's reference layout (calculate_metrics.py:196-200)
    ref.write_bytes(
        pickle.dumps(
            {
                "num_images": 1281167,
                "fid": {"mu": mu + d, "sigma": sigma},
                "fd_dinov2": {"mu": dmu + dd, "sigma": dsigma},
            }
        )
    )
    monkeypatch.setitem(protocols.PROTOCOLS, PAPER, protocols.Protocol(PAPER, None, N, True, "test-only"))
    final = ev.evaluate_run(
        run_dir, PAPER, ref, feature_net=fake_detector, batch_size=8, vae=vae_dir, fd_dinov2=dino
    )  # two generation batches
    assert final["fid"] == pytest.approx(d @ d, rel=1e-3, abs=1e-6)
    assert final["fd_dinov2"] == pytest.approx(dd @ dd, rel=1e-3, abs=1e-6)
    assert final["latent_decoder"].startswith("vae:") and final["fd_dinov2_net"].startswith("dinov2-vitl14:")
    assert (run_dir / "samples.png").is_file()


def test_latent_generator_needs_the_vae(latent_run, fake_detector, tmp_path, monkeypatch):
    run_dir, _, _, _ = latent_run
    ref = tmp_path / "ref.pkl"
    ref.write_bytes(pickle.dumps({"fid": {"mu": np.zeros(2048), "sigma": np.eye(2048)}}))
    monkeypatch.setitem(protocols.PROTOCOLS, PAPER, protocols.Protocol(PAPER, None, N, True, "test-only"))
    with pytest.raises(ValueError, match="4-channel latents; pass --vae"):
        ev.evaluate_run(run_dir, PAPER, ref, feature_net=fake_detector)
    with pytest.raises(ValueError, match="'fd_dinov2'"):  # asked for FD_DINOv2, the reference lacks it
        ev.evaluate_run(run_dir, PAPER, ref, feature_net=fake_detector, fd_dinov2=run_dir.parent / "dinov2-vitl14.pt")
