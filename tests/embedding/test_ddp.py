"""EL under DDP: two gloo processes, the generator wrapped in DDP and EL outside it. Each rank builds the
same ensemble from the seed, and the averaged generator gradient equals the mean of the per-rank
gradients computed here without DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from eldistill.embedding import EmbeddingLoss


def make_generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1), nn.Tanh())


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 1, 8, 8, generator=g), torch.tanh(torch.randn(4, 1, 8, 8, generator=g) + 0.5)


def el_grads(gen: nn.Module, el: EmbeddingLoss, rank: int) -> torch.Tensor:
    z, real = batch(rank)
    gen.zero_grad()
    el(gen(z), real)[0].backward()
    return torch.cat([p.grad.flatten() for p in gen.parameters()])


def worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    try:
        gen = nn.parallel.DistributedDataParallel(make_generator())
        el = EmbeddingLoss(["cnn", "attention"], 1, in_channels=1, working_size=8)
        result = (el_grads(gen, el, rank), torch.cat([b.flatten() for b in el.buffers()]))
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_el_outside_ddp_gives_the_averaged_gradient(tmp_path):
    # fork: under pytest's importlib mode a spawned child could not import this test module.
    mp.start_processes(worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    (g0, w0), (g1, w1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(w0, w1)  # the same ensemble on every rank, from the seed alone
    el = EmbeddingLoss(["cnn", "attention"], 1, in_channels=1, working_size=8)
    want = (el_grads(make_generator(), el, 0) + el_grads(make_generator(), el, 1)) / 2
    assert torch.allclose(g0, want, rtol=1e-5, atol=1e-7) and torch.allclose(g1, want, rtol=1e-5, atol=1e-7)
