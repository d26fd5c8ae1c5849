"""The code base stays lint-clean (ruff) and the Snakemake files stay snakefmt-formatted, so a format
change never silently rewrites a rule's shell text (which would make Snakemake rerun training)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is a test extra")
def test_ruff_clean():
    out = _run(["ruff", "check", "workflow_src", "tests", "benchmarks"])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt is a test extra")
def test_snakefmt_clean():
    files = [str(p.relative_to(REPO)) for p in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]]
    files = [f for f in files if (REPO / f).exists()]
    if not files:
        pytest.skip("no Snakemake files yet")
    out = _run(["snakefmt", "--check", *files])
    assert out.returncode == 0, out.stdout + out.stderr
