"""resources.plan (hardware per cell) and resources.distributed_env (who is who in a DDP job)."""

from __future__ import annotations

import math

import pytest

from eldistill import resources
from eldistill.resources import distributed_env, expand_hostlist, plan, torch_env


# --- plan ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        # CIFAR-10 teacher (56 M, 32x32): the reference per-GPU batch 32; 256 / (32 x 2 accumulation) = 4 GPUs
        (("cifar10", 32, 56_000_000, 256, 8), {"gpus": 4, "nodes": 1, "batch_gpu": 32}),
        # batch 16 fits one GPU in one micro-batch
        (("cifar10", 32, 56_000_000, 16, 8), {"gpus": 1, "nodes": 1, "batch_gpu": 16}),
        # ImageNet 512 (latents 64x64) with EDM2-XS: per-GPU 64, 2048 / (64 x 2) = 16 GPUs = two 8-GPU nodes
        (("imagenet512", 512, 125_000_000, 2048, 8), {"gpus": 16, "nodes": 2, "batch_gpu": 64}),
        # the same on 4-GPU nodes: four nodes
        (("imagenet512", 512, 125_000_000, 2048, 4), {"gpus": 16, "nodes": 4, "batch_gpu": 64}),
        # a teacher given at its own (latent) resolution plans the same
        (("imagenet512", 64, 125_000_000, 2048, 8), {"gpus": 16, "nodes": 2, "batch_gpu": 64}),
        # ImageNet 64 at 8192: capped at MAX_GPUS = 32 (4 nodes), the rest is accumulation (8192 / 32 / 32 = 8)
        (("imagenet64", 64, 296_000_000, 8192, 8), {"gpus": 32, "nodes": 4, "batch_gpu": 32}),
        # EDM2-XXL: the reference's per-GPU batch 2; 64 / (2 x 2) = 16 GPUs = two nodes
        (("imagenet512", 512, 1_500_000_000, 64, 8), {"gpus": 16, "nodes": 2, "batch_gpu": 2}),
        # FFHQ 64: per-GPU 64, 512 / 128 = 4 GPUs
        (("ffhq64", 64, 62_000_000, 512, 8), {"gpus": 4, "nodes": 1, "batch_gpu": 64}),
    ],
)
def test_plan_paper_cells(args, expected):
    got = plan(*args)
    assert {k: got[k] for k in expected} == expected


def test_plan_scales_an_unknown_teacher_from_the_nearest_anchor():
    # 112 M at 32x32 = twice CIFAR-10's parameter-pixels: half its per-GPU batch (32 -> 16)
    assert resources.max_batch_gpu(32, 112_000_000) == 16
    # a 40 GB card holds half of the 80 GB anchors' batch
    assert resources.max_batch_gpu(32, 56_000_000, gpu_mem_gb=40) == 16
    # a slightly larger teacher than an anchor (within the match factor) shrinks, a smaller one keeps the anchor
    assert resources.max_batch_gpu(64, 340_000_000) == 16  # 32 x 296/340 = 27.9 -> 16
    assert resources.max_batch_gpu(64, 280_000_000) == 64


def test_plan_miniature_and_cpu_only_clusters_use_the_cpu():
    mini = plan("mini", 16, 190_000, 64, 8, total_images=20_000)
    # hand calculation: 20000 images x 1.08 FLOP x 190000 params x 256 pixels / 4e10 FLOP/s = 26.27 s
    # -> x 1.5 safety = 0.66 min -> ceil 1 + 10 min overhead = 11
    assert mini == {
        "gpus": 0, "nodes": 1, "batch_gpu": 64, "runtime_min": 11, "mem_mb": resources.CPU_MEM_MB, "segments": 1,
        "total_min": 11, "precision": "fp32",
    }  # fmt: skip
    assert plan("cifar10", 32, 56_000_000, 256, 0)["gpus"] == 0


def test_a_cpu_batch_beyond_host_memory_accumulates_in_rounds():
    # hand calculation: 0.3 B x 86,099 parameters x 8^2 pixels = 1,653,100.8 B per sample; (4000 - 1000) MiB =
    # 3,145,728,000 B -> 1902 samples fit; the largest divisor of 8192 that is <= 1902 is 1024: 8 rounds
    assert resources.cpu_batch_fit(8, 86_099) == 1902
    assert plan("imagenet64", 8, 86_099, 8192, 0)["batch_gpu"] == 1024
    assert plan("imagenet64", 8, 86_099, 1024, 0)["batch_gpu"] == 1024  # fits: one round
    # DMD2's batch 280 on a 1.6 M-parameter net at 8x8: 30,720,000 B per sample -> 102 fit -> 70 (4 rounds)
    assert resources.cpu_batch_fit(8, 1_600_000) == 102
    assert plan("imagenet64", 8, 1_600_000, 280, 0)["batch_gpu"] == 70
    assert plan("imagenet64", 64, 50_000_000, 280, 0)["batch_gpu"] == 1  # never below one sample


def test_a_cpu_plan_counts_the_global_els_time():
    # hand calculation: one iteration of batch 8192 with 16 embedders: 16 x 8192^2 pairs x 2e-7 s = 214.7 s, plus
    # the networks' 8192 x 1.08 x 86,099 x 64 / 4e10 = 1.2 s -> x 1.5 = 324 s -> 6 min + 10 min overhead = 16
    el = plan("imagenet64", 8, 86_099, 8192, 0, total_images=8192, el_embedders=16)
    assert el["total_min"] == 16
    assert plan("imagenet64", 8, 86_099, 8192, 0, total_images=8192)["total_min"] == 11  # EL off
    # and its memory: 16 embedders x 8192 images x 24,000 B = 3,145,728,000 B = 3000 MiB on top of the 4000
    assert el["mem_mb"] == 7000
    assert plan("imagenet64", 8, 86_099, 8192, 0, total_images=8192)["mem_mb"] == 4000
    gpu = dict(total_images=10_000_000, precision="bf16")  # on GPUs EL is not modelled: the plan is the same
    assert plan("cifar10", 32, 56_000_000, 256, 8, **gpu) == plan(
        "cifar10", 32, 56_000_000, 256, 8, el_embedders=16, **gpu
    )


def test_plan_runtime_and_memory():
    p = plan("cifar10", 32, 56_000_000, 256, 8, total_images=10_000_000, precision="bf16")
    seconds = 10_000_000 * (4 * 3 * 0.09) * 56_000_000 * 32**2 / (4 * 1e14)  # 4 GPUs at the 16-bit throughput
    assert p["runtime_min"] == math.ceil(seconds * 1.5 / 60) + 10 == 49
    assert p["mem_mb"] == 16000 + 24000 * 4
    # fp32 (TF32) runs at half the 16-bit throughput: twice the work time, the same overhead
    fp32 = plan("cifar10", 32, 56_000_000, 256, 8, total_images=10_000_000)
    assert fp32["runtime_min"] == math.ceil(2 * seconds * 1.5 / 60) + 10 == 88 and fp32["precision"] == "fp32"
    # no length: one job of the cap
    assert plan("cifar10", 32, 56_000_000, 256, 8, max_runtime_min=600)["runtime_min"] == 600
    with pytest.raises(ValueError, match="'precision'"):
        plan("cifar10", 32, 56_000_000, 256, 8, precision="fp8")
    with pytest.raises(ValueError, match="'max_runtime_min'"):
        plan("cifar10", 32, 56_000_000, 256, 8, max_runtime_min=10)


def test_a_100_hour_cell_under_a_48_hour_limit_is_three_segments():
    # 100 h = 6000 min including one 10 min start-up: 5990 min of work; a job can do 2880 - 10 = 2870 min of it,
    # so 3 jobs of ceil(5990 / 3) + 10 = 2007 min each (2 jobs would need 3005 min each, over the limit)
    assert resources.segments(6000, 2880) == (3, 2007)
    assert resources.segments(2880, 2880) == (1, 2880) and resources.segments(2881, 2880) == (2, 1446)
    # the same through plan(): 1 GPU, batch 16, images chosen so the cell takes 100 h at 16-bit throughput
    seconds_per_image = (4 * 3 * 0.09) * 56_000_000 * 32**2 / 1e14
    images = int((6000 - 10) * 60 / 1.5 / seconds_per_image) // 16 * 16
    p = plan("cifar10", 32, 56_000_000, 16, 8, total_images=images, precision="fp16", max_runtime_min=2880)
    assert (p["gpus"], p["total_min"], p["segments"]) == (1, 6000, 3) and p["runtime_min"] == 2007
    # segment boundaries: equal thirds in whole iterations, the last at the end
    ends = [resources.segment_images(images, 16, 3, k) for k in (1, 2, 3)]
    assert ends[-1] == images and all(e % 16 == 0 for e in ends[:2]) and ends[0] < ends[1] < images
    assert ends[0] == math.ceil(images / 3 / 16) * 16
    # a retry asks for more time but never more than the limit (today's runtime x attempt asked 4014 and 6021)
    assert [resources.retry_runtime(2007, a, 2880) for a in (1, 2, 3)] == [2007, 2880, 2880]
    # GPU-hours: 3 segments x 2007 min x 1 GPU first; worst case 3 x (2007 + 2880 + 2880) with 2 retries
    first, worst = resources.gpu_hours(p, retries=2, max_runtime_min=2880)
    assert first == pytest.approx(3 * 2007 / 60) and worst == pytest.approx(3 * (2007 + 2880 + 2880) / 60)


@pytest.mark.parametrize("batch", [16, 24, 48, 96, 256, 1000, 2048, 8192])
@pytest.mark.parametrize("gpn", [1, 4, 6, 8])
@pytest.mark.parametrize("params, res", [(56_000_000, 32), (296_000_000, 64), (1_100_000_000, 512)])
def test_plan_invariants(batch, gpn, params, res):
    p = plan("any", res, params, batch, gpn)
    fit = resources.max_batch_gpu(resources.network_resolution(res), params)
    assert batch % (p["gpus"] * p["batch_gpu"]) == 0, "every GPU gets an equal, whole share in whole micro-batches"
    assert p["batch_gpu"] <= fit
    assert p["gpus"] % p["nodes"] == 0 and p["gpus"] <= resources.MAX_GPUS
    assert p["gpus"] // p["nodes"] <= gpn
    if p["nodes"] > 1:
        assert p["gpus"] // p["nodes"] == gpn, "multi-node cells fill their nodes"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(dataset="", resolution=32, teacher_params=1, batch=1, gpus_per_node=1), "dataset"),
        (dict(dataset="c", resolution=0, teacher_params=1, batch=1, gpus_per_node=1), "resolution"),
        (dict(dataset="c", resolution=32, teacher_params=-5, batch=1, gpus_per_node=1), "teacher_params"),
        (dict(dataset="c", resolution=32, teacher_params=1, batch=2.5, gpus_per_node=1), "batch"),
        (dict(dataset="c", resolution=32, teacher_params=1, batch=8, gpus_per_node=-1), "gpus_per_node"),
    ],
)
def test_plan_bad_input_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        plan(**kwargs)


def test_plan_refuses_a_teacher_too_big_for_the_gpu():
    with pytest.raises(ValueError, match="does not fit"):
        plan("imagenet512", 512, 1_500_000_000, 64, 8, gpu_mem_gb=24)


# --- distributed_env ---------------------------------------------------------------------------------------
def srun_env(job_id, nodes, tasks_per_node, procid, hostlist):
    """The variables srun sets for task `procid` of a job step with `tasks_per_node` tasks on each node."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % tasks_per_node),
        "SLURM_NODEID": str(procid // tasks_per_node),
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_STEP_NUM_TASKS": str(nodes * tasks_per_node),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})" if nodes > 1 else str(tasks_per_node),
        "SLURM_JOB_NODELIST": hostlist,
        "SLURM_STEP_NODELIST": hostlist,
    }


@pytest.mark.parametrize(
    "nodes, tasks_per_node, hostlist, master",
    [(1, 1, "localhost", "localhost"), (1, 4, "gpu017", "gpu017"), (2, 4, "gpu[016-017]", "gpu016")],
)
def test_distributed_env_from_srun(nodes, tasks_per_node, hostlist, master):
    world = nodes * tasks_per_node
    envs = [distributed_env(srun_env(4711, nodes, tasks_per_node, r, hostlist)) for r in range(world)]
    assert [e["rank"] for e in envs] == list(range(world))
    assert [e["local_rank"] for e in envs] == [r % tasks_per_node for r in range(world)]
    assert [e["node_rank"] for e in envs] == [r // tasks_per_node for r in range(world)]
    assert {e["world_size"] for e in envs} == {world}
    assert {e["local_world_size"] for e in envs} == {tasks_per_node}
    assert {e["master_addr"] for e in envs} == {master}
    assert {e["master_port"] for e in envs} == {20000 + 4711 % 40000}, "all tasks agree on one port"
    assert {e["source"] for e in envs} == {"slurm"}
    assert [e["device_index"] for e in envs] == [e["local_rank"] for e in envs], "each task sees its node's GPUs"


def test_distributed_env_task_bound_to_one_gpu_uses_device_0():
    # --ntasks-per-gpu=1 binds each task to one GPU: local rank 3 sees only its GPU, as device 0
    env = srun_env(5, 2, 4, 7, "gpu[1-2]")
    d = distributed_env(dict(env, CUDA_VISIBLE_DEVICES="3"))
    assert (d["local_rank"], d["device_index"]) == (3, 0)
    d = distributed_env(dict(env, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert d["device_index"] == 3


def test_distributed_env_two_jobs_on_one_node_get_different_ports():
    a = distributed_env(srun_env(100, 1, 2, 0, "localhost"))
    b = distributed_env(srun_env(101, 1, 2, 0, "localhost"))
    assert a["master_port"] != b["master_port"]


def test_distributed_env_torchrun_wins_over_slurm():
    # torchrun --standalone inside a single-node SLURM job: its variables describe the DDP processes
    env = srun_env(7, 1, 1, 0, "localhost")
    env.update(RANK="3", LOCAL_RANK="3", WORLD_SIZE="4", LOCAL_WORLD_SIZE="4", MASTER_ADDR="127.0.0.1")
    env.update(MASTER_PORT="29400", GROUP_RANK="0")
    d = distributed_env(env)
    assert d == {
        "rank": 3,
        "local_rank": 3,
        "world_size": 4,
        "local_world_size": 4,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": 29400,
        "source": "torchrun",
        "device_index": 3,
    }
    assert torch_env(d) == {
        "RANK": "3",
        "LOCAL_RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29400",
    }


def test_distributed_env_single_process_and_batch_step():
    assert distributed_env({})["world_size"] == 1
    # the batch script of a 2x4 job (no srun step): one process, not rank 0 of 8
    batch_step = srun_env(9, 2, 4, 0, "gpu[1-2]")
    del batch_step["SLURM_STEP_ID"]
    d = distributed_env(batch_step)
    assert (d["rank"], d["world_size"], d["source"]) == (0, 1, "single")


def test_distributed_env_bad_values_name_the_variable():
    env = srun_env(9, 1, 2, 0, "localhost")
    env["SLURM_PROCID"] = "x"
    with pytest.raises(ValueError, match="SLURM_PROCID"):
        distributed_env(env)
    env = srun_env(9, 1, 2, 5, "localhost")  # rank 5 of 2
    with pytest.raises(ValueError, match="rank 5"):
        distributed_env(env)


def test_expand_hostlist():
    assert expand_hostlist("localhost") == ["localhost"]
    assert expand_hostlist("gpu[01-03,7],login1") == ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]
    assert expand_hostlist("r[1-2]n[08-09]") == ["r1n08", "r1n09", "r2n08", "r2n09"]
    with pytest.raises(ValueError, match="range"):
        expand_hostlist("gpu[a-b]")
