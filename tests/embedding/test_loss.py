"""EmbeddingLoss: value from the definition, gradients to x_gen only, frozen and outside any optimizer or
generator checkpoint, optimisation by EL alone, autocast, and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn

from eldistill.cell import ELConfig
from eldistill.embedding import EmbeddingLoss, NonFiniteInputError, build_embedder

SMALL = dict(inits_per_arch=1, working_size=8)


def el_reference(x_gen, x_real, archs, inits, bandwidths, mode, estimator, seed, in_channels, working_size):
    """float64, numpy: features from float64 copies of the embedders, MMD^2 from the pairwise-kernel definition."""
    values = []
    for family in archs:
        for i in range(inits):
            e = build_embedder(family, seed + i, in_channels, working_size).double()
            with torch.no_grad():
                f, g = e(x_gen.double()).numpy(), e(x_real.double()).numpy()
            bw = np.asarray(bandwidths, dtype=np.float64)
            if mode == "median":
                z = np.concatenate([f, g])
                bw = bw * np.median(cdist(z, z)[np.triu_indices(len(z), 1)])

            def k(a, b, bw=bw):
                d2 = cdist(a, b, "sqeuclidean")
                return sum(np.exp(-d2 / (2 * s * s)) for s in bw)

            n, m = len(f), len(g)
            kff, kgg, kfg = k(f, f), k(g, g), k(f, g)
            if estimator == "biased":
                values.append(kff.mean() + kgg.mean() - 2 * kfg.mean())
            else:
                off = len(bw)  # the kernel's diagonal
                values.append(
                    (kff.sum() - n * off) / (n * (n - 1)) + (kgg.sum() - m * off) / (m * (m - 1)) - 2 * kfg.mean()
                )
    return np.mean(values), np.array(values)


@pytest.mark.parametrize(
    "mode, estimator, bandwidths", [("median", "unbiased", [0.5, 1, 2, 4]), ("fixed", "biased", [0.3, 1.0])]
)
def test_value_matches_float64_reference(mode, estimator, bandwidths, images):
    # 5 + 6 = 11 points -> 55 pairs, an odd count, so numpy's and torch's medians agree exactly.
    x_gen, x_real = images(5, 3, 16, seed=1, shift=0.3), images(6, 3, 16, seed=2)
    archs = ["cnn", "multiscale", "resnet", "attention"]
    el = EmbeddingLoss(archs, 2, bandwidths, mode, estimator, working_size=16, seed=5, in_channels=3)
    value, per = el(x_gen, x_real)
    want, want_per = el_reference(x_gen, x_real, archs, 2, bandwidths, mode, estimator, 5, 3, 16)
    assert per.shape == (8,) and el.names == [f"{a}/{i}" for a in archs for i in range(2)]
    np.testing.assert_allclose(per.detach().numpy(), want_per, rtol=1e-3, atol=2e-6)
    assert value.item() == pytest.approx(want, rel=1e-3, abs=2e-6)


def test_gradcheck_float64_fixed_bandwidths(images):
    el = EmbeddingLoss(bandwidths=[0.5, 2.0], bandwidth_mode="fixed", in_channels=1, **SMALL).double()
    x_gen = images(3, 1, 8, seed=3).double().requires_grad_()
    x_real = images(3, 1, 8, seed=4).double()
    # fast_mode checks random directions of the Jacobian: the full one costs 2 x 192 forward passes.
    assert torch.autograd.gradcheck(lambda x: el(x, x_real)[0], (x_gen,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_reach_x_gen_only(images):
    el = EmbeddingLoss(**SMALL)
    x_gen, x_real = images(4, seed=1).requires_grad_(), images(4, seed=2).requires_grad_()
    el(x_gen, x_real)[0].backward()
    assert x_gen.grad is not None and x_gen.grad.abs().sum() > 0
    assert x_real.grad is None


def test_seed_rebuilds_the_same_loss_and_another_seed_changes_it(images):
    x_gen, x_real = images(4, seed=1), images(4, seed=2)
    a = EmbeddingLoss(seed=3, **SMALL)(x_gen, x_real)[1]
    b = EmbeddingLoss(seed=3, **SMALL)(x_gen, x_real)[1]
    c = EmbeddingLoss(seed=4, **SMALL)(x_gen, x_real)[1]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_frozen_outside_optimizer_and_generator_checkpoint(images):
    # The worst case: EL registered inside the module whose parameters the optimizer takes and whose
    # state_dict becomes the checkpoint. Neither may pick up an embedder weight.
    gen = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 3, padding=1), nn.Tanh())
    model = nn.ModuleDict({"gen": gen, "el": EmbeddingLoss(**SMALL)})
    el = model["el"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    in_opt = [p for group in opt.param_groups for p in group["params"]]
    assert [id(p) for p in in_opt] == [id(p) for p in gen.parameters()]
    assert set(model.state_dict()) == {f"gen.{k}" for k in gen.state_dict()}
    before = [b.clone() for b in el.buffers()]
    gen_before = [p.clone() for p in gen.parameters()]
    for step in range(3):
        loss = el(gen(images(4, seed=step)), images(4, seed=10 + step))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, el.buffers(), strict=True))  # the embedders did not move
    assert not any(torch.equal(a, b) for a, b in zip(gen_before, gen.parameters(), strict=True))  # the generator did
    assert not any(b.requires_grad or b.grad is not None for b in el.buffers())  # no gradient was kept for them
    model.train()
    assert gen.training and not any(m.training for m in el.modules())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert set(saved) == {f"gen.{k}" for k in gen.state_dict()}


def test_optimising_points_by_el_alone_matches_mean_and_spread():
    g = torch.Generator().manual_seed(0)
    real = (0.4 + 0.25 * torch.randn(256, 1, 8, 8, generator=g)).clamp(-1, 1)
    points = (-0.5 + 0.02 * torch.randn(32, 1, 8, 8, generator=g)).requires_grad_()
    el = EmbeddingLoss(["cnn", "multiscale"], 1, in_channels=1, working_size=8, estimator="biased")
    probe = real[:64]
    with torch.no_grad():
        start = el(points, probe)[0].item()
    opt = torch.optim.Adam([points], lr=0.05)
    for _ in range(150):
        batch = real[torch.randint(0, len(real), (32,), generator=g)]
        loss = el(points, batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = el(points, probe)[0].item()
    assert end < 0.2 * start, (start, end)
    gap_mean = (points.mean() - real.mean()).abs().item()
    assert gap_mean < 0.1 * 0.9, gap_mean  # started 0.9 away
    spread, want = points.std().item(), real.std().item()
    assert abs(spread - want) < 0.5 * abs(0.02 - want), (spread, want)


def test_autocast_bf16_inputs_computed_in_float32(images):
    el = EmbeddingLoss(**SMALL)
    x_gen = images(4, seed=1).bfloat16().requires_grad_()
    x_real = images(4, seed=2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, per = el(x_gen, x_real)
    assert value.dtype == torch.float32 and per.dtype == torch.float32
    want = el(x_gen.detach().float(), x_real.float())[0]
    assert value.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    value.backward()
    assert x_gen.grad.dtype == torch.bfloat16 and bool(torch.isfinite(x_gen.grad.float()).all())


@pytest.mark.parametrize("channels, res_gen, res_real", [(1, 8, 28), (4, 64, 64), (3, 512, 32)])
def test_channels_and_resolutions(channels, res_gen, res_real, images):
    el = EmbeddingLoss(inits_per_arch=1, working_size=16, in_channels=channels)
    value, per = el(images(3, channels, res_gen), images(3, channels, res_real))
    assert per.shape == (4,) and bool(torch.isfinite(per).all())


@pytest.mark.parametrize("norm", ["l2", "standardize"])
def test_feature_norms_give_finite_losses_that_see_a_shift(norm, images):
    el = EmbeddingLoss(feature_norm=norm, **SMALL)
    same = el(images(16, seed=1), images(16, seed=2))[0].item()
    shifted = el(images(16, seed=1, shift=1.0), images(16, seed=2))[0].item()
    assert np.isfinite(same) and shifted > same + 0.01


def test_from_config():
    cfg = ELConfig(weight=0.1, archs=["resnet", "cnn"], inits_per_arch=3, bandwidths=[1.0], seed=9, working_size=16)
    el = EmbeddingLoss.from_config(cfg, in_channels=4)
    assert el.names == ["resnet/0", "resnet/1", "resnet/2", "cnn/0", "cnn/1", "cnn/2"]
    assert el.in_channels == 4 and el.working_size == 16 and el.bandwidths == [1.0] and el.seed == 9
    assert [e.seed for e in el.embedders] == [9, 10, 11, 9, 10, 11]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"archs": ["cnn", "mlp"]}, "archs has \\['mlp'\\]"),
        ({"archs": []}, "archs"),
        ({"inits_per_arch": 0}, "inits_per_arch"),
        ({"bandwidths": [1.0, -1.0]}, "bandwidths"),
        ({"bandwidth_mode": "mean"}, "bandwidth_mode"),
        ({"estimator": "plugin"}, "estimator"),
        ({"feature_norm": "batch"}, "feature_norm"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingLoss(**{**SMALL, **kwargs})


def test_bad_forward_input(images):
    el = EmbeddingLoss(**SMALL)
    ok = images(4)
    with pytest.raises(ValueError, match="x_gen has 1 channels"):
        el(images(4, 1), ok)
    with pytest.raises(ValueError, match="x_real is an empty batch"):
        el(ok, ok[:0])
    with pytest.raises(ValueError, match="x_gen has batch 1; the unbiased estimator"):
        el(ok[:1], ok)
    with pytest.raises(ValueError, match=r"x_real must be images \(B, C, H, W\)"):
        el(ok, ok[0])
    bad = ok.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="x_real contains NaN or inf"):
        el(ok, bad)
    with pytest.raises(NonFiniteInputError, match="x_gen contains NaN or inf"):
        EmbeddingLoss(check_gen_finite=True, **SMALL)(bad, ok)


def test_nonfinite_generator_output_gives_a_nan_loss_for_the_training_guard(images):
    bad = images(4)
    bad[1, 0, 2, 2] = float("inf")
    value, per = EmbeddingLoss(**SMALL)(bad.requires_grad_(), images(4, seed=1))
    assert not torch.isfinite(value) and not bool(torch.isfinite(per).any())
