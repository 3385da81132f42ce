"""The report's paper page (from RUN/paper/index.json), its link, and the label of results
computed for the top 5% when too few neurons are universal."""

from __future__ import annotations

import pandas as pd
from report_fixtures import XSS_SCRIPT, make_fake_run

from universal_neurons.report.build import ReportConfig, build_report
from universal_neurons.stages.paper import PaperConfig, run_paper

LABEL = "top 5% by excess correlation: 7 neurons (only 2 pass 0.5)"


def test_paper_page_and_selection_labels(tmp_path):
    run = make_fake_run(tmp_path / "run")
    claims = pd.read_parquet(run / "properties" / "claims.parquet") if (
        run / "properties" / "claims.parquet").exists() else pd.DataFrame(
        {"model": ["x"], "statistic": ["kurt"], "status": ["held"]})
    claims.assign(selection=LABEL).to_parquet(run / "properties" / "claims.parquet")
    run_paper(PaperConfig(out=str(run)))
    index = build_report(run, config=ReportConfig(top_n=0, max_pages=0))
    front = index.read_text()
    assert 'href="paper.html"' in front
    assert "Too few universal neurons" in front and LABEL in front
    page = (index.parent / "paper.html").read_text()
    for rid in ("universal_share", "alphabet", "entropy_pair", "bos_value_ratio"):
        assert f"<code>{rid}</code>" in page
    assert "19.4x" in page and "not computed: paper/raw_by_layer.parquet missing" in page


def test_no_paper_index_no_page(tmp_path):
    run = make_fake_run(tmp_path / "run")
    index = build_report(run, config=ReportConfig(top_n=0, max_pages=0))
    assert not (index.parent / "paper.html").exists() and "paper.html" not in index.read_text()


def test_paper_page_escapes(tmp_path):
    from universal_neurons.report.paper_page import render_paper_page

    html = render_paper_page({"reference": XSS_SCRIPT, "results": [
        {"id": XSS_SCRIPT, "status": "computed", "text": XSS_SCRIPT, "files": [XSS_SCRIPT],
         "selection": XSS_SCRIPT, "command": XSS_SCRIPT}, "junk"]})
    assert XSS_SCRIPT not in html
