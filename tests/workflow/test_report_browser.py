"""The HTML report in a real browser: `snakemake report` on copied tables (the ci config with three seeds),
opened in headless Chromium. The landing page must render, say what was run, show the claims' verdicts and
the main table as visible text, and every figure and table embedded in the report must load.

Chromium is Debian's `chromium`, installed here like the local SLURM (root and apt-get); the test is skipped
only where it cannot be installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eldistill.grid import grid
from eldistill.io import append_jsonl
from eldistill.report.tables import make_tables

from .conftest import REPO, snakemake

CI = REPO / "config" / "ci.yaml"
SEEDS = "experiments:\n  frameworks:\n    vary: {distiller: [sid], el: [false, true], seed: [0, 1, 2]}\n"

# Runs in the page after the report's own scripts: every embedded result is decoded (images through <img>, so a
# broken one fails to load as it would for a reader) and the page's visible text is collected.
CHECK = """<script>
window.addEventListener('load', async () => {
  await new Promise(r => setTimeout(r, 3000));
  const out = {text: document.body.innerText, results: {}};
  for (const [path, r] of Object.entries(results)) {
    if (r.mime_type.startsWith('image/')) {
      out.results[path] = await new Promise(done => {
        const im = new Image();
        im.onload = () => done(im.naturalWidth > 0 ? 'ok' : 'empty');
        im.onerror = () => done('error');
        im.src = r.data_uri;
      });
    } else {
      const text = atob(r.data_uri.split('base64,')[1] || '');
      out.results[path] = text.includes(',') && text.includes('\\n') ? 'ok' : 'empty';
    }
  }
  out.broken = [...document.images].filter(i => i.complete && i.naturalWidth === 0).map(i => i.src.slice(0, 60));
  const pre = document.createElement('pre');
  pre.id = 'eldistill-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium needs Debian's chromium package (root and apt-get to install it)")
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"could not install chromium: {done.stderr[-500:]}")
    return shutil.which("chromium")


def copied_tables(work, overlay):
    """results/ci/tables as a cluster would leave them: per-seed FIDs where EL lowers SiD's FID by ~3."""
    scratch = work / "scratch"
    g = grid([CI, overlay], scratch / "grid.csv")
    rng = np.random.default_rng(0)
    for cell_id, cell in g.cells.items():
        run = scratch / "runs" / cell_id
        fid = 30.0 - (3.0 if cell.el.enabled else 0.0) + rng.normal(0.0, 0.3)
        for images, f in ((64, fid * 1.5), (128, fid)):
            record = {"cell_id": cell_id, "images_seen": images, "protocol": "mini-classifier", "num_samples": 128,
                      "feature_net": "classifier.pt", "reference": "ref.npz", "aggregation": "final"}  # fmt: skip
            append_jsonl({**record, "kind": "snapshot", "fid": f, "checkpoint": f"g{images}"}, run / "fid.jsonl")
        append_jsonl({**record, "kind": "final", "fid": fid}, run / "fid.jsonl")
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(run / "samples.png")
    gradvar = scratch / "gradvar.csv"
    gradvar.write_text("K,batch,variance\n1,8,1.0\n2,8,0.5\n1,16,0.5\n2,16,0.25\n")
    make_tables(scratch / "grid.csv", scratch / "runs", work / "results" / "ci" / "tables", None, gradvar)
    shutil.rmtree(scratch)


@pytest.mark.slow
def test_report_landing_page_in_headless_chromium(tmp_path):
    browser = chromium()
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(SEEDS)
    copied_tables(tmp_path, overlay)
    run = snakemake(["--cores", "1", "report", "--configfile", str(CI), str(overlay), "--directory", str(tmp_path)],
                    timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = tmp_path / "results" / "ci" / "report.html"
    page = tmp_path / "checked.html"
    head, _, tail = report.read_text().rpartition("</body>")  # the page's own end (a script quotes one earlier)
    page.write_text(head + CHECK + "</body>" + tail)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--virtual-time-budget=30000", "--dump-dom", page.as_uri()]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = re.search(r'<pre id="eldistill-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the page did not finish rendering: {dom.stderr[-2000:]}"
    check = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))

    text = check["text"]
    assert "What was run" in text and "Scale ci" in text  # the landing page, not only the rule graph
    claims = pd.read_csv(tmp_path / "results" / "ci" / "tables" / "claims.csv")
    judged = claims[claims["verdict"].notna()]
    assert "SUPPORTED" in set(judged["verdict"].str.upper())  # EL lowers SiD's FID by 3 on every seed
    lines = text.splitlines()  # a rendered table row is one line of tab-separated cells
    for _, row in judged.iterrows():
        cells = [row["claim"], row["distiller"], row["scope"], row["verdict"].upper()]
        shown = [line for line in lines if line.split("\t")[:3] == cells[:3]]
        assert shown and shown[0].split("\t")[-1] == cells[3], f"claim row {cells} is not visible: {shown}"
    assert "Main table" in text and "digits8/sid2a/el/bs16" in text
    images = {p: s for p, s in check["results"].items() if p.endswith(".png")}
    drawn = {f"results/ci/figures/{p.name}" for p in (tmp_path / "results" / "ci" / "figures").glob("*.png")}
    assert "results/ci/figures/claims.png" in drawn and set(images) == drawn, (images, drawn)
    assert set(images.values()) == {"ok"}, images
    assert {p: s for p, s in check["results"].items() if s != "ok"} == {}
    assert check["broken"] == []
