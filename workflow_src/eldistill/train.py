"""The one training loop (`eldistill train --config CELL.json`): any distiller, optionally plus the Embedding
Loss, on one process or many (torchrun / SLURM; gloo on CPUs, NCCL on GPUs).

How one iteration runs: for each phase the distiller names (fake-score turn, generator turn), every process
computes its share of the global batch in rounds of `batch_gpu` samples, gradients are summed over rounds and
averaged over processes, then that phase's optimizers step. All randomness of a phase (noise, labels, sigmas,
real-image indices) is drawn for the whole global batch from a seed of (cell.seed, iteration, phase) and
sliced per round, so the update is the same however the batch is split, and a resumed run repeats exactly
what an uninterrupted one would have done; the generator's own randomness (dropout) is seeded per round
from the same seed and the round's first row. The Embedding Loss is added here, to the generator turn of
every distiller: loss += lambda_EL * EL(x_gen, x_real). With `el.scope: global` (the default) EL is the MMD^2
of the whole global batch, computed by gradient caching (eldistill.global_el), so its value and gradient are
those of one process holding the batch; `el.scope: round` estimates it on each round's samples and
averages over rounds (the objective then depends on batch_gpu).
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from eldistill import dist
from eldistill.cell import DISTILLERS, EMA_RAMPUP, Cell
from eldistill.distillers import Phase, SampleNoise, build_distiller
from eldistill.distillers.base import set_dropout
from eldistill.generator import one_step
from eldistill.global_el import CachedEL, cache_gradients, replayed_rng
from eldistill.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl, remove_orphaned_temps
from eldistill.lock import LockedError, WriterLock
from eldistill.nets.edm2 import defer_forced_normalization, force_normalize_
from eldistill.statefile import load_state, save_state
from eldistill.stopsignal import StopFlag
from eldistill.teacher import ema_beta as edm_ema_beta

EXIT_REQUEUE = 3  # stopped by SIGTERM/SIGUSR1 after saving: requeue me
STATE_FILE = "training-state.pt"
# The log of every tick: run_dir's copy is a Snakemake output, which Snakemake deletes before it reruns an
# incomplete or failed job; the copy in state_dir survives that, and a resumed run restores run_dir's from it.
METRICS_FILE = "metrics.jsonl"
STATE_FORMAT = "eldistill-train-state-v1"
STATE_SAVE_SECONDS = 1800  # besides snapshots, the full state is saved at least this often (wall clock)
PRELOAD_BYTES = 1 << 30  # datasets smaller than this are decoded once into memory


class StopRequested(Exception):
    """A SIGTERM/SIGUSR1 arrived; the step finished and the state is saved."""


class NonFiniteError(RuntimeError):
    """Too many steps had non-finite losses or gradients."""


# --- randomness that does not depend on how the batch is split --------------------------------------------
class PhaseRandom:
    """The draws of one phase of one iteration, each made once for the whole global batch."""

    def __init__(self, seed: int, batch: int, device: torch.device):
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.batch, self.device, self.draws = batch, device, []

    def draw(self, k: int, kind: str, shape: tuple[int, ...], low: int = 0, high: int = 0) -> torch.Tensor:
        key = (kind, shape, low, high)
        if k == len(self.draws):
            size = (self.batch, *shape)
            if kind == "randn":
                t = torch.randn(size, generator=self.gen, device=self.device)
            elif kind == "rand":
                t = torch.rand(size, generator=self.gen, device=self.device)
            else:
                t = torch.randint(low, high, size, generator=self.gen, device=self.device)
            self.draws.append((key, t))
        if self.draws[k][0] != key:
            raise RuntimeError(f"draw {k} of a phase changed from {self.draws[k][0]} to {key} between rounds")
        return self.draws[k][1]


class RoundNoise(SampleNoise):
    """The rows [start, stop) of the phase's global draws, in call order."""

    def __init__(self, phase: PhaseRandom, start: int, stop: int):
        self.phase, self.start, self.stop, self.k = phase, start, stop, 0

    def _take(self, kind, shape, low=0, high=0):
        t = self.phase.draw(self.k, kind, tuple(int(s) for s in shape), low, high)
        self.k += 1
        return t[self.start : self.stop]

    def randn(self, *shape):
        return self._take("randn", shape)

    def rand(self, *shape):
        return self._take("rand", shape)

    def randint(self, low, high, *shape):
        return self._take("randint", shape, int(low), int(high))


class Round(NamedTuple):
    """One accumulation round: its noise (for the distiller's further draws), labels, real batch and images."""

    noise: RoundNoise
    labels: torch.Tensor | None
    real: torch.Tensor | None
    real_labels: torch.Tensor | None
    x_gen: torch.Tensor | None


def phase_seed(seed: int, iteration: int, phase_index: int) -> int:
    return (seed * 1_000_003 + iteration * 16 + phase_index) % (1 << 63)


def round_seed(phase_seed_value: int, start: int) -> int:
    """Seed of the generator's dropout in the round whose first row in the global batch is `start`: the two
    passes of the global-batch EL replay it, and a resumed run repeats it."""
    return (phase_seed_value * 65_537 + start + 1) % (1 << 63)


# --- small helpers -----------------------------------------------------------------------------------------
def real_batch(ds, noise: SampleNoise, label_dim: int, device: torch.device, index: torch.Tensor | None = None):
    """A real batch in the teacher's space (pixels in [-1, 1], or EDM2 latents sampled from their stored mean
    and std) and its one-hot labels (None for an unconditional teacher). Which rows (unless `index` gives them),
    and the latent posterior noise, are this round's rows of the phase's global draws."""
    index = (noise.randint(0, len(ds)) if index is None else index).cpu()
    posterior = noise.randn(*ds.noise_shape) if ds.noise_shape is not None else None
    images = ds.images(index, posterior).to(device=device, dtype=torch.float32)
    if not label_dim:
        return images, None
    labels = ds.labels[index].to(device) if ds.labels is not None else torch.zeros(len(index), dtype=torch.long)
    return images, torch.nn.functional.one_hot(labels.to(device), label_dim).float()


def ema_beta(
    images_seen: int, batch: int, halflife_images: int, fixed: float | None = None, rampup: float | None = EMA_RAMPUP
) -> float:
    """EDM's EMA decay per iteration: half-life in images, ramped up to `rampup` * images seen (None: no ramp-up;
    a half-life of 0 makes the EMA the online generator, as DMD2 evaluates it); or a fixed decay (consistency
    models)."""
    if fixed is not None:
        return float(fixed)
    return edm_ema_beta(images_seen, batch, halflife_images, rampup)


def warmup_factor(images_seen: int, warmup_images: int) -> float:
    """Linear learning-rate warm-up from 0 (diffusers' constant_with_warmup, counted in images)."""
    return 1.0 if warmup_images <= 0 else min(1.0, images_seen / warmup_images)


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}


def build_optimizer(
    params, lr: float, betas, eps: float, weight_decay: float, kind: str = "adam"
) -> torch.optim.Optimizer:
    """The references' optimizers: Adam (EDM, SiD, DI), AdamW (DMD2), RAdam (consistency models)."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"distiller_args: 'optimizer' is {kind!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[kind](params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def memory_mb(device: torch.device) -> dict[str, float]:
    out = {"mem/max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["mem/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["mem/cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


# --- the loop ----------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cell: Cell, info: dist.DistInfo):
        from eldistill.checkpoints import load_network, require_kind
        from eldistill.data import open_dataset

        self.cell, self.info, self.device = cell, info, info.device
        self.world = info.world_size
        self.batch_local = cell.batch // self.world
        self.batch_gpu = cell.batch_gpu or self.batch_local
        self.rounds = self.batch_local // self.batch_gpu

        teacher, teacher_meta = load_network(cell.teacher)
        require_kind(cell.teacher, teacher_meta, "teacher", "teacher")
        teacher = teacher.to(self.device)  # the distiller's copies are made on the device
        self.encoder = teacher_meta.get("encoder")  # an EDM2 teacher's latent scale/bias (None for pixel teachers)
        init = None
        if cell.init_generator:
            init, init_meta = load_network(cell.init_generator)
            require_kind(cell.init_generator, init_meta, "generator", "init_generator")
            init = init.to(self.device)
        if cell.dropout is not None:  # the references build teacher and copies with the run's --dropout
            for net in (teacher, init):
                if net is not None:
                    set_dropout(net, cell.dropout)
        # New networks (DMD2's GAN head) start from the cell's seed, the same on every process (DDP averages
        # gradients of identical copies); dropout masks then draw from a per-process stream.
        torch.manual_seed(cell.seed)
        self.distiller = build_distiller(
            cell.distiller, teacher, cell.distiller_args, init, cell.augment_p, cell.lpips, cell.lpips_resize
        )
        torch.manual_seed(cell.seed * 1_000_003 + 1 + info.rank)
        if init is not None and init_meta.get("sigma_init", self.distiller.sigma_init) != self.distiller.sigma_init:
            raise ValueError(
                f"init_generator: {cell.init_generator} was trained at sigma_init {init_meta['sigma_init']}, "
                f"but {cell.distiller} uses {self.distiller.sigma_init} (set distiller_args.sigma_init)"
            )
        self.teacher = teacher
        self.nets = {name: net.to(self.device) for name, net in self.distiller.nets.items()}
        self.extra = {name: m.to(self.device) for name, m in self.distiller.extra_modules.items()}
        self.generator = self.nets["generator"]
        # EDM2 networks: forced weight normalisation once per phase (run_phase), not inside every forward
        self.force_normalized = {name for name, net in self.nets.items() if defer_forced_normalization(net)}
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
        self.label_dim = int(teacher.label_dim)

        if cell.el.enabled and cell.el.estimator == "unbiased":
            # The unbiased estimator needs two samples per estimate: per round, or in the global batch.
            key, size = ("batch_gpu", self.batch_gpu) if cell.el.scope == "round" else ("batch", cell.batch)
            if size < 2:
                raise ValueError(f"cell {cell.cell_id}: '{key}' = {size}; the unbiased EL estimator needs >= 2")
        self.ds = open_dataset(cell.dataset, encoder=self.encoder)
        if (self.ds.channels, self.ds.resolution, self.ds.resolution) != self.shape:
            raise ValueError(
                f"dataset: {cell.dataset} holds {self.ds.channels}x{self.ds.resolution}x{self.ds.resolution} images; "
                f"the teacher {cell.teacher} makes {'x'.join(map(str, self.shape))}"
            )
        if self.label_dim and not self.ds.label_dim:
            raise ValueError(f"dataset: {cell.dataset} has no labels but the teacher {cell.teacher} is conditional")
        if self.ds.label_dim > max(self.label_dim, 1) and self.label_dim:
            raise ValueError(f"dataset: {cell.dataset} has {self.ds.label_dim} classes, the teacher {self.label_dim}")
        needs_real = cell.el.enabled or any(
            p.needs_real for p in self.distiller.phases(0, 0) + self.distiller.phases(cell.total_images, 0)
        )
        if needs_real and len(self.ds) * self.ds.item_bytes < PRELOAD_BYTES:
            self.ds = open_dataset(cell.dataset, preload=True, encoder=self.encoder)
        self.ds_labels = self.ds.labels  # (N,) class indices or None; read once (the property copies)

        self.el = self.el_codec = None
        if cell.el.enabled:
            from eldistill.embedding import EmbeddingLoss

            el_channels = self.shape[0]
            if cell.el.space == "pixels" and self.shape[0] not in (1, 3):
                from eldistill.nets.latent import LatentCodec

                # EL on decoded pixels: the VAE decoder runs (with gradients to x_gen) before the embedders
                self.el_codec = LatentCodec.from_pretrained(cell.el.vae, encoder_info=self.encoder).to(self.device)
                el_channels = 3
            self.el = EmbeddingLoss.from_config(cell.el, in_channels=el_channels).to(self.device)
            self.el_names = list(self.el.names)

        cuda = self.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cell.precision) if cuda else None
        if cell.precision != "fp32" and not cuda and info.is_main:
            print(f"train: precision {cell.precision} applies on CUDA only; running fp32 on the CPU", file=sys.stderr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        unknown = sorted(set(cell.network_optim) - set(self.nets))
        if unknown:
            raise ValueError(
                f"cell {cell.cell_id}: 'network_optim.{unknown[0]}': {cell.distiller} trains no such network "
                f"(it trains {', '.join(self.nets)})"
            )
        eps = 1e-6 if cell.precision == "fp16" else 1e-8  # the references' Adam eps
        kind = self.distiller.args.get("optimizer", "adam")
        self.optim_settings = {name: cell.optim_settings(name) for name in self.nets}
        self.optimizers = {}
        for name, net in self.nets.items():
            s = self.optim_settings[name]
            self.optimizers[name] = build_optimizer(net.parameters(), s["lr"], s["betas"], eps, s["weight_decay"], kind)
        self.images_seen = self.iterations = self.nonfinite = 0
        self.state_dir = Path(cell.state_dir)
        self.run_dir = Path(cell.run_dir)

    # --- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "cell_id": self.cell.cell_id,
            "images_seen": self.images_seen,
            "iterations": self.iterations,
            "nonfinite": self.nonfinite,
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "extra": {k: v.state_dict() for k, v in self.extra.items()},
            "ema": self.ema.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def save_state(self) -> None:
        if self.info.is_main:
            save_state(self.state_dict(), self.state_dir / STATE_FILE)  # digest, verified, previous state kept
        dist.barrier(self.world)

    def try_resume(self) -> bool:
        path = self.state_dir / STATE_FILE
        loaded = load_state(path, STATE_FORMAT)  # the newest intact state (a damaged one is reported, set aside)
        if loaded is None:
            return False
        state, path = loaded
        if state["cell_id"] != self.cell.cell_id:
            raise ValueError(f"{path}: holds the state of cell {state['cell_id']}, not {self.cell.cell_id}")
        for k, v in self.nets.items():
            v.load_state_dict(state["nets"][k])
        for k, v in self.extra.items():
            v.load_state_dict(state["extra"][k])
        self.ema.load_state_dict(state["ema"])
        for k, v in self.optimizers.items():
            v.load_state_dict(state["optimizers"][k])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        self.images_seen, self.iterations, self.nonfinite = (
            state["images_seen"],
            state["iterations"],
            state["nonfinite"],
        )
        return True

    def restore_metrics(self, resumed: bool) -> None:
        """Main process. Resumed: the log up to the state we resume from (later lines will be written again), from
        state_dir's copy (run_dir's, for a state saved before that copy existed), written to both. Not resumed:
        a stale log of a run whose state was deleted is removed."""
        kept, copy = self.state_dir / METRICS_FILE, self.run_dir / METRICS_FILE
        if not resumed:
            kept.unlink(missing_ok=True)
            copy.unlink(missing_ok=True)
            return
        source = kept if kept.exists() else copy
        records = read_jsonl(source) if source.exists() else []
        text = "".join(_jsonl_line(r) for r in records if r.get("images_seen", 0) <= self.images_seen).encode()
        atomic_write_bytes(text, kept)
        atomic_write_bytes(text, copy)

    def log_metrics(self, record: dict) -> None:
        for folder in (self.state_dir, self.run_dir):
            append_jsonl(record, folder / METRICS_FILE)

    def generator_meta(self) -> dict:
        return {
            "kind": "generator",
            "sigma_init": self.distiller.sigma_init,
            "images_seen": self.images_seen,
            "iterations": self.iterations,
            "cell_id": self.cell.cell_id,
            "distiller": self.cell.distiller,
            "distiller_args": self.distiller.args,
            **({"encoder": self.encoder} if self.encoder else {}),  # evaluate decodes latents with it
        }

    def snapshot_path(self, images: int) -> Path:
        return self.state_dir / "snapshots" / f"generator-{images:010d}.pt"

    def save_snapshot(self) -> None:
        from eldistill.checkpoints import save_network

        if self.info.is_main:
            save_network(self.snapshot_path(self.images_seen), self.ema, meta=self.generator_meta())  # verified

    def check_files(self) -> None:
        """At start (main process, under the lock): delete the temporary files of interrupted saves; check every
        snapshot, rewriting a damaged one from the state when the state is at its images, else moving it aside
        (`.damaged`), so that evaluation never meets a truncated snapshot."""
        from eldistill.checkpoints import read_network_file

        snapshots = self.state_dir / "snapshots"
        removed = remove_orphaned_temps(self.state_dir) + remove_orphaned_temps(snapshots)
        removed += remove_orphaned_temps(self.run_dir, ["config.json", METRICS_FILE, "generator.pt"])
        if removed:
            print(f"train: removed {len(removed)} temporary file(s) of interrupted saves", file=sys.stderr)
        for path in sorted(snapshots.glob("generator-*.pt")):
            try:
                read_network_file(path)
                continue
            except ValueError as e:
                fault = str(e)
            if path == self.snapshot_path(self.images_seen):
                self.save_snapshot()
                print(f"train: {fault}; rewrote it from the training state", file=sys.stderr)
            else:
                path.replace(path.with_name(path.name + ".damaged"))
                print(f"train: {fault}; moved it to {path.name}.damaged (no state to rewrite it from)", file=sys.stderr)

    # --- one iteration -----------------------------------------------------------------------------------
    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, self.label_dim).float()

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _round(self, prand: PhaseRandom, seed: int, r: int, with_real: bool, generate: bool, grad: bool) -> Round:
        """Round r's inputs from the phase's global draws, in a fixed order (noise, labels, real rows), and
        its generated images (dropout seeded by the round): called twice, it gives the same round."""
        start = self.info.rank * self.batch_local + r * self.batch_gpu
        noise = RoundNoise(prand, start, start + self.batch_gpu)
        z = noise.randn(*self.shape)
        labels = data_index = None
        if self.label_dim and self.distiller.labels_from_data and self.ds_labels is not None:
            # the reference loops condition the generator on the labels of the real batch they read
            data_index = noise.randint(0, len(self.ds))
            labels = self.one_hot(self.ds_labels[data_index.cpu()].to(self.device))
        elif self.label_dim:
            labels = self.one_hot(noise.randint(0, self.label_dim))
        real = real_labels = x_gen = None
        if with_real:
            real, real_labels = real_batch(self.ds, noise, self.label_dim, self.device, data_index)
        if generate:
            with torch.set_grad_enabled(grad), self.autocast(), replayed_rng(round_seed(seed, start), self.device):
                x_gen = one_step(self.generator, z, self.distiller.sigma_init, labels)
        return Round(noise, labels, real, real_labels, x_gen)

    def _global_el_pass(self, prand: PhaseRandom, seed: int) -> tuple[CachedEL, Round]:
        """Pass 1 of the global-batch EL: every round's images without graph -> cached feature gradients.
        The last round is made with its graph and handed back, so pass 2 reuses it instead of generating and
        embedding it again (with one round per process, the global EL costs no extra forward at all)."""
        last: list[Round] = []

        def rounds():
            for r in range(self.rounds):
                held = r == self.rounds - 1
                b = self._round(prand, seed, r, with_real=True, generate=True, grad=held)
                with torch.set_grad_enabled(held), self.autocast():
                    x_el, real_el = self.el_inputs(b.x_gen, b.real)
                if held:
                    last.append(b)
                yield x_el, real_el

        return cache_gradients(self.el, rounds(), self.info.rank, self.world), last[0]

    def run_phase(self, phase: Phase, index: int, logs: dict[str, float]) -> None:
        cell, gen_phase = self.cell, phase.name == "generator"
        for name, net in self.nets.items():
            # As in SiD's loop: the networks this phase trains run in train mode (dropout), the others in eval.
            net.train(name in phase.nets).requires_grad_(name in phase.nets)
        params = [p for name in phase.nets for p in self.nets[name].parameters()]
        for name in phase.nets:
            self.optimizers[name].zero_grad(set_to_none=True)
            if name in self.force_normalized:
                force_normalize_(self.nets[name])
        use_el = gen_phase and self.el is not None
        seed = phase_seed(cell.seed, self.iterations, index)
        prand = PhaseRandom(seed, cell.batch, self.device)
        cached = held = None
        order = list(range(self.rounds))
        if use_el and cell.el.scope == "global":
            cached, held = self._global_el_pass(prand, seed)
            order = order[-1:] + order[:-1]  # the held round first: its graph is freed before the next is built
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        for r in order:
            reuse = held is not None and r == self.rounds - 1
            b = (
                held
                if reuse
                else self._round(
                    prand, seed, r, phase.needs_real or use_el, phase.needs_generated or use_el, grad=gen_phase
                )
            )
            held = None if reuse else held
            n = self.batch_gpu
            with self.autocast():
                per_sample, terms = self.distiller.loss(
                    phase.name, b.x_gen, b.labels, b.real, b.real_labels, b.noise, self.images_seen
                )
                loss = per_sample.sum() / self.batch_local
                if cached is not None:
                    x_el = None if reuse else self.el_inputs(b.x_gen, None)[0]  # None: pass 1 kept its features
                    loss = loss + cell.el.weight * cached.surrogate(r, x_el)
                elif use_el:
                    el_value, per_embedder = self.el(*self.el_inputs(b.x_gen, b.real))
                    loss = loss + cell.el.weight * el_value * (n / self.batch_local)
                    sums["el"] += el_value.detach() * n
                    for name, v in zip(self.el_names, per_embedder.detach()):
                        sums[f"el/{name}"] += v * n
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            sums[f"loss/{phase.name}"] += per_sample.detach().float().sum()
            for key, v in terms.items():
                sums[f"loss/{phase.name}/{key}"] += v.detach().float().sum()
        self._record(sums, logs)
        if cached is not None:  # the same global value on every rank: nothing to average
            logs["el"] = float(cached.value)
            for name, v in zip(self.el_names, cached.per_embedder.tolist()):
                logs[f"el/{name}"] = v
        self._step(phase, params, logs)

    def el_inputs(self, x_gen: torch.Tensor, real: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What EL compares: the teacher's space, or decoded pixels in [-1, 1] when el.space is "pixels"."""
        if self.el_codec is None:
            return x_gen, real
        if real is not None:
            with torch.no_grad():
                real = self.el_codec.decode(real)
        return self.el_codec.decode(x_gen), real

    def _record(self, sums: dict[str, torch.Tensor], logs: dict[str, float]) -> None:
        """Means over the global batch (summed over processes) into the iteration's log."""
        keys = sorted(sums)
        values = dist.sum_over_processes(torch.stack([sums[k].float() for k in keys]), self.world) / self.cell.batch
        for k, v in zip(keys, values.tolist()):
            logs[k] = v

    def _step(self, phase: Phase, params: list[torch.nn.Parameter], logs: dict[str, float]) -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dist.average_gradients(params, self.world)
        if self.scaler:
            for name in phase.nets:
                self.scaler.unscale_(self.optimizers[name])
        # A NaN or inf anywhere in a network's gradient makes its norm non-finite: one check per network.
        for name in phase.nets:
            grads = [p.grad for p in self.nets[name].parameters()]
            logs[f"grad_norm/{name}"] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        finite = all(math.isfinite(logs[f"grad_norm/{name}"]) for name in phase.nets)
        finite = finite and math.isfinite(logs.get(f"loss/{phase.name}", 0.0))
        finite = not dist.any_process(not finite, self.device, self.world)
        if not finite:
            self.nonfinite += 1
            logs[f"skipped/{phase.name}"] = 1.0
            for name in phase.nets:
                self.optimizers[name].zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.update()
            if self.nonfinite > self.cell.max_nonfinite_steps:
                raise NonFiniteError(
                    f"train: {self.nonfinite} steps had non-finite losses or gradients (last: the {phase.name} "
                    f"step at iteration {self.iterations}, {self.images_seen} images), more than "
                    f"max_nonfinite_steps = {self.cell.max_nonfinite_steps}; lower lr/glr or check the teacher"
                )
            return
        if phase.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, phase.clip_value)
        if phase.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, phase.clip_norm)
        if phase.step:
            for name in phase.nets:
                settings = self.optim_settings[name]
                for group in self.optimizers[name].param_groups:
                    group["lr"] = settings["lr"] * warmup_factor(self.images_seen, settings["warmup_images"])
                if self.scaler:
                    self.scaler.step(self.optimizers[name])
                else:
                    self.optimizers[name].step()
            self.distiller.after_step(phase.name)
        if self.scaler:
            self.scaler.update()
        for name in phase.nets:
            self.optimizers[name].zero_grad(set_to_none=True)

    @torch.no_grad()
    def update_ema(self) -> float:
        cell = self.cell
        beta = ema_beta(self.images_seen, cell.batch, cell.ema_halflife_images, cell.ema_beta, cell.ema_rampup)
        for p_ema, p in zip(self.ema.parameters(), self.generator.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)
        return beta

    def iteration(self) -> dict[str, float]:
        logs: dict[str, float] = {}
        for index, phase in enumerate(self.distiller.phases(self.images_seen, self.iterations)):
            self.run_phase(phase, index, logs)
        for net in self.nets.values():
            net.requires_grad_(False)
        logs["ema_beta"] = self.update_ema()
        self.images_seen += self.cell.batch
        self.iterations += 1
        return logs

    # --- the run -----------------------------------------------------------------------------------------
    def crossed(self, every: int, before: int) -> bool:
        return every > 0 and self.images_seen // every > before // every

    def run(self, stop: StopFlag, until_images: int | None = None) -> dict:
        """Train to cell.total_images, or only to `until_images` (a segment of a long cell: the state is saved
        and the next segment resumes it; no generator.pt until the last)."""
        cell, main = self.cell, self.info.is_main
        stop_at = cell.total_images if until_images is None else min(until_images, cell.total_images)
        resumed = self.try_resume()
        if main:
            if resumed:
                print(
                    f"train: resumed cell {cell.cell_id} at {self.images_seen} images (iteration {self.iterations}) "
                    f"from its state in {self.state_dir}",
                    file=sys.stderr,
                )
            self.check_files()
            atomic_write_json(cell.to_dict(), self.run_dir / "config.json")
            self.restore_metrics(resumed)
        bar = tqdm(
            total=cell.total_images,
            initial=self.images_seen,
            unit="img",
            desc=f"{cell.distiller}{'+EL' if self.el else ''} {cell.cell_id}",
            disable=not main,
        )
        tick: dict[str, list[float]] = defaultdict(list)
        tick_start, tick_images, last_state_save = time.time(), self.images_seen, time.time()
        log_path = self.state_dir / METRICS_FILE
        last = (read_jsonl(log_path) or [{}])[-1] if resumed and log_path.exists() else {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if dist.any_process(stop.signum is not None, self.device, self.world):
            bar.close()  # stopped while starting up: the saved state is still the newest
            raise StopRequested(f"train: stopped by signal before the first step; state in {self.state_dir} unchanged")
        while self.images_seen < stop_at:
            before = self.images_seen
            for k, v in self.iteration().items():
                tick[k].append(v)
            bar.update(self.images_seen - before)
            done = self.images_seen >= stop_at
            if done or cell.log_images == 0 or self.crossed(cell.log_images, before):
                elapsed = time.time() - tick_start
                last = {k: sum(v) / len(v) for k, v in tick.items()}
                last.update(
                    iteration=self.iterations,
                    images_seen=self.images_seen,
                    nonfinite_steps=self.nonfinite,
                    images_per_s=(self.images_seen - tick_images) / max(elapsed, 1e-9),
                    sec_per_iter=elapsed / len(tick["ema_beta"]),
                    time=time.time(),
                    **memory_mb(self.device),
                )
                if main:
                    self.log_metrics(last)
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k.startswith("loss/") and k.count("/") == 1})
                tick.clear()
                tick_start, tick_images = time.time(), self.images_seen
            snapshot = self.crossed(cell.snapshot_images, before)
            if snapshot or self.images_seen >= cell.total_images:
                self.save_snapshot()
            # Collective decisions: saving has a barrier, so every process must choose the same.
            stop_now, periodic = dist.any_processes(
                [stop.signum is not None, time.time() - last_state_save > STATE_SAVE_SECONDS], self.device, self.world
            )
            if snapshot or done or stop_now or periodic:
                self.save_state()
                last_state_save = time.time()
            if stop_now and not done:
                bar.close()
                raise StopRequested(
                    f"train: stopped by signal at {self.images_seen} images; state saved in {self.state_dir}"
                )
        bar.close()
        if self.images_seen < cell.total_images:  # a segment ended: its state is saved, the next one resumes
            dist.barrier(self.world)
            return last
        if main:
            from eldistill.checkpoints import save_network

            if not self.snapshot_path(self.images_seen).exists():
                self.save_snapshot()
            save_network(self.run_dir / "generator.pt", self.ema, meta=self.generator_meta())
        dist.barrier(self.world)
        return last


def _jsonl_line(record: dict) -> str:
    import json

    return json.dumps(record, sort_keys=True) + "\n"


def train(cell: Cell, device: str | None = None, until_images: int | None = None) -> dict:
    """Run one cell to the end, or to `until_images` (one segment), resuming from its state if any, and return the
    last log record.
    Raises StopRequested after saving when SIGTERM/SIGUSR1 arrived, NonFiniteError past the NaN limit."""
    with StopFlag() as stop:  # shares the CLI's flag: a signal during the imports counts
        info = dist.setup(device=device)
        lock = None
        try:
            cell.validate(where=f"cell {cell.cell_id}", world_size=info.world_size, check_files=True)
            for key in ("run_dir", "state_dir"):
                if not getattr(cell, key):
                    raise ValueError(f"cell {cell.cell_id}: '{key}' must be set to train")
            if dist.any_process(stop.signum is not None, info.device, info.world_size):
                raise StopRequested(f"train: stopped by signal {stop.signum} while starting; nothing new to save")
            trainer = Trainer(cell, info)  # checks every input; writes nothing
            lock = _lock_state_dir(cell, info)
            return trainer.run(stop, until_images)
        finally:
            if lock is not None:
                lock.release()
            dist.shutdown()


def _lock_state_dir(cell: Cell, info: dist.DistInfo) -> WriterLock | None:
    """The main process locks state_dir (one writer per cell); every process learns whether it could."""
    lock, refused = None, None
    if info.is_main:
        try:
            lock = WriterLock(cell.state_dir, f"training of cell {cell.cell_id}").acquire()
        except LockedError as e:
            refused = e
    if dist.any_process(refused is not None, info.device, info.world_size):
        raise refused or LockedError(f"cell {cell.cell_id}: the main process could not lock {cell.state_dir}")
    return lock


# --- CLI ---------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"Distil one run cell. Distillers: {', '.join(DISTILLERS)}. Exit 0 = finished, "
        f"{EXIT_REQUEUE} = stopped by SIGTERM/SIGUSR1 after saving (requeue), 1 = error. "
        "A rerun resumes from cell.state_dir. Several processes: start with torchrun or srun."
    )
    parser.add_argument("--config", required=True, help="the cell JSON (see eldistill.cell.Cell)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the process's own GPU if any)")
    parser.add_argument(
        "--until-images",
        type=int,
        default=None,
        help="stop after this many images with the state saved (one segment of a cell longer than a job's limit)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        cell = Cell.load(args.config)
        if args.until_images is not None and args.until_images <= 0:
            raise ValueError(f"--until-images must be positive, got {args.until_images}")
        train(cell, device=args.device, until_images=args.until_images)
    except StopRequested as e:
        print(e, file=sys.stderr)
        return EXIT_REQUEUE
    except (ValueError, NonFiniteError, LockedError, OSError) as e:  # OSError: e.g. the disk is full
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
