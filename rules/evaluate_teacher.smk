# The teachers' own FIDs (config `teacher_evals`: EDM's sampler settings), rows of the `teachers` table. One
# GPU job each; a job stopped at its time limit keeps the seed ranges it finished (fid.jsonl), so its retry
# continues with the next one.
TEACHER_EVALS = GRID.teacher_evals


def teacher_eval_inputs(wildcards):
    evaluation = TEACHER_EVALS[wildcards.teval]
    return {
        "teacher": evaluation["teacher_path"],
        "reference": reference_of(evaluation["dataset"]),
        "feature_net": feature_net_of(evaluation["dataset"]),
    }


def sampler_args(wildcards):
    sampler = TEACHER_EVALS[wildcards.teval]["sampler"]
    args = [
        f"--{k.replace('_', '-')} {'inf' if v is None else v}"
        for k, v in sampler.items()
    ]
    return " ".join(args)


rule evaluate_teacher:
    input:
        unpack(teacher_eval_inputs),
    output:
        fid=f"{RESULTS}/runs/{{teval}}/fid.jsonl",
        samples=f"{RESULTS}/runs/{{teval}}/samples.png",
    log:
        f"{LOGS}/evaluate_teacher/{{teval}}.log",
    wildcard_constraints:
        teval=one_of(TEACHER_EVALS),
    threads: 1
    resources:
        gpu=lambda wc: TEACHER_EVALS[wc.teval]["plan"]["gpus"],
        tasks_per_gpu=0,
        cpus_per_task=0,  # so that the profile's cpus_per_gpu reaches sbatch (see rules/distill.smk)
        runtime=lambda wc, attempt: retry_runtime(
            TEACHER_EVALS[wc.teval]["plan"]["runtime_min"], attempt, MAX_RUNTIME
        ),
        mem_mb=lambda wc: TEACHER_EVALS[wc.teval]["plan"]["mem_mb"],
    params:
        out=lambda wc: f"{RESULTS}/runs/{wc.teval}",
        sampler=sampler_args,
        protocol=PROTOCOL["name"],
        num_samples=PROTOCOL["num_samples"],
        aggregation=(
            "min-of-3-seeds"
            if PROTOCOL["aggregation"] == "min-of-3-seeds"
            else "final"
        ),
        device="cuda" if ON_GPU else "cpu",
    shell:
        "OMP_NUM_THREADS={threads} eldistill evaluate-teacher --teacher {input.teacher} --out {params.out}"
        " --cell-id {wildcards.teval} --protocol {params.protocol} --reference {input.reference}"
        " --feature-net {input.feature_net} --num-samples {params.num_samples} --aggregation {params.aggregation}"
        " {params.sampler} --device {params.device} > {log} 2>&1"
