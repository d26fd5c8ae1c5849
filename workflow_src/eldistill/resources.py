"""How much hardware a cell gets, and who is who inside a distributed job.

`plan()` is the single source of a cell's GPUs, nodes, per-GPU batch, runtime and memory: the SLURM
profile's rules and `eldistill launch` both call it. The per-GPU batch is a hardware knob (never in the
cell id): gradient accumulation fills the global batch, so it changes memory and speed, not results.
A cell longer than the site's time limit runs as a chain of `segments` jobs, each within the limit, each
resuming the state the previous one saved (`segment_images`, `retry_runtime`, `gpu_hours`).

`distributed_env()` turns the variables torchrun or SLURM (srun, one task per GPU, as submitit launches
it) put in the environment into rank, local rank, world size and the rendezvous address for DDP.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

# Per-GPU batches the reference code runs with (anchors A.2/A.3: SiDA's scripts, which backpropagate
# through three U-Nets like SiD, the most memory-hungry distillers here) on 80 GB GPUs.
# (network resolution, teacher parameters, per-GPU batch, what it is)
ANCHORS: tuple[tuple[int, int, int, str], ...] = (
    (32, 56_000_000, 32, "CIFAR-10 32x32, EDM DDPM++"),
    (64, 62_000_000, 64, "FFHQ/AFHQv2 64x64, EDM DDPM++"),
    (64, 296_000_000, 32, "ImageNet 64x64, EDM ADM"),
    (64, 125_000_000, 64, "ImageNet 512 latents, EDM2-XS"),
    (64, 280_000_000, 64, "ImageNet 512 latents, EDM2-S"),
    (64, 498_000_000, 32, "ImageNet 512 latents, EDM2-M"),
    (64, 777_000_000, 32, "ImageNet 512 latents, EDM2-L"),
    (64, 1_100_000_000, 16, "ImageNet 512 latents, EDM2-XL"),
    (64, 1_500_000_000, 2, "ImageNet 512 latents, EDM2-XXL"),
)
ANCHOR_GPU_MEM_GB = 80.0
ANCHOR_MATCH = 1.25  # a teacher within this factor of an anchor's size at the same resolution uses its batch

MAX_BATCH_GPU = 256  # beyond this a GPU is saturated; more only costs memory
MAX_ACCUMULATION = 2  # micro-batches per GPU per iteration before we rather add GPUs
MAX_GPUS = 32  # the largest allocation a shared cluster grants without a special request

# A teacher below this size is the miniature: it runs on the CPU (DESIGN.md budgets).
CPU_MAX_TEACHER_PARAMS = 5_000_000
CPU_MEM_MB = 4000
# A CPU process gets the whole batch at once unless its activations outgrow CPU_MEM_MB: then it accumulates the
# batch in rounds (the global-batch EL, eldistill.global_el, keeps the loss independent of the split). Memory
# model: activations ~ teacher parameters x pixels per sample. Measured: one SiD iteration with the 4x4 EL
# ensemble on the rehearsal's 76,867-parameter SongUNet at 8x8 grows the peak RSS by 1.42 MB per sample (batch
# 64 -> 512), i.e. 0.29 bytes per parameter-pixel; the process holds ~800 MB before its batch (torch, networks,
# dataset). Linear in parameters overestimates wider networks (activations grow with width, parameters with its
# square), which only makes the split safer.
CPU_BYTES_PER_PARAM_PIXEL = 0.3
CPU_BASE_MB = 1000
# The global EL (eldistill.global_el) is an MMD^2 over the whole global batch with the median bandwidth: K x batch^2
# kernel entries per iteration, which on the CPU outweigh the networks at big batches. Measured on one core with
# the tiled path (benchmarks/el_blocked.py 8192 4 1024 and 4096 4 1024: median + forward + backward of one family
# of 4 embedders, 1024-d features, 41.9 s and 10.9 s) -> 1.6e-7 s per embedder per pair; 2e-7 leaves a margin.
# (On GPUs it is small next to the teacher: not modelled.)
CPU_EL_SECONDS_PER_PAIR = 2e-7
# ... and it holds every image's features of every embedder, generated and real, with their gradients: measured in
# the rehearsal (Snakemake benchmarks, peak RSS), a batch-8192 ImageNet-64 cell with the 16-embedder EL at working
# size 8 peaked at 3.7-3.8 GB against 1.6 GB without EL: 16.7 kB per image per embedder; 24 kB leaves a margin.
CPU_EL_BYTES_PER_IMAGE = 24_000

# Cost of one generated image in a SiD-class iteration, in FLOPs per (teacher parameter x network pixel):
# about four forward+backward passes of the U-Net (DESIGN.md), each ~3x a forward, and a forward of an
# EDM/EDM2 U-Net costs ~0.09 FLOPs per parameter-pixel (EDM2's reported Gflops / params / 64^2).
FLOPS_PER_PARAM_PIXEL = 4 * 3 * 0.09
# Sustained training throughput. CPU: measured on our 2-core machine (DESIGN.md: 0.19-56 M-parameter SongUNets,
# ~6.5e-12 s per parameter-pixel for a forward+backward = ~4e10 FLOP/s). GPU: an assumption for an A100/H100-class
# card at ~1/3 of its 16-bit peak; override with gpu_flops= after measuring your own.
CPU_FLOPS = 4e10
GPU_FLOPS = 1e14
# A cell's precision scales the GPU throughput: fp32 runs on TF32 tensor cores at half the 16-bit peak
# (A100: 156 vs 312 TFLOP/s dense). The CPU runs fp32 whatever the cell says.
PRECISION_THROUGHPUT = {"fp32": 0.5, "bf16": 1.0, "fp16": 1.0}
RUNTIME_SAFETY = 1.5  # estimate x this, plus fixed overhead (start-up, snapshots)
RUNTIME_OVERHEAD_MIN = 10
MAX_RUNTIME_MIN = 2880  # one job's wall-clock cap (48 h, a common site limit); longer cells run as segments
HOST_MEM_MB_BASE = 16000
HOST_MEM_MB_PER_GPU = 24000

# Images this large are distilled in the 4-channel latent space of the SD VAE (8x smaller), as EDM2 does;
# a teacher whose own resolution is given (64 for EDM2 latents) passes through unchanged.
LATENT_MIN_RESOLUTION = 256
LATENT_DOWNSAMPLE = 8


def _positive_int(name: str, value, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"resources.plan: '{name}' must be a {kind} integer, got {value!r}")
    return value


def network_resolution(resolution: int) -> int:
    """The spatial size the teacher works at: the image size, or the latent size for ImageNet 512 and larger."""
    return resolution // LATENT_DOWNSAMPLE if resolution >= LATENT_MIN_RESOLUTION else resolution


def max_batch_gpu(net_resolution: int, teacher_params: int, gpu_mem_gb: float = ANCHOR_GPU_MEM_GB) -> int:
    """The largest power-of-two per-GPU batch that fits: an anchor's when the teacher matches one, otherwise
    scaled from the anchor of the nearest cost (activation memory ~ parameters x pixels)."""
    units = teacher_params * net_resolution**2

    def scaled(anchor_res: int, anchor_params: int, anchor_batch: int) -> float:
        return anchor_batch * (anchor_params * anchor_res**2) / units

    same_res = [a for a in ANCHORS if a[0] == net_resolution]
    match = [a for a in same_res if max(a[1], teacher_params) / min(a[1], teacher_params) <= ANCHOR_MATCH]
    if match:
        res, params, batch, _ = min(match, key=lambda a: abs(math.log(a[1] / teacher_params)))
        fit = scaled(res, params, batch) if params < teacher_params else batch  # a bigger teacher: shrink
    else:
        res, params, batch, _ = min(ANCHORS, key=lambda a: abs(math.log(a[1] * a[0] ** 2 / units)))
        fit = scaled(res, params, batch)
    fit *= gpu_mem_gb / ANCHOR_GPU_MEM_GB
    if fit < 1:
        raise ValueError(
            f"resources.plan: a {teacher_params:,}-parameter teacher at {net_resolution}x{net_resolution} does not "
            f"fit one sample per {gpu_mem_gb:g} GB GPU (our memory model); use larger GPUs (gpu_mem_gb)"
        )
    return min(MAX_BATCH_GPU, 2 ** int(math.floor(math.log2(fit))))


def cpu_batch_fit(net_resolution: int, teacher_params: int, mem_mb: int = CPU_MEM_MB) -> int:
    """Samples whose activations fit one CPU process's memory (at least 1), by the model above."""
    per_sample = CPU_BYTES_PER_PARAM_PIXEL * teacher_params * net_resolution**2
    return max(1, int((mem_mb - CPU_BASE_MB) * 2**20 // per_sample))


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _choose_gpus(batch: int, fit: int, gpus_per_node: int, max_gpus: int) -> tuple[int, int]:
    """(gpus, nodes): the fewest GPUs that keep accumulation at <= MAX_ACCUMULATION micro-batches, each GPU
    getting an equal share of the batch; whole nodes once a cell outgrows one."""
    wanted = math.ceil(batch / (fit * MAX_ACCUMULATION))
    candidates = []
    for gpus in range(1, min(batch, max_gpus) + 1):
        if batch % gpus:
            continue
        nodes = math.ceil(gpus / gpus_per_node)
        if nodes > 1 and gpus % nodes:  # the same number of tasks on every node
            continue
        if nodes > 1 and gpus // nodes != gpus_per_node:
            continue  # fill the nodes we take
        candidates.append((gpus, nodes))
    enough = [c for c in candidates if c[0] >= wanted]
    return min(enough) if enough else max(candidates)


def plan(
    dataset: str,
    resolution: int,
    teacher_params: int,
    batch: int,
    gpus_per_node: int,
    *,
    total_images: int | None = None,
    gpu_mem_gb: float = ANCHOR_GPU_MEM_GB,
    gpu_flops: float = GPU_FLOPS,
    max_gpus: int = MAX_GPUS,
    max_runtime_min: int = MAX_RUNTIME_MIN,
    precision: str = "fp32",
    el_embedders: int = 0,
) -> dict:
    """GPUs, nodes, per-GPU batch, host memory per node (MB) and time of one distillation cell:
    total_min (the whole cell: estimate x RUNTIME_SAFETY + overhead), segments (jobs of at most
    max_runtime_min each) and runtime_min (what each segment's job asks for). precision is the cell's.

    gpus_per_node = 0, or a miniature teacher (< CPU_MAX_TEACHER_PARAMS), gives the CPU plan: gpus 0, one process
    whose batch_gpu is the largest divisor of batch that fits CPU_MEM_MB (cpu_batch_fit).
    Without total_images the cell is one job of max_runtime_min. el_embedders: the EL ensemble's size (0 = EL
    off), for the CPU's time and memory of the global-batch EL (CPU_EL_SECONDS_PER_PAIR, CPU_EL_BYTES_PER_IMAGE)."""
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"resources.plan: 'dataset' must be a non-empty name, got {dataset!r}")
    _positive_int("resolution", resolution)
    _positive_int("teacher_params", teacher_params)
    _positive_int("batch", batch)
    _positive_int("gpus_per_node", gpus_per_node, allow_zero=True)
    _positive_int("max_gpus", max_gpus)
    _positive_int("max_runtime_min", max_runtime_min)
    _positive_int("el_embedders", el_embedders, allow_zero=True)
    if max_runtime_min <= RUNTIME_OVERHEAD_MIN:
        raise ValueError(
            f"resources.plan: 'max_runtime_min' must exceed the {RUNTIME_OVERHEAD_MIN} min start-up overhead of a job, "
            f"got {max_runtime_min}"
        )
    if precision not in PRECISION_THROUGHPUT:
        raise ValueError(
            f"resources.plan: 'precision' must be one of {', '.join(PRECISION_THROUGHPUT)}, got {precision!r}"
        )
    if total_images is not None:
        _positive_int("total_images", total_images)
    net_res = network_resolution(resolution)

    cpu = gpus_per_node == 0 or teacher_params < CPU_MAX_TEACHER_PARAMS
    if cpu:
        gpus, nodes, flops = 0, 1, CPU_FLOPS
        batch_gpu = _largest_divisor_at_most(batch, cpu_batch_fit(net_res, teacher_params))
    else:
        try:
            fit = max_batch_gpu(net_res, teacher_params, gpu_mem_gb)
        except ValueError as e:
            raise ValueError(f"{e} (dataset '{dataset}')") from None
        gpus, nodes = _choose_gpus(batch, fit, gpus_per_node, max_gpus)
        batch_gpu = _largest_divisor_at_most(batch // gpus, fit)
        flops = gpu_flops * gpus * PRECISION_THROUGHPUT[precision]

    if total_images is None:
        total = max_runtime_min
    else:
        seconds = total_images * FLOPS_PER_PARAM_PIXEL * teacher_params * net_res**2 / flops
        if cpu:
            seconds += math.ceil(total_images / batch) * el_embedders * batch**2 * CPU_EL_SECONDS_PER_PAIR
        total = math.ceil(seconds * RUNTIME_SAFETY / 60) + RUNTIME_OVERHEAD_MIN
    count, runtime = segments(total, max_runtime_min)
    if cpu:
        mem_mb = CPU_MEM_MB + math.ceil(el_embedders * batch * CPU_EL_BYTES_PER_IMAGE / 2**20)
    else:
        mem_mb = HOST_MEM_MB_BASE + HOST_MEM_MB_PER_GPU * (gpus // nodes)
    return {
        "gpus": gpus,
        "nodes": nodes,
        "batch_gpu": batch_gpu,
        "runtime_min": runtime,
        "mem_mb": mem_mb,
        "segments": count,
        "total_min": total,
        "precision": precision,
    }


def segments(total_min: int, max_runtime_min: int) -> tuple[int, int]:
    """(number of jobs, minutes each asks for) to run `total_min` (work + one start-up overhead) when no job may
    exceed `max_runtime_min`: every job pays the start-up overhead again, so a 100 h cell under a 48 h limit is
    3 jobs of 33 h 27 min each, not 2 of 50 h."""
    work = max(total_min - RUNTIME_OVERHEAD_MIN, 1)
    count = math.ceil(work / (max_runtime_min - RUNTIME_OVERHEAD_MIN))
    return count, min(max_runtime_min, math.ceil(work / count) + RUNTIME_OVERHEAD_MIN)


def segment_images(total_images: int, batch: int, count: int, k: int) -> int:
    """Images seen at the end of segment k (1-based) of `count`: an equal share of the training, rounded up to
    whole iterations; the last segment ends at total_images."""
    if not 1 <= k <= count:
        raise ValueError(f"segment {k} outside 1..{count}")
    if k == count:
        return total_images
    return min(total_images, math.ceil(total_images * k / count / batch) * batch)


def retry_runtime(runtime_min: int, attempt: int, max_runtime_min: int) -> int:
    """Minutes a job asks for on its `attempt`-th try (1-based): more time on a retry, never above the site's
    limit (a request above it is refused by sbatch or never starts). The retry resumes from the saved state."""
    return min(max_runtime_min, runtime_min * max(attempt, 1))


def gpu_hours(cell_plan: dict, retries: int, max_runtime_min: int) -> tuple[float, float]:
    """(first attempt, worst case) GPU-hours that a cell's jobs reserve: every segment once at its runtime, and
    every segment failing `retries` times, each retry asking retry_runtime()."""
    gpus, runtime, count = cell_plan["gpus"], cell_plan["runtime_min"], cell_plan["segments"]
    first = gpus * count * runtime / 60
    worst = gpus * count * sum(retry_runtime(runtime, a, max_runtime_min) for a in range(1, retries + 2)) / 60
    return first, worst


# --- inside a job: who am I? -------------------------------------------------------------------------------


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list, e.g. 'gpu[01-03,7],login1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu7', 'login1']."""
    hosts: list[str] = []
    for group in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", hostlist):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", group):
            names = [n + literal for n in names]
            if ranges:
                suffixes = []
                for part in ranges.split(","):
                    low, _, high = part.partition("-")
                    if not low.isdigit() or (high and not high.isdigit()):
                        raise ValueError(f"SLURM host list: cannot read range '{part}' in '{hostlist}'")
                    for i in range(int(low), int(high or low) + 1):
                        suffixes.append(f"{i:0{len(low)}d}")
                names = [n + s for n in names for s in suffixes]
        hosts.extend(names)
    return hosts


def _env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"distributed environment: '{key}' is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"distributed environment: '{key}' must be an integer, got {value!r}") from None


def _tasks_on_first_node(value: str) -> int:
    """SLURM_TASKS_PER_NODE, e.g. '4(x2)' or '4,3': the count on the first node."""
    match = re.match(r"(\d+)", value)
    if not match:
        raise ValueError(f"distributed environment: cannot read SLURM_TASKS_PER_NODE={value!r}")
    return int(match.group(1))


def master_port_for_job(job_id: str) -> int:
    """A rendezvous port every task of one job agrees on without talking: derived from the job id."""
    return 20000 + int(re.sub(r"\D", "", job_id) or 0) % 40000


def distributed_env(env: Mapping[str, str] | None = None) -> dict:
    """rank, local_rank, world_size, local_world_size, node_rank, master_addr, master_port, device_index and
    the source ("torchrun", "slurm" or "single"), from torchrun's variables when present, else SLURM's srun
    task variables, else a single process. A pure function of `env` (default os.environ).

    device_index is the CUDA device to use among the visible ones: local_rank when the task sees all of its
    node's GPUs, 0 when SLURM bound the task to one GPU (--ntasks-per-gpu / --gpu-bind set
    CUDA_VISIBLE_DEVICES to a single device)."""
    env = os.environ if env is None else env
    d = _derive(env)
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    d["device_index"] = 0 if len(visible) == 1 else d["local_rank"]
    return d


def _derive(env: Mapping[str, str]) -> dict:
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also torchrun --standalone inside a SLURM job)
        world = _env_int(env, "WORLD_SIZE")
        local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
        rank = _env_int(env, "RANK")
        return _checked(
            {
                "rank": rank,
                "local_rank": _env_int(env, "LOCAL_RANK", rank % local_world),
                "world_size": world,
                "local_world_size": local_world,
                "node_rank": _env_int(env, "GROUP_RANK", rank // local_world),
                "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
                "master_port": _env_int(env, "MASTER_PORT", 29500),
                "source": "torchrun",
            }
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:  # a task that srun started (submitit runs tasks so)
        world = _env_int(env, "SLURM_STEP_NUM_TASKS", _env_int(env, "SLURM_NTASKS", 1))
        nodes = _env_int(env, "SLURM_STEP_NUM_NODES", _env_int(env, "SLURM_JOB_NUM_NODES", 1))
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        local_world = _tasks_on_first_node(per_node) if per_node else world // nodes
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("distributed environment: 'SLURM_JOB_NODELIST' is not set")
        port = env.get("MASTER_PORT")
        return _checked(
            {
                "rank": _env_int(env, "SLURM_PROCID"),
                "local_rank": _env_int(env, "SLURM_LOCALID", 0),
                "world_size": world,
                "local_world_size": local_world,
                "node_rank": _env_int(env, "SLURM_NODEID", 0),
                "master_addr": env.get("MASTER_ADDR") or expand_hostlist(nodelist)[0],
                "master_port": int(port) if port else master_port_for_job(_slurm_job_id(env)),
                "source": "slurm",
            }
        )
    return {
        "rank": 0,
        "local_rank": 0,
        "world_size": 1,
        "local_world_size": 1,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": _env_int(env, "MASTER_PORT", 29500),
        "source": "single",
    }


def _slurm_job_id(env: Mapping[str, str]) -> str:
    job = env.get("SLURM_JOB_ID")  # unique per array task too: two tasks on one node get two ports
    if not job:
        raise ValueError("distributed environment: 'SLURM_JOB_ID' is not set")
    return job


def _checked(d: dict) -> dict:
    if not 0 <= d["rank"] < d["world_size"]:
        raise ValueError(f"distributed environment: rank {d['rank']} outside world size {d['world_size']}")
    if not 0 <= d["local_rank"] < d["local_world_size"]:
        raise ValueError(
            f"distributed environment: local rank {d['local_rank']} outside local world size {d['local_world_size']}"
        )
    return d


def torch_env(d: dict) -> dict[str, str]:
    """The env:// variables torch.distributed.init_process_group reads, for a dict from distributed_env()."""
    return {
        "RANK": str(d["rank"]),
        "LOCAL_RANK": str(d["local_rank"]),
        "WORLD_SIZE": str(d["world_size"]),
        "LOCAL_WORLD_SIZE": str(d["local_world_size"]),
        "MASTER_ADDR": str(d["master_addr"]),
        "MASTER_PORT": str(d["master_port"]),
    }
