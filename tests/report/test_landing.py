"""`eldistill landing`: the report's first page says what was run and shows every verdict and the main table."""

from __future__ import annotations

import pandas as pd
import yaml
from docutils.core import publish_parts

from eldistill.cli import main
from eldistill.report.claims import make_claims, paired_el_differences, summarize

from .test_claims import NO_CURVES, world


def test_landing_page_has_what_was_run_every_verdict_and_the_main_table(tmp_path):
    cells = world({"sid": [-3.0, -2.0, -4.0], "dmd": [1.0, -1.0, 0.5], "di": [3.0, 2.0, 4.0]})
    cells.loc[cells["distiller"] == "sid", "table"] = "main"
    tables = tmp_path / "tables"
    tables.mkdir()
    cells.to_csv(tables / "cells.csv", index=False)
    make_claims(cells, NO_CURVES).to_csv(tables / "claims.csv", index=False)
    summarize(cells).to_csv(tables / "summary.csv", index=False)
    paired_el_differences(cells).to_csv(tables / "el_effect.csv", index=False)
    out = tmp_path / "report" / "landing.yaml"
    assert main(["landing", "--tables", str(tables), "--scale", "mini", "--out", str(out)]) == 0
    html = publish_parts(out.with_suffix(".rst").read_text(), writer="html")["html_body"]
    expected = ["What was run", "18 cells", "6 settings", "seeds 0, 1, 2", "NOT comparable", "SUPPORTED"]
    expected += ["INCONCLUSIVE", "CONTRADICTED", "Main table", "digits16/sid/el/bs32", "[-5.484, -0.5159]"]
    for text in expected:
        assert text in html, text
    assert html.index("What was run") < html.index("SUPPORTED") < html.index("Main table")
    assert "<table" in html and "System Message" not in html  # the rst tables parse
    numbers = yaml.safe_load(out.read_text())
    assert numbers == {"cells": 18, "training seeds": 3, "claims supported": 1, "claims contradicted": 1,
                       "claims inconclusive": 1, "claims excluded": 0}  # fmt: skip
    assert pd.read_csv(tables / "claims.csv")["verdict"].notna().all()
