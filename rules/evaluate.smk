# FID of each cell under the config's protocol: the final generator (the table's number) and, when the cell
# keeps snapshots, every snapshot (the convergence curve). The miniature protocol trains its own feature
# network and reference statistics; the paper protocol downloads the published ones.
if PROTOCOL["name"] == "mini-classifier":

    rule train_classifier:
        input:
            f"{RESULTS}/data/{{dataset}}.zip",
        output:
            f"{RESULTS}/fid/{{dataset}}-classifier.pt",
        log:
            f"{LOGS}/train_classifier/{{dataset}}.log",
        threads: 1
        resources:
            runtime=lambda wc, attempt: 30 * attempt,
            mem_mb=4000,
        params:
            epochs=PROTOCOL["classifier_epochs"],
        shell:
            "OMP_NUM_THREADS={threads} eldistill train-classifier --dataset {input} --out {output}"
            " --epochs {params.epochs} > {log} 2>&1"

    rule ref_stats:
        input:
            dataset=f"{RESULTS}/data/{{dataset}}.zip",
            feature_net=f"{RESULTS}/fid/{{dataset}}-classifier.pt",
        output:
            f"{RESULTS}/fid/{{dataset}}-mini-classifier.npz",
        log:
            f"{LOGS}/ref_stats/{{dataset}}.log",
        threads: 1
        shell:
            "OMP_NUM_THREADS={threads} eldistill ref-stats --dataset {input.dataset} --protocol mini-classifier"
            " --feature-net {input.feature_net} --out {output} > {log} 2>&1"

else:

    rule download_reference:
        output:
            f"{RESULTS}/fid/{{dataset}}-{PROTOCOL['name']}{{ext}}",
        log:
            f"{LOGS}/download/reference-{{dataset}}{{ext}}.log",
        wildcard_constraints:
            ext=r"\.npz|\.pkl",
        retries: 2
        localrule: True
        params:
            url=lambda wc: PROTOCOL["references"][wc.dataset],
        shell:
            "eldistill download --url {params.url} --out {output} > {log} 2>&1"

    rule download_feature_net:
        output:
            f"{RESULTS}/fid/inception-2015-12-05.pt",
        log:
            f"{LOGS}/download/inception.log",
        retries: 2
        localrule: True
        params:
            url=PROTOCOL["feature_net_url"],
        shell:
            "eldistill download --url {params.url} --out {output} > {log} 2>&1"


def evaluate_inputs(wildcards):
    dataset = cell_of(wildcards).labels["dataset"]
    return {
        "generator": f"{RESULTS}/runs/{wildcards.cell}/generator.pt",
        "reference": reference_of(dataset),
        "feature_net": feature_net_of(dataset),
    }


def latent_arguments(wildcards):
    """A latent (EDM2) cell's generators are decoded with its dataset's VAE folder before the detector."""
    dataset = CFG["datasets"][cell_of(wildcards).labels["dataset"]]
    return f"--vae {data_root_path(dataset['vae'])}" if dataset.get("vae") else ""


def evaluate_runtime(wildcards, attempt):
    """Minutes: decoding 3 x 50k latents (and each snapshot's 50k) at 512x512 with the VAE takes hours."""
    latent = CFG["datasets"][cell_of(wildcards).labels["dataset"]].get("vae")
    return retry_runtime(720 if latent else 120 if ON_GPU else 30, attempt, MAX_RUNTIME)


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        fid=f"{RESULTS}/runs/{{cell}}/fid.jsonl",
        samples=f"{RESULTS}/runs/{{cell}}/samples.png",
    log:
        f"{LOGS}/evaluate/{{cell}}.log",
    threads: 1
    resources:
        gpu=1 if ON_GPU else 0,
        tasks_per_gpu=0,
        cpus_per_task=0,  # lets the profile's cpus_per_gpu reach sbatch (rules/distill.smk)
        runtime=evaluate_runtime,
        mem_mb=lambda wc, attempt: (32000 if ON_GPU else 4000) * attempt,
    params:
        run=lambda wc: f"{RESULTS}/runs/{wc.cell}",
        state=lambda wc: f"{RESULTS}/state/{wc.cell}",
        protocol=PROTOCOL["name"],
        num_samples=PROTOCOL["num_samples"],
        aggregation=PROTOCOL["aggregation"],
        snapshots=lambda wc: "--snapshots" if cell_of(wc).snapshot_images > 0 else "",
        latent=latent_arguments,
    shell:
        "OMP_NUM_THREADS={threads} eldistill evaluate --run {params.run}"
        " --state-dir {params.state} --protocol {params.protocol} --reference {input.reference}"
        " --feature-net {input.feature_net} --num-samples {params.num_samples} --aggregation {params.aggregation}"
        " {params.snapshots} {params.latent} --device "
        + ("cuda" if ON_GPU else "cpu")
        + " > {log} 2>&1"
