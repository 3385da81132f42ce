"""The front page: figures first, with captions, in the sections constants.FIGURE_SECTIONS
names (new sections appear without code changes)."""

from __future__ import annotations

import re

from report_fixtures import MORE_FIGURES, make_fake_run, png_bytes

from universal_neurons import constants
from universal_neurons.report import index_page
from universal_neurons.report.build import ReportConfig, build_report
from universal_neurons.report.index_page import figure_title


def test_figure_titles():
    assert figure_title("corr_vs_baseline_org--toy-b.png") == (
        "Excess correlation against the rotated baseline: org--toy-b")
    assert figure_title("universal_by_layer.png") == "Universal neurons by layer"
    assert figure_title("entropy_L2.3.png").startswith("Entropy neuron L2.3")
    assert figure_title("paper_raw_by_layer.png") == "Raw by layer (paper)"
    assert figure_title("my_extra_figure.png") == "My extra figure"


def test_figures_before_tables_and_captions_not_file_names(tmp_path):
    run = make_fake_run(tmp_path / "run")
    for name, rgb in MORE_FIGURES.items():
        (run / "plots" / name).write_bytes(png_bytes(rgb=rgb))
    text = build_report(run, config=ReportConfig(top_n=0)).read_text(encoding="utf-8")
    fam = re.search(r'<section id="families">(.*?)</section>', text, re.S).group(1)
    assert "<figure>" in fam and "<table>" in fam and fam.index("<figure>") < fam.index("<table>")
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", text)
    assert captions and not any(c.endswith(".png") for c in captions)
    assert "Neurons per family: toy-a" in captions


def test_a_section_named_only_in_figure_sections_gets_its_own(tmp_path, monkeypatch):
    sections = {**constants.FIGURE_SECTIONS, "paper_{id}.png": "paper"}
    patterns = [(re.compile(".+".join(map(re.escape, re.split(r"\{[a-z_]+\}", f)))), s)
                for f, s in sorted(sections.items(), key=lambda kv: "{" in kv[0])]
    monkeypatch.setattr(constants, "_FIGURE_PATTERNS", patterns)
    monkeypatch.setattr(index_page, "FIGURE_SECTIONS", sections)
    run = make_fake_run(tmp_path / "run")
    (run / "plots" / "paper_new_result.png").write_bytes(png_bytes())
    text = build_report(run, config=ReportConfig(top_n=0)).read_text(encoding="utf-8")
    block = re.search(r'<section id="paper"><h2>Figures of the paper</h2>(.*?)</section>', text, re.S)
    assert block and 'src="plots/paper_new_result.png"' in block.group(1)
    assert "New result (paper)" in block.group(1) and 'href="#paper"' in text
    other = re.search(r'<section id="figures">(.*?)</section>', text, re.S).group(1)
    assert "paper_new_result" not in other
