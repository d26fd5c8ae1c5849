# Datasets: the offline miniature is made here; a paper dataset (prepared with EDM's dataset_tool.py) is
# linked in from data_root, so that cell ids never depend on where a site keeps its data.
MADE_DATASETS = [n for n, d in CFG["datasets"].items() if "make" in d]
LINKED_DATASETS = [n for n, d in CFG["datasets"].items() if "path" in d]


def external_dataset(wildcards):
    path = Path(CFG["datasets"][wildcards.dataset]["path"])
    return str(path if path.is_absolute() else Path(CFG["data_root"]) / path)


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
    shell:
        "ln -sfn $(realpath {input}) {output} > {log} 2>&1"
