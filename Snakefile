# eldistill: the paper's grid as a Snakemake workflow. Every rule is a thin call of one `eldistill` verb.
#   snakemake --cores 2 all_tables                           the CPU miniature (config/config.yaml)
#   snakemake --profile slurm all_tables                     the paper's grid on SLURM (config/paper.yaml)
#   snakemake --cores 2 all_tables --configfile=config/ci.yaml   seconds (tests)
# Targets: all (tables, figures, diff and the HTML report results/<scale>/report.html), all_tables,
# all_figures, diff, report, table_<name>, figure_<name>.
from snakemake.utils import min_version

min_version("9.20")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/teachers.smk"
include: "rules/distill.smk"
include: "rules/evaluate.smk"
include: "rules/evaluate_teacher.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        TABLE_FILES,
        FIGURE_FILES,
        f"{RESULTS}/diff/diff.csv",
        f"{RESULTS}/report.html",


rule all_tables:
    input:
        TABLE_FILES,


rule all_figures:
    input:
        FIGURE_FILES,
