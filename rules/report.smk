# Aggregation, figures, paper diff and the HTML report. All local rules: they are seconds of pandas and
# matplotlib, and must not queue behind GPU jobs. A figure reads only results/<scale>/tables/, so copying
# that folder from a cluster and asking for one figure reruns nothing upstream.
GRID_CSV = f"{RESULTS}/grid.csv"
TABLE_CELLS = sorted({row["cell_id"] for row in GRID.rows})


rule grid:
    output:
        grid=GRID_CSV,
        cells=expand(f"{RESULTS}/cells/{{cell}}.json", cell=CELL_IDS),
        plan=f"{RESULTS}/plan.csv",  # each job's GPUs, segments and GPU-hours (eldistill.grid.plan_table)
    log:
        f"{LOGS}/grid.log",
    localrule: True
    params:
        rows=GRID.rows,  # a changed grid rewrites the files (params trigger)
    run:
        from eldistill.grid import (
            plan_table,
            write_cells,
            write_grid_csv,
            write_plan_csv,
        )

        write_grid_csv(params.rows, output.grid)
        write_cells(GRID, f"{RESULTS}/cells")
        write_plan_csv(plan_table(GRID), output.plan)


if CFG["gradvar"]:

    rule gradvar:
        output:
            f"{RESULTS}/gradvar/gradvar.csv",
        log:
            f"{LOGS}/gradvar.log",
        benchmark:
            f"{RESULTS}/benchmarks/gradvar.tsv"
        threads: 1
        resources:
            gpu=1 if ON_GPU else 0,
            tasks_per_gpu=0,
            cpus_per_task=0,  # lets the profile's cpus_per_gpu reach sbatch (rules/distill.smk)
            runtime=lambda wc, attempt: 60 * attempt,
        params:
            ks=",".join(map(str, CFG["gradvar"]["ks"])),
            batches=",".join(map(str, CFG["gradvar"]["batches"])),
            repeats=CFG["gradvar"]["repeats"],
            resolution=CFG["gradvar"]["resolution"],
        shell:
            "OMP_NUM_THREADS={threads} eldistill gradvar --out {output} --ks {params.ks} --batches {params.batches}"
            " --repeats {params.repeats} --resolution {params.resolution} > {log} 2>&1"


rule tables:
    input:
        grid=GRID_CSV,
        fid=expand(f"{RESULTS}/runs/{{cell}}/fid.jsonl", cell=TABLE_CELLS),
        gradvar=[f"{RESULTS}/gradvar/gradvar.csv"] if CFG["gradvar"] else [],
    output:
        [
            report(path, category="Tables")
            for path in TABLE_FILES
            if path.endswith(".csv")
        ],
        [path for path in TABLE_FILES if not path.endswith(".csv")],
        samples=directory(f"{RESULTS}/tables/samples"),
    log:
        f"{LOGS}/tables.log",
    localrule: True
    params:
        runs=f"{RESULTS}/runs",
        benchmarks=f"{RESULTS}/benchmarks/distill",
        gradvar=lambda wc, input: f"--gradvar {input.gradvar}" if input.gradvar else "",
        learned=(
            f"--learned-below-fid {CFG['claims']['learned_below_fid']}"
            if CFG["claims"]["learned_below_fid"]
            else ""
        ),
        out=f"{RESULTS}/tables",
    shell:
        "eldistill tables --grid {input.grid} --runs {params.runs} --benchmarks {params.benchmarks}"
        " {params.gradvar} {params.learned} --out {params.out} > {log} 2>&1"


rule figure:
    input:
        TABLE_FILES,
        f"{RESULTS}/tables/samples",
    output:
        pdf=f"{RESULTS}/figures/{{figure}}.pdf",
        png=report(
            f"{RESULTS}/figures/{{figure}}.png",
            category="Figures",
            caption="report/figure.rst",
        ),
    log:
        f"{LOGS}/figures/{{figure}}.log",
    wildcard_constraints:
        figure=one_of(FIGURES),
    localrule: True
    params:
        tables=f"{RESULTS}/tables",
        out=f"{RESULTS}/figures",
    shell:
        "eldistill figures --tables {params.tables} --figure {wildcards.figure} --out {params.out} > {log} 2>&1"


rule diff:
    input:
        TABLE_FILES,
        reported=CFG["reported"],
        tolerances=CFG["tolerances"],
    output:
        csv=report(
            f"{RESULTS}/diff/diff.csv",
            category="Paper diff",
            caption="report/diff.rst",
        ),
        md=f"{RESULTS}/diff/diff.md",
    log:
        f"{LOGS}/diff.log",
    localrule: True
    params:
        tables=f"{RESULTS}/tables",
        out=f"{RESULTS}/diff",
    shell:
        "eldistill diff --reported {input.reported} --tables {params.tables} --tolerances {input.tolerances}"
        " --out {params.out} > {log} 2>&1"


# One named target per table and per figure: `snakemake table_frameworks`, `snakemake figure_batch_size`.
for _table in TABLES:

    rule:
        name:
            f"table_{_table}"
        input:
            [f"{RESULTS}/tables/{_table}.{ext}" for ext in ("csv", "md", "tex")],
        localrule: True


for _figure in FIGURES:

    rule:
        name:
            f"figure_{_figure}"
        input:
            [f"{RESULTS}/figures/{_figure}.{ext}" for ext in ("pdf", "png")],
        localrule: True


# `snakemake report`: everything, then Snakemake's own HTML report (tables, figures, the diff, the provenance
# of each job) as one self-contained file. --nolock: the running Snakemake holds the lock of this directory.
REPORT_CONFIGFILES = " ".join(str(Path(f).resolve()) for f in workflow.configfiles)
# The report opens on this description (rules/report/workflow.rst until `landing` has written it).
LANDING_RST = f"{RESULTS}/report/landing.rst"


REPORT_DESCRIPTION = (
    str(Path(LANDING_RST).resolve())
    if Path(LANDING_RST).is_file()
    else "report/workflow.rst"
)


report: REPORT_DESCRIPTION


# The report's first page: what was run, the claims' verdicts and the main table (eldistill.report.landing).
rule landing:
    input:
        TABLE_FILES,
    output:
        rst=LANDING_RST,
        yaml=f"{RESULTS}/report/landing.yaml",
    log:
        f"{LOGS}/landing.log",
    localrule: True
    params:
        tables=f"{RESULTS}/tables",
        description=CFG["description"],
    shell:
        "eldistill landing --tables {params.tables} --scale {SCALE} --description {params.description:q}"
        " --out {output.yaml} > {log} 2>&1"


rule report:
    input:
        TABLE_FILES,
        FIGURE_FILES,
        f"{RESULTS}/diff/diff.csv",
        landing=f"{RESULTS}/report/landing.yaml",
        description=LANDING_RST,
    output:
        f"{RESULTS}/report.html",
    log:
        f"{LOGS}/report.log",
    localrule: True
    params:
        snakefile=workflow.main_snakefile,
        configfiles=f"--configfile {REPORT_CONFIGFILES}" if REPORT_CONFIGFILES else "",
    shell:
        "snakemake --snakefile {params.snakefile} --nolock --report {output} {params.configfiles}"
        " --report-metadata {input.landing} > {log} 2>&1"


# `snakemake --nolock progress` (or `eldistill progress --configfile ...`): at any time during a campaign, the
# current tables, diff and a one-screen summary in results/<scale>/progress/. It reads files only and writes
# only there, so it needs no lock and leaves running jobs alone.
rule progress:
    localrule: True
    params:
        configfiles=f"--configfile {REPORT_CONFIGFILES}" if REPORT_CONFIGFILES else "",
    shell:
        "eldistill progress {params.configfiles} --out {RESULTS}/progress"


# A failed cell must not cost the campaign its tables: when a run ends with a failed job (after --keep-going
# has run everything else), the tables, the diff and the summary are written from what exists, the failed and
# unfinished cells marked with their log. They are dated 1970 so that the next run sees them out of date and
# completes them (retrying the failed cells). The exit code still says that a job failed.
onerror:
    from eldistill.report.progress import write_progress

    try:
        print(write_progress(GRID, out=RESULTS, stale=True))
    except Exception as e:  # never hide Snakemake's own error report behind ours
        print(
            f"eldistill: could not write the progress tables ({type(e).__name__}: {e})"
        )
