"""The global-batch Embedding Loss (eldistill.global_el): its value and gradient, split into rounds and into
two gloo processes, equal a float64 EL computed in one go on the concatenated batch; the loop's second
pass sees exactly the images of the first, dropout included."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from eldistill import train as train_module
from eldistill.cell import Cell
from eldistill.checkpoints import save_network
from eldistill.embedding import EmbeddingLoss
from eldistill.global_el import CachedEL, cache_gradients, replayed_rng
from eldistill.nets import build_network, preset
from eldistill.train import Trainer

ROUNDS, ROUND = 4, 3  # rounds of 3 images: a per-round median bandwidth would differ from the global one
SETTINGS = {
    "median, unbiased": dict(bandwidth_mode="median", estimator="unbiased"),
    "fixed, biased": dict(bandwidth_mode="fixed", estimator="biased", bandwidths=[0.3, 1.0]),
    "median, standardized features": dict(feature_norm="standardize"),
}


def make_el(**kw) -> EmbeddingLoss:
    return EmbeddingLoss(["cnn", "attention"], 2, in_channels=1, working_size=8, seed=3, **kw)


def batches(n: int = ROUNDS * ROUND) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.tanh(torch.randn(n, 1, 8, 8, generator=g) + 0.4), torch.tanh(torch.randn(n, 1, 8, 8, generator=g))


def reference(el: EmbeddingLoss, x_gen: torch.Tensor, x_real: torch.Tensor):
    """EL of the whole batch in one call, in float64: value, per-embedder values, gradient w.r.t. x_gen."""
    x = x_gen.double().requires_grad_(True)
    value, per = el.double()(x, x_real.double())
    value.backward()
    el.float()
    return value.item(), per.detach(), x.grad


def global_gradients(el, x_gen, x_real, rank=0, world=1):
    """This rank's rounds through both passes: (value, per-embedder values, gradient w.r.t. its images).
    As in the loop, the last round comes to pass 1 with its graph and pass 2 reuses its features."""
    gen_rounds = [x.clone().requires_grad_(True) for x in x_gen.split(ROUND)]
    pass1 = [x if r == len(gen_rounds) - 1 else x.detach() for r, x in enumerate(gen_rounds)]
    cached = cache_gradients(el, zip(pass1, x_real.split(ROUND)), rank, world)
    for r, x in enumerate(gen_rounds):
        cached.surrogate(r, None if r == len(gen_rounds) - 1 else x).backward()
    return cached.value.item(), cached.per_embedder, torch.cat([x.grad for x in gen_rounds])


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_rounds_give_the_value_and_gradient_of_the_whole_batch_in_float64(settings):
    el = make_el(**settings)
    x_gen, x_real = batches()
    value, per, grad = global_gradients(el, x_gen, x_real)
    want_value, want_per, want_grad = reference(el, x_gen, x_real)
    assert value == pytest.approx(want_value, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(per.double(), want_per, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-3, atol=1e-4 * want_grad.abs().max().item())
    # Not what the per-round estimate would give: the test sees the difference.
    per_round = torch.stack([el(g, r)[0] for g, r in zip(x_gen.split(ROUND), x_real.split(ROUND))]).mean()
    assert abs(per_round.item() - want_value) > 1e-3


def _gloo_rank(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        el = make_el()
        x_gen, x_real = batches()
        half = slice(rank * len(x_gen) // 2, (rank + 1) * len(x_gen) // 2)  # rank r holds rounds 2r, 2r+1
        value, per, grad = global_gradients(el, x_gen[half], x_real[half], rank, 2)
        weights = torch.cat([b.flatten() for b in el.buffers()])
        torch.save((value, per, grad, weights), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def test_two_gloo_processes_give_the_value_and_gradient_of_the_whole_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: under pytest's importlib mode a spawned child could not import this test module.
    mp.start_processes(_gloo_rank, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    (v0, p0, g0, w0), (v1, p1, g1, w1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(w0, w1)  # every rank built the same ensemble from the seed
    assert v0 == v1 and torch.equal(p0, p1)  # and computed the same global value
    want_value, want_per, want_grad = reference(make_el(), *batches())
    assert v0 == pytest.approx(want_value, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(p0.double(), want_per, rtol=1e-4, atol=1e-6)
    # Each rank's gradient is scaled by the world size: the loop's average over processes restores it.
    grad = torch.cat([g0, g1]).double() / 2
    torch.testing.assert_close(grad, want_grad, rtol=1e-3, atol=1e-4 * want_grad.abs().max().item())


def test_replayed_rng_repeats_dropout_and_leaves_the_outer_stream_alone():
    x = torch.ones(1000)
    torch.manual_seed(0)
    outer = torch.rand(3)
    torch.manual_seed(0)
    with replayed_rng(5, torch.device("cpu")):
        a = torch.nn.functional.dropout(x, 0.5)
    with replayed_rng(5, torch.device("cpu")):
        b = torch.nn.functional.dropout(x, 0.5)
    with replayed_rng(6, torch.device("cpu")):
        c = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.rand(3), outer)


def test_the_loop_replays_each_rounds_images_dropout_included(tmp_path, monkeypatch, make_files):
    torch.manual_seed(0)
    net = build_network(preset("mini", img_resolution=8, img_channels=1, model_channels=8, dropout=0.5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    teacher = save_network(tmp_path / "dropout-teacher.pt", net, meta={"kind": "teacher"})
    _, data = make_files()
    cell = Cell.from_dict(
        dict(
            distiller="sid",
            teacher=str(teacher),
            dataset=str(data),
            batch=12,
            batch_gpu=4,
            total_images=12,
            el={"weight": 1.0, "archs": ["cnn"], "inits_per_arch": 2, "working_size": 8},
            run_dir=str(tmp_path / "run"),
            state_dir=str(tmp_path / "state"),
        )
    )
    first, second = [], {}

    def recording_cache(el, rounds, rank, world):
        rounds = list(rounds)
        first.extend(x.detach().clone() for x, _ in rounds)
        return cache_gradients(el, rounds, rank, world)

    real_surrogate = CachedEL.surrogate

    def recording_surrogate(self, r, x_gen):
        second[r] = x_gen.detach().clone() if x_gen is not None else None
        return real_surrogate(self, r, x_gen)

    monkeypatch.setattr(train_module, "cache_gradients", recording_cache)
    monkeypatch.setattr(CachedEL, "surrogate", recording_surrogate)
    trainer = Trainer(cell, train_module.dist.setup(device="cpu"))
    trainer.iteration()
    # Rounds 0 and 1 are generated again in pass 2; round 2, the last, is reused with its graph.
    assert len(first) == 3 and sorted(second) == [0, 1, 2] and second[2] is None
    for r in (0, 1):
        assert torch.equal(first[r], second[r])
    assert not torch.equal(first[0], first[1])
    # Dropout is really on: the same inputs in eval mode give other images.
    trainer.generator.eval()
    with torch.no_grad():
        z = torch.randn(4, 1, 8, 8)
        sigma = torch.full((4,), 2.5)
        with replayed_rng(1, torch.device("cpu")):
            a = trainer.generator(z, sigma)
        trainer.generator.train()
        with replayed_rng(1, torch.device("cpu")):
            b = trainer.generator(z, sigma)
    assert not torch.allclose(a, b)
