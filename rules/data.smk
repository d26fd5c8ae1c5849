# Datasets: the offline miniature is made here; a paper dataset lives at data_root/path (EDM's zip layout) and
# is linked into results/<scale>/data/, so that cell ids never depend on where a site keeps its data. When that
# file is not there yet and the dataset has a `prepare` entry, `eldistill prepare-dataset` writes it with EDM's
# dataset_tool.py rules (from the CIFAR-10 tarball it downloads, or from a folder of images the site provides).
# A source that is missing fails at run time with a message naming it; the dry run never needs the data.
MADE_DATASETS = [n for n, d in CFG["datasets"].items() if "make" in d]
LINKED_DATASETS = [n for n, d in CFG["datasets"].items() if "path" in d]


def data_root_path(path):
    path = Path(path)
    return str(path if path.is_absolute() else Path(CFG["data_root"]) / path)


def external_dataset_path(name):
    return data_root_path(CFG["datasets"][name]["path"])


# decided when the workflow is read: a file already at data_root/path is used as it is, never rewritten
PREPARED = {
    external_dataset_path(n): n
    for n in LINKED_DATASETS
    if "prepare" in CFG["datasets"][n] and not Path(external_dataset_path(n)).exists()
}
DOWNLOADED_SOURCES = {
    data_root_path(CFG["datasets"][n]["prepare"]["input"]): CFG["datasets"][n][
        "prepare"
    ]
    for n in PREPARED.values()
    if "url" in CFG["datasets"][n]["prepare"]
}


# EDM2 latent datasets (channels 4) are prepared by encoding the images with the VAE: a GPU job of its own
ENCODED = {path for path, n in PREPARED.items() if CFG["datasets"][n]["channels"] == 4}


def encode_arguments(wildcards):
    """The prepare-dataset arguments of a latent dataset: its image source, transform and VAE folder."""
    dataset = CFG["datasets"][PREPARED[wildcards.prepared]]
    prepare = dataset["prepare"]
    args = [
        f"--source {prepare['source']} --input {data_root_path(prepare['input'])}",
        f"--resolution {prepared_resolution(dataset)} --transform {prepare['transform']}",
        f"--vae {data_root_path(dataset['vae'])} --device {'cuda' if ON_GPU else 'cpu'}",
    ]
    if prepare["max_images"]:
        args.append(f"--max-images {prepare['max_images']}")
    return " ".join(args)


def external_dataset(wildcards):
    """The prepared file, when it exists or a rule makes it; else nothing, and the link job names what is missing."""
    path = external_dataset_path(wildcards.dataset)
    return [path] if Path(path).exists() or path in PREPARED else []


def prepare_source(wildcards):
    prepare = CFG["datasets"][PREPARED[wildcards.prepared]]["prepare"]
    path = data_root_path(prepare["input"])
    return [path] if path in DOWNLOADED_SOURCES else []


rule make_dataset:
    output:
        f"{RESULTS}/data/{{dataset}}.zip",
    log:
        f"{LOGS}/make_dataset/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(MADE_DATASETS),
    localrule: True
    params:
        source=lambda wc: CFG["datasets"][wc.dataset]["make"]["source"],
        resolution=lambda wc: CFG["datasets"][wc.dataset]["resolution"],
        channels=lambda wc: CFG["datasets"][wc.dataset]["channels"],
        max_images=lambda wc: CFG["datasets"][wc.dataset]["make"]["max_images"] or "",
    shell:
        "eldistill make-dataset --source {params.source} --resolution {params.resolution}"
        " --channels {params.channels} $([ -n '{params.max_images}' ] && echo --max-images {params.max_images})"
        " --out {output} > {log} 2>&1"


rule download_dataset_source:
    output:
        "{source_file}",
    log:
        f"{LOGS}/download/{{source_file}}.log",
    wildcard_constraints:
        source_file=one_of(DOWNLOADED_SOURCES),
    retries: 2
    localrule: True
    params:
        url=lambda wc: DOWNLOADED_SOURCES[wc.source_file]["url"],
        sha256=lambda wc: (
            f"--sha256 {s}"
            if (s := DOWNLOADED_SOURCES[wc.source_file]["sha256"])
            else ""
        ),
    shell:
        "eldistill download --url {params.url} --out {output} {params.sha256} > {log} 2>&1"


rule prepare_dataset:
    input:
        prepare_source,
    output:
        "{prepared}",
    log:
        f"{LOGS}/prepare_dataset/{{prepared}}.log",
    wildcard_constraints:
        prepared=one_of(set(PREPARED) - ENCODED),
    threads: 1
    resources:
        runtime=lambda wc, attempt: 720 * attempt,  # ImageNet: 1.28 M images decoded and resized on one core
        mem_mb=8000,
    params:
        source=lambda wc: CFG["datasets"][PREPARED[wc.prepared]]["prepare"]["source"],
        input=lambda wc: data_root_path(
            CFG["datasets"][PREPARED[wc.prepared]]["prepare"]["input"]
        ),
        resolution=lambda wc: prepared_resolution(
            CFG["datasets"][PREPARED[wc.prepared]]
        ),
        transform=lambda wc: CFG["datasets"][PREPARED[wc.prepared]]["prepare"][
            "transform"
        ],
        max_images=lambda wc: (
            f"--max-images {m}"
            if (m := CFG["datasets"][PREPARED[wc.prepared]]["prepare"]["max_images"])
            else ""
        ),
    shell:
        "eldistill prepare-dataset --source {params.source} --input {params.input} --out {output}"
        " --resolution {params.resolution} --transform {params.transform} {params.max_images} > {log} 2>&1"


rule encode_latent_dataset:
    input:
        prepare_source,
    output:
        "{prepared}",
    log:
        f"{LOGS}/encode_latent_dataset/{{prepared}}.log",
    wildcard_constraints:
        prepared=one_of(ENCODED),
    threads: 4 if ON_GPU else 1  # a CPU-only config (the rehearsal) gets the CPU job of any other rule
    resources:
        gpu=1 if ON_GPU else 0,
        tasks_per_gpu=0,
        cpus_per_task=0 if ON_GPU else 1,  # 0 lets the profile's cpus_per_gpu reach sbatch (rules/distill.smk)
        runtime=lambda wc, attempt: retry_runtime(1440, attempt, MAX_RUNTIME),  # 1.28 M images through the VAE
        mem_mb=32000 if ON_GPU else 4000,
    params:
        args=encode_arguments,
    shell:
        "OMP_NUM_THREADS={threads} eldistill prepare-dataset {params.args} --out {output} > {log} 2>&1"


rule link_dataset:
    input:
        external_dataset,
    output:
        f"{RESULTS}/data/{{dataset}}.zip",
    log:
        f"{LOGS}/link_dataset/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(LINKED_DATASETS),
    localrule: True
    params:
        path=lambda wc: external_dataset_path(wc.dataset),
    shell:
        "eldistill prepare-dataset --source zip --input {params.path} --out {output} > {log} 2>&1"
