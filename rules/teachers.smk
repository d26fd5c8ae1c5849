# Teachers: the miniature is trained here on the CPU; a paper teacher is the published EDM/EDM2 pickle,
# downloaded (size/sha256 checked) and converted to our .pt without executing its pickled code.
TRAINED_TEACHERS = [n for n, t in CFG["teachers"].items() if "train" in t]
DOWNLOADED_TEACHERS = [n for n, t in CFG["teachers"].items() if "url" in t]


def teacher_dataset(wildcards):
    return f"{RESULTS}/data/{CFG['teachers'][wildcards.teacher]['dataset']}.zip"


rule train_teacher:
    input:
        teacher_dataset,
    output:
        teacher=f"{RESULTS}/teachers/{{teacher}}.pt",
        samples=f"{RESULTS}/teachers/{{teacher}}.png",
    log:
        f"{LOGS}/train_teacher/{{teacher}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_teacher/{{teacher}}.tsv"
    wildcard_constraints:
        teacher=one_of(TRAINED_TEACHERS),
    threads: 2  # on the critical path: every cell waits for its teacher
    resources:
        runtime=lambda wc, attempt: 60 * attempt,
        mem_mb=4000,
    params:
        state=lambda wc: f"{RESULTS}/state/teacher-{wc.teacher}",
        train=lambda wc: CFG["teachers"][wc.teacher]["train"],
        conditional=lambda wc: (
            "--conditional" if CFG["teachers"][wc.teacher]["conditional"] else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} eldistill train-teacher --dataset {input} --out {output.teacher}"
        " --state-dir {params.state} --preset {params.train[preset]} {params.conditional}"
        " --total-images {params.train[total_images]} --batch {params.train[batch]} --lr {params.train[lr]}"
        " --seed {params.train[seed]} --samples-png {output.samples} > {log} 2>&1"


rule download_teacher:
    output:
        f"{RESULTS}/teachers/{{teacher}}.pkl",
    log:
        f"{LOGS}/download/{{teacher}}.log",
    wildcard_constraints:
        teacher=one_of(DOWNLOADED_TEACHERS),
    retries: 2
    localrule: True
    params:
        url=lambda wc: CFG["teachers"][wc.teacher]["url"],
        sha256=lambda wc: (
            f"--sha256 {s}" if (s := CFG["teachers"][wc.teacher]["sha256"]) else ""
        ),
    shell:
        "eldistill download --url {params.url} --out {output} {params.sha256} > {log} 2>&1"


rule convert_teacher:
    input:
        f"{RESULTS}/teachers/{{teacher}}.pkl",
    output:
        f"{RESULTS}/teachers/{{teacher}}.pt",
    log:
        f"{LOGS}/convert_teacher/{{teacher}}.log",
    wildcard_constraints:
        teacher=one_of(DOWNLOADED_TEACHERS),
    localrule: True
    shell:
        "eldistill convert-teacher {input} {output} > {log} 2>&1"
