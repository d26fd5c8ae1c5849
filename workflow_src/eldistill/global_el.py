"""The Embedding Loss over the global batch, whatever the split into processes and accumulation rounds.

EL with the median bandwidth is not a mean of per-sample terms: its value, and even its expected value,
depend on how many samples one estimate sees. So the loop computes EL once per iteration on the whole
global batch (every rank's every round), exactly as one process holding that batch would, by gradient
caching:

  pass 1 (no graph): each round's images are generated and embedded; the features of all rounds and all
    ranks are gathered (K x batch x D numbers: small); every rank computes the same global MMD^2 per
    embedder, bandwidths and feature normalisation included, and its gradient with respect to every
    generated feature (`cache_gradients`);
  pass 2 (the usual rounds, with graph): each round's images are embedded again and the cached feature
    gradients are pushed back through them by the surrogate sum(features * cached_gradient)
    (`CachedEL.surrogate`), so the generator receives the exact gradient of the global-batch EL.
    The loop makes its last round of pass 1 with graph and reuses it in pass 2, so the extra cost is one
    generator and one embedder forward (no backward) for each of the other rounds: none with one round.

Pass 2 must see the images of pass 1: the loop draws the round's inputs from the same (seed, iteration,
phase) draws, and runs the generator inside `replayed_rng(round_seed)` so that dropout repeats too.
Knows nothing of distillers: it receives images and hands back a value and surrogate losses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as tdist

from eldistill.embedding import EmbeddingLoss


@contextmanager
def replayed_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on the global RNG (the CPU's and this device's CUDA generator) seeded from `seed`, then
    restore the outer state: the same seed replays the same dropout masks, and the rest of the program
    draws as if the block had not run."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def gather_rows(local: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' (n, d) tensors stacked in rank order, (world_size * n, d), on every rank."""
    if world_size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world_size)]
    tdist.all_gather(parts, local.contiguous())
    return torch.cat(parts)


class CachedEL:
    """The global-batch EL of one iteration and its gradient with respect to this rank's generated
    features, split per accumulation round."""

    def __init__(self, el: EmbeddingLoss, value, per_embedder, grads: list[list], kept: dict[int, list]):
        self.el, self.value, self.per_embedder = el, value, per_embedder
        self._grads = grads  # [round][family] -> (inits_per_arch, batch_gpu, D_family)
        self._kept = kept  # round -> its features with graph, for rounds whose images came with a graph

    def surrogate(self, r: int, x_gen: torch.Tensor | None) -> torch.Tensor:
        """A scalar whose gradient with respect to round r's images (with graph) is that of the global EL,
        multiplied by the world size so that the loop's average over processes yields the full gradient.
        x_gen None: round r's images came to pass 1 with their graph, whose features are reused (once)."""
        features = self._kept.pop(r) if x_gen is None else self.el.features(x_gen, "x_gen")
        return sum((f * g).sum() for f, g in zip(features, self._grads[r], strict=True))


def _rows(per_round: list[list[torch.Tensor]]) -> torch.Tensor:
    """Rounds of per-family (k, b, D) features -> one (sum of b, sum of k*D) matrix: a row per image."""
    families = zip(*per_round, strict=True)
    return torch.cat([torch.cat(f, 1).transpose(0, 1).flatten(1) for f in families], 1)


def cache_gradients(
    el: EmbeddingLoss, rounds: Iterable[tuple[torch.Tensor, torch.Tensor]], rank: int, world_size: int
) -> CachedEL:
    """Pass 1. `rounds` yields this rank's (generated, real) images of each accumulation round, in the
    order of their rows in the global batch. Generated images need no graph; those that have one keep
    their features' graph for `surrogate(r, None)`. Every rank must call this with the same number of
    rounds and round size (a collective)."""
    gen, real, sizes, kept = [], [], [], {}
    for r, (x_gen, x_real) in enumerate(rounds):
        if x_gen.shape[0] != x_real.shape[0]:
            raise ValueError(f"a round has {x_gen.shape[0]} generated but {x_real.shape[0]} real images")
        with torch.set_grad_enabled(x_gen.requires_grad):
            features = el.features(x_gen, "x_gen")
        if x_gen.requires_grad:
            kept[r] = features
        gen.append([f.detach() for f in features])
        with torch.no_grad():
            real.append(el.features(x_real, "x_real", finite=True))
        sizes.append(x_gen.shape[0])
    shapes = [f.shape for f in gen[0]]  # per family (k, b, D)
    widths = [k * d for k, _, d in shapes]
    local_n = sum(sizes)
    # One collective for everything: this rank's rows [generated; real], each row all families' features.
    rows = gather_rows(torch.cat([_rows(gen), _rows(real)]), world_size).reshape(world_size, 2, local_n, -1)
    all_gen, all_real = rows[:, 0].flatten(0, 1), rows[:, 1].flatten(0, 1)
    values, grads = [], []
    mine = slice(rank * local_n, (rank + 1) * local_n)
    total = sum(k for k, _, _ in shapes)
    for (k, _, d), f_gen, f_real in zip(shapes, all_gen.split(widths, 1), all_real.split(widths, 1), strict=True):
        f_gen = f_gen.reshape(-1, k, d).transpose(0, 1).detach().requires_grad_(True)  # (k, global batch, D)
        f_real = f_real.reshape(-1, k, d).transpose(0, 1)
        with torch.enable_grad():
            value = el.features_mmd2(f_gen, f_real)  # (k,)
            (grad,) = torch.autograd.grad(value.sum(), f_gen)  # one family at a time: one graph in memory
        values.append(value.detach())
        grads.append(grad[:, mine] * (world_size / total))  # EL is the mean over all embedders
    per_round = [list(t) for t in zip(*(g.split(sizes, 1) for g in grads), strict=True)]
    per_embedder = torch.cat(values)
    return CachedEL(el, per_embedder.mean(), per_embedder, per_round, kept)
