"""Every distiller, with EL on and off, for one iteration on tiny networks: finite losses, the teacher never
changes, each phase's optimizer moves only its own networks, EL changes only the generator update."""

from __future__ import annotations

import math

import pytest
import torch

from eldistill import dist
from eldistill.checkpoints import save_network
from eldistill.train import Trainer

# Arguments that make every phase of every distiller step in the first iteration.
ARGS = {
    "di": {},
    "sid": {},
    "sida": {"gan_start_images": 0, "generator_freeze_images": 0},
    "sid2a": {"gan_start_images": 0, "generator_freeze_images": 0},
    "dmd": {"gan": True},
    "cm": {},
}


def snapshot(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    nets = {**trainer.nets, **trainer.extra, "teacher": trainer.teacher, "ema": trainer.ema}
    return {name: {k: v.detach().clone() for k, v in net.state_dict().items()} for name, net in nets.items()}


def changed(before, after) -> set[str]:
    return {name for name in before if any(not torch.equal(before[name][k], after[name][k]) for k in before[name])}


def make_trainer(make_cell, tmp_path, tiny_el, tiny_net, distiller: str, el: bool, label_dim: int = 0) -> Trainer:
    extra = {}
    if distiller == "sid2a":
        init = tmp_path / "sid-generator.pt"
        save_network(init, tiny_net(label_dim, seed=1), meta={"kind": "generator", "sigma_init": 2.5})
        extra["init_generator"] = str(init)
    cell = make_cell(
        run=f"{distiller}-{el}",
        label_dim=label_dim,
        distiller=distiller,
        distiller_args=ARGS[distiller],
        el={**tiny_el, "weight": 1.0 if el else 0.0},
        **extra,
    )
    return Trainer(cell, dist.setup(device="cpu"))


def run_checked(trainer: Trainer) -> tuple[dict, dict, dict]:
    """One iteration, phase by phase, checking which networks each phase moved."""
    logs: dict[str, float] = {}
    after_phase = {}
    before = snapshot(trainer)
    for index, phase in enumerate(trainer.distiller.phases(0, 0)):
        start = snapshot(trainer)
        trainer.run_phase(phase, index, logs)
        end = snapshot(trainer)
        expected = set(phase.nets) | ({"target"} if "target" in trainer.extra and phase.name == "generator" else set())
        assert changed(start, end) == expected, f"{phase.name} phase moved {changed(start, end)}"
        after_phase[phase.name] = end
    trainer.update_ema()
    assert "teacher" not in changed(before, snapshot(trainer))
    return logs, before, after_phase


@pytest.mark.parametrize("distiller", ["di", "sid", "sida", "sid2a", "dmd", "cm"])
def test_one_iteration_with_and_without_el(make_cell, tmp_path, tiny_el, net_factory, distiller):
    runs = {}
    for el in (False, True):
        trainer = make_trainer(make_cell, tmp_path, tiny_el, net_factory, distiller, el)
        logs, before, after = run_checked(trainer)
        assert logs and all(math.isfinite(v) for v in logs.values()), logs
        assert ("el" in logs) == el and (f"el/{trainer.el_names[0]}" in logs if el else True)
        runs[el] = (before, after)
    (b0, a0), (b1, a1) = runs[False], runs[True]
    assert not changed(b0, b1)  # same starting weights
    if "fake" in a0:  # the fake-score turn does not see EL
        assert not changed(a0["fake"], a1["fake"])
    assert changed(a0["generator"], a1["generator"]) == {"generator"} | ({"target"} if distiller == "cm" else set())


@pytest.mark.parametrize("distiller", ["sida", "dmd"])
def test_conditional_teacher(make_cell, tmp_path, tiny_el, net_factory, distiller):
    trainer = make_trainer(make_cell, tmp_path, tiny_el, net_factory, distiller, el=True, label_dim=3)
    logs, _, _ = run_checked(trainer)
    assert all(math.isfinite(v) for v in logs.values())


def test_sida_thresholds_in_images(make_cell):
    cell = make_cell(distiller="sida", distiller_args={"gan_start_images": 8, "generator_freeze_images": 4})
    trainer = Trainer(cell, dist.setup(device="cpu"))
    phases = trainer.distiller.phases(0, 0)
    assert [p.step for p in phases] == [True, False]  # the generator is frozen for its first 4 images
    assert [p.step for p in trainer.distiller.phases(4, 1)] == [True, True]
    logs: dict[str, float] = {}
    trainer.run_phase(phases[1], 1, logs)
    assert "loss/generator/adv" not in logs  # no adversarial term before 8 images
    trainer.images_seen = 8
    trainer.run_phase(phases[1], 1, logs)
    assert "loss/generator/adv" in logs


def test_dmd_two_time_scale_ratio(make_cell):
    cell = make_cell(distiller="dmd", distiller_args={"gen_update_ratio": 3})
    distiller = Trainer(cell, dist.setup(device="cpu")).distiller
    names = [[p.name for p in distiller.phases(0, i)] for i in range(4)]
    assert names == [["fake", "generator"], ["fake"], ["fake"], ["fake", "generator"]]


def test_dmd1_regression_pulls_the_generator_to_teacher_pairs(make_cell):
    args = {"regression_weight": 0.25, "regression_pairs": 4, "gen_update_ratio": 1}
    trainer = Trainer(make_cell(distiller="dmd", distiller_args=args), dist.setup(device="cpu"))
    d = trainer.distiller
    assert d.ref_noise.shape == (4, 1, 8, 8) and torch.isfinite(d.ref_images).all()
    logs: dict[str, float] = {}
    trainer.run_phase(d.phases(0, 0)[1], 1, logs)
    # the logged term is the mean squared distance of G(z_ref) to the teacher's ODE image, averaged over the batch
    with torch.no_grad():
        from eldistill.generator import one_step

        per_pair = ((one_step(d.teacher, d.ref_noise, 80.0) - d.ref_images) ** 2).flatten(1).mean(1)
    assert 0 < logs["loss/generator/regression"] <= per_pair.max().item() + 1e-6


def test_train_help_lists_every_distiller(capsys):
    from eldistill.cell import DISTILLERS
    from eldistill.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in DISTILLERS) and "requeue" in out


def test_sid2a_refuses_a_generator_of_another_sigma_init(make_cell, tmp_path, net_factory):
    init = tmp_path / "di-generator.pt"
    save_network(init, net_factory(seed=1), meta={"kind": "generator", "sigma_init": 1.0})
    cell = make_cell(distiller="sid2a", init_generator=str(init))
    with pytest.raises(ValueError, match="init_generator.*sigma_init 1.0"):
        Trainer(cell, dist.setup(device="cpu"))


@pytest.mark.parametrize(
    "distiller, kind, weight_decay",
    [("sid", torch.optim.Adam, 0.0), ("dmd", torch.optim.AdamW, 0.01), ("cm", torch.optim.RAdam, 0.0)],
)
def test_each_distiller_gets_its_references_optimizer(make_cell, distiller, kind, weight_decay):
    # the weight decay is a cell setting (DMD2's 0.01 comes from the recipe in config/paper.yaml)
    cell = make_cell(distiller=distiller, lr=2e-4, glr=3e-4, weight_decay=weight_decay)
    trainer = Trainer(cell, dist.setup(device="cpu"))
    for name, opt in trainer.optimizers.items():
        assert type(opt) is kind
        group = opt.param_groups[0]
        assert group["lr"] == (3e-4 if name == "generator" else 2e-4) and group["weight_decay"] == weight_decay
        assert group["betas"] == (0.0, 0.999) and group["eps"] == 1e-8
        assert {id(p) for p in group["params"]} == {id(p) for p in trainer.nets[name].parameters()}
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(make_cell(distiller="dmd", distiller_args={"optimizer": "sgd"}), dist.setup(device="cpu"))


@pytest.mark.parametrize("distiller, from_data", [("sida", True), ("di", True), ("dmd", False)])
def test_the_sid_family_is_conditioned_on_the_real_batchs_labels(make_cell, monkeypatch, tiny_el, distiller, from_data):
    """SiD, SiDA and DI condition the generator on the labels of the real batch they read (EL on, so that every
    distiller reads one); DMD2 draws its labels uniformly."""
    args = {"gan": True} if distiller == "dmd" else {}
    cell = make_cell(distiller=distiller, label_dim=3, batch=8, distiller_args=args, el=tiny_el)
    trainer = Trainer(cell, dist.setup(device="cpu"))
    seen = []

    def record(phase, x_gen, labels, real, real_labels, noise, images_seen):
        seen.append((labels, real_labels))
        return torch.zeros(labels.shape[0], requires_grad=True), {}

    monkeypatch.setattr(trainer.distiller, "loss", record)
    for index, phase in enumerate(trainer.distiller.phases(0, 0)):
        trainer.run_phase(phase, index, {})
    with_real = [(labels, real_labels) for labels, real_labels in seen if real_labels is not None]
    assert with_real
    for labels, real_labels in with_real:
        assert torch.equal(labels, real_labels) == from_data
