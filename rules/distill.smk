# One job per run cell. The cell's JSON (eldistill.cell.Cell, id = hash of the settings that change results)
# is the only thing `eldistill train` reads. Its resumable state lives in results/<scale>/state/<cell>/,
# outside every rule output, so a retry (runtime x attempt) or a requeue resumes instead of starting over.
# GPUs, nodes, per-GPU batch, runtime and memory come from eldistill.resources.plan (GRID.plans).
# A cell longer than hardware.max_runtime_min runs as segments: distill_segment jobs 1..S-1, each training
# to its share of the images and exiting with the state saved, then `distill` (the last segment) finishes it.
# Every job asks at most the site's limit, retries included (resources.retry_runtime).
SINGLE_NODE = [c for c in CELL_IDS if GRID.plans[c]["nodes"] == 1]
MULTI_NODE = [c for c in CELL_IDS if GRID.plans[c]["nodes"] > 1]
SEGMENTED = [c for c in CELL_IDS if GRID.plans[c]["segments"] > 1]


# The LPIPS weights (config `lpips`): the VGG16 backbone and the LPIPS heads, by their file names in cell.lpips.
LPIPS_SOURCES = dict(zip(LPIPS_FILES, ("vgg16", "lin")))


rule download_lpips:
    output:
        f"{RESULTS}/lpips/{{lpips_file}}",
    log:
        f"{LOGS}/download/lpips-{{lpips_file}}.log",
    wildcard_constraints:
        lpips_file=one_of(LPIPS_FILES),
    retries: 2
    localrule: True
    params:
        url=lambda wc: CFG["lpips"][LPIPS_SOURCES[wc.lpips_file]]["url"],
        sha256=lambda wc: (
            f"--sha256 {s}"
            if (s := CFG["lpips"][LPIPS_SOURCES[wc.lpips_file]]["sha256"])
            else ""
        ),
    shell:
        "eldistill download --url {params.url} --out {output} {params.sha256} > {log} 2>&1"


def segment_marker(cell, k):
    return f"{RESULTS}/segments/{cell}/{k}.done"


def previous_segment(wildcards):
    """The segment before this job: none for the first, segment S-1 for the cell's final job."""
    count = GRID.plans[wildcards.cell]["segments"]
    k = int(wildcards.get("segment", count))
    return [segment_marker(wildcards.cell, k - 1)] if k > 1 else []


def segment_end(wildcards):
    cell = cell_of(wildcards)
    count = GRID.plans[wildcards.cell]["segments"]
    return segment_images(cell.total_images, cell.batch, count, int(wildcards.segment))


def job_runtime(wildcards, attempt):
    return retry_runtime(plan_of(wildcards)["runtime_min"], attempt, MAX_RUNTIME)


rule distill:
    input:
        unpack(cell_inputs),
        # written by the grid rule; its name is the cell id, so a result-changing edit is a new cell, and
        # ancient() keeps a rewrite (a hardware knob such as the per-GPU batch) from retraining a finished one
        cell=ancient(f"{RESULTS}/cells/{{cell}}.json"),
        previous=previous_segment,
    output:
        generator=f"{RESULTS}/runs/{{cell}}/generator.pt",
        metrics=f"{RESULTS}/runs/{{cell}}/metrics.jsonl",
        config=f"{RESULTS}/runs/{{cell}}/config.json",
    log:
        f"{LOGS}/distill/{{cell}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/distill/{{cell}}.tsv"
    wildcard_constraints:
        cell=one_of(SINGLE_NODE),
    threads: 1
    resources:
        gpu=lambda wc: plan_of(wc)["gpus"],
        nodes=lambda wc: plan_of(wc)["nodes"],
        tasks_per_gpu=0,  # one process per job; torchrun spawns one worker per GPU (never --ntasks-per-gpu)
        # 0 lets the profile's cpus_per_gpu reach sbatch: the SLURM plugin sends --cpus-per-task whenever
        # cpus_per_task is set (the profile's default-resources sets it for CPU jobs) and cpus_per_gpu only if not
        cpus_per_task=0,
        # a retry resumes from the saved state with more time, up to the site's limit; memory stays (a GPU
        # node has no more to give)
        runtime=job_runtime,
        mem_mb=lambda wc: plan_of(wc)["mem_mb"],
    shell:
        "if [ {resources.nodes} -gt 1 ]; then launch='srun eldistill';"
        " elif [ {resources.gpu} -gt 1 ]; then"
        " launch='torchrun --standalone --nproc_per_node={resources.gpu} -m eldistill.cli';"
        " else launch=eldistill; fi;"
        " OMP_NUM_THREADS={threads} $launch train --config {input.cell} > {log} 2>&1"


# Cells that outgrow one node: nodes x GPUs, one task per GPU started by srun; inside, eldistill.resources
# .distributed_env reads rank and world size from SLURM's variables. `mpi` tells the SLURM jobstep not to
# wrap the job in its own single-task srun.
use rule distill as distill_multinode with:
    wildcard_constraints:
        cell=one_of(MULTI_NODE),
    resources:
        gpu=lambda wc: plan_of(wc)["gpus"],
        nodes=lambda wc: plan_of(wc)["nodes"],
        tasks=lambda wc: plan_of(wc)["gpus"],
        tasks_per_gpu=1,
        mpi="srun",
        cpus_per_task=0,
        runtime=job_runtime,
        mem_mb=lambda wc: plan_of(wc)["mem_mb"],


# Segments 1..S-1 of a long cell: the same launch, training stops at the segment's images with the state saved
# (`train --until-images`); the marker orders the chain. The final segment is the `distill` job above.
rule distill_segment:
    input:
        unpack(cell_inputs),
        cell=ancient(f"{RESULTS}/cells/{{cell}}.json"),
        previous=previous_segment,
    output:
        f"{RESULTS}/segments/{{cell}}/{{segment}}.done",
    log:
        f"{LOGS}/distill/{{cell}}-segment{{segment}}.log",
    wildcard_constraints:
        cell=one_of(set(SEGMENTED) & set(SINGLE_NODE)),
        segment=r"\d+",
    threads: 1
    resources:
        gpu=lambda wc: plan_of(wc)["gpus"],
        nodes=lambda wc: plan_of(wc)["nodes"],
        tasks_per_gpu=0,
        cpus_per_task=0,
        runtime=job_runtime,
        mem_mb=lambda wc: plan_of(wc)["mem_mb"],
    params:
        until=segment_end,
    shell:
        "if [ {resources.nodes} -gt 1 ]; then launch='srun eldistill';"
        " elif [ {resources.gpu} -gt 1 ]; then"
        " launch='torchrun --standalone --nproc_per_node={resources.gpu} -m eldistill.cli';"
        " else launch=eldistill; fi;"
        " OMP_NUM_THREADS={threads} $launch train --config {input.cell} --until-images {params.until} > {log} 2>&1"
        " && echo {params.until} > {output}"


use rule distill_segment as distill_segment_multinode with:
    wildcard_constraints:
        cell=one_of(set(SEGMENTED) & set(MULTI_NODE)),
        segment=r"\d+",
    resources:
        gpu=lambda wc: plan_of(wc)["gpus"],
        nodes=lambda wc: plan_of(wc)["nodes"],
        tasks=lambda wc: plan_of(wc)["gpus"],
        tasks_per_gpu=1,
        mpi="srun",
        cpus_per_task=0,
        runtime=job_runtime,
        mem_mb=lambda wc: plan_of(wc)["mem_mb"],
