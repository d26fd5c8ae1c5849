# One job per run cell. The cell's JSON (eldistill.cell.Cell, id = hash of the settings that change results)
# is the only thing `eldistill train` reads. Its resumable state lives in results/<scale>/state/<cell>/,
# outside every rule output, so a retry (runtime x attempt) or a requeue resumes instead of starting over.
# GPUs, nodes, per-GPU batch, runtime and memory come from eldistill.resources.plan (GRID.plans).
SINGLE_NODE = [c for c in CELL_IDS if GRID.plans[c]["nodes"] == 1]
MULTI_NODE = [c for c in CELL_IDS if GRID.plans[c]["nodes"] > 1]


rule distill:
    input:
        unpack(cell_inputs),
        # written by the grid rule; its name is the cell id, so a result-changing edit is a new cell, and
        # ancient() keeps a rewrite (a hardware knob such as the per-GPU batch) from retraining a finished one
        cell=ancient(f"{RESULTS}/cells/{{cell}}.json"),
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
        # a retry resumes from the saved state with more time; memory stays (a GPU node has no more to give)
        runtime=lambda wc, attempt: plan_of(wc)["runtime_min"] * attempt,
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
        runtime=lambda wc, attempt: plan_of(wc)["runtime_min"] * attempt,
        mem_mb=lambda wc: plan_of(wc)["mem_mb"],
