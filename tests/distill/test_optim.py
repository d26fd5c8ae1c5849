"""The recipe mechanisms of the loop: per-network optimizer settings, the learning-rate warm-up, the dropout
override of the teacher's copies and the fixed-rate EMA, each against the value it must produce."""

from __future__ import annotations

import pytest
import torch

from eldistill import dist
from eldistill.cell import CellError
from eldistill.train import Trainer, ema_beta, warmup_factor


def trainer_of(make_cell, **overrides) -> Trainer:
    return Trainer(make_cell(**overrides), dist.setup(device="cpu"))


def group(trainer: Trainer, network: str) -> dict:
    return trainer.optimizers[network].param_groups[0]


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_each_network_gets_its_own_settings(make_cell):
    trainer = trainer_of(
        make_cell,
        lr=2e-4,
        glr=3e-4,
        weight_decay=0.02,
        network_optim={"generator": {"betas": [0.9, 0.999], "lr": 5e-4}, "fake_score": {"weight_decay": 0.0}},
    )
    gen, fake = group(trainer, "generator"), group(trainer, "fake_score")
    assert (gen["lr"], gen["betas"], gen["weight_decay"]) == (5e-4, (0.9, 0.999), 0.02)
    assert (fake["lr"], fake["betas"], fake["weight_decay"]) == (2e-4, (0.0, 0.999), 0.0)


def test_a_network_the_distiller_lacks_is_named(make_cell):
    with pytest.raises(ValueError, match=r"network_optim.gan_head.*sid trains no such network"):
        trainer_of(make_cell, network_optim={"gan_head": {"lr": 1e-3}})


@pytest.mark.parametrize(
    "network_optim, key",
    [
        ({"critic": {}}, "network_optim.critic"),
        ({"generator": {"beta": [0.9, 0.99]}}, "network_optim.generator.beta"),
        ({"generator": {"betas": [0.9]}}, "network_optim.generator.betas"),
        ({"fake_score": {"lr": 0}}, "network_optim.fake_score.lr"),
        ({"fake_score": {"warmup_images": 1.5}}, "network_optim.fake_score.warmup_images"),
    ],
)
def test_bad_network_optim_is_named(make_cell, network_optim, key):
    with pytest.raises(CellError, match=key.replace(".", r"\.")):
        make_cell(network_optim=network_optim)


def test_warmup_is_linear_in_images_from_zero(make_cell):
    assert [warmup_factor(n, 20_000) for n in (0, 280, 10_000, 20_000, 40_000)] == [0.0, 0.014, 0.5, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    # batch 4, warm-up 8 images: the first step has lr 0 (diffusers' constant_with_warmup), the second half the lr
    trainer = trainer_of(make_cell, warmup_images=8, lr=1e-3)
    before = weights(trainer.generator)
    trainer.iteration()
    assert group(trainer, "generator")["lr"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in weights(trainer.generator).items())
    trainer.iteration()
    assert group(trainer, "generator")["lr"] == pytest.approx(0.5e-3)
    assert any(not torch.equal(before[k], v) for k, v in weights(trainer.generator).items())


def dropouts(net: torch.nn.Module) -> set[float]:
    return {m.dropout for m in net.modules() if m is not net and isinstance(getattr(m, "dropout", None), float)}


def test_dropout_override_reaches_the_teacher_and_every_copy(make_cell):
    kept = trainer_of(make_cell)
    assert dropouts(kept.teacher) == dropouts(kept.generator) == {0.0}  # the tiny teacher's own
    trainer = trainer_of(make_cell, run="dropout", dropout=0.3)
    for net in (trainer.teacher, trainer.generator, trainer.nets["fake_score"], trainer.ema):
        assert dropouts(net) == {0.3}
    assert trainer.generator.config["dropout"] == 0.3  # saved generators record it
    # in train mode the override is live: two calls draw different masks
    g, x = trainer.generator.train(), torch.randn(2, 1, 8, 8)
    sigma = torch.full((2,), 2.5)
    assert not torch.equal(g(x, sigma), g(x, sigma))


def test_fixed_ema_rate_replaces_the_half_life(make_cell):
    assert ema_beta(10_000, 512, 500_000, fixed=0.9999) == 0.9999
    assert ema_beta(0, 4, 8) == 0.0  # EDM's ramp-up: at 0 images the EMA is the online generator
    assert ema_beta(4, 4, 0) == 0.0  # half-life 0: no EMA (DMD2)
    trainer = trainer_of(make_cell, ema_beta=0.25)
    ema0 = weights(trainer.ema)
    with torch.no_grad():
        for p in trainer.generator.parameters():
            p.add_(1.0)
    online = weights(trainer.generator)
    assert trainer.update_ema() == 0.25
    for k, v in weights(trainer.ema).items():
        if v.is_floating_point() and k in dict(trainer.generator.named_parameters()):
            torch.testing.assert_close(v, 0.25 * ema0[k] + 0.75 * online[k])
