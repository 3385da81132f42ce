"""build_report on fabricated run directories: content, escaping, missing parts, bounds."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import (
    D_MLP,
    FIGURE_SECTION_IDS,
    FIGURES,
    MODELS,
    MORE_FIGURES,
    N_LAYERS,
    XSS_SCRIPT,
    make_fake_run,
    png_bytes,
    wide_explanations_frame,
)

from universal_neurons.cli import main
from universal_neurons.constants import safe_name
from universal_neurons.errors import UserError
from universal_neurons.report.browser import browser_file, browser_rows
from universal_neurons.report.build import ReportConfig, build_report, select_pages
from universal_neurons.report.front import FRONT_ROWS
from universal_neurons.report.rundata import RunData, paper_reference

RAW_HOSTILE = (XSS_SCRIPT, "<img src=x", "</script><!--")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("run") / "run")
    index = build_report(run, config=ReportConfig(top_n=3, max_pages=0))
    return run, index


def _html_files(report: Path) -> list[Path]:
    return sorted(report.rglob("*.html"))


def _embedded(page: Path) -> dict:
    m = re.search(r'<script type="application/json" id="neuron-data">(.*?)</script>',
                  page.read_text(encoding="utf-8"), re.S)
    assert m is not None
    data = json.loads(m.group(1))  # column-oriented; the tests read rows and per-row page flags
    with_page = set(data["pages"])
    return {**data, "rows": browser_rows(data), "pages": [int(i in with_page) for i in range(data["n"])]}


def test_report_layout(built):
    run, index = built
    report = run / "report"
    assert index == report / "index.html" and index.is_file()
    for m in MODELS:
        assert (report / browser_file(m)).is_file()
        assert (report / "neurons" / safe_name(m)).is_dir()
    assert sorted(p.name for p in (report / "plots").iterdir()) == sorted(
        p.name for p in (run / "plots").iterdir())
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]  # no temp left


def test_no_hostile_string_reaches_any_page_unescaped(built):
    run, _ = built
    files = _html_files(run / "report")
    assert len(files) > 5
    for f in files:
        text = f.read_text(encoding="utf-8")
        for bad in RAW_HOSTILE:
            assert bad not in text, f"{bad!r} unescaped in {f}"
        assert "onerror=alert(1)>" not in text.replace("onerror=alert(1)&gt;", "")
        # the only <script> elements are ours: the JSON block and inline code without src
        assert not re.search(r"<script[^>]*\ssrc=", text)


def test_hostile_tokens_are_shown_escaped(built):
    run, _ = built
    page = (run / "report" / "neurons" / "toy-a").glob("*.html")
    text = next(iter(page)).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # example tokens / vocab
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text


def test_index_summary(built):
    run, index = built
    text = index.read_text(encoding="utf-8")
    df = pd.read_parquet(run / "neurons" / "toy-a.parquet")
    pct = 100 * df["is_universal"].mean()
    assert f"{pct:.2f}%" in text
    for sid in ("summary", "figures", "claims", "families", "prediction", "entropy", "attention"):
        assert f'id="{sid}"' in text
    assert "not computed" not in text
    assert "66 kept of 72 streamed" in text  # the correlate stage's token counts
    for name in FIGURES:
        assert f'src="plots/{name}"' in text
    assert "Universal neurons (excess correlation &gt; 0.5)" in text
    assert "delta_entropy" in text and "L1H2" in text  # entropy and attention tables


def test_index_figures_in_the_section_their_file_names(tmp_path):
    run = make_fake_run(tmp_path / "run")
    for name, rgb in MORE_FIGURES.items():
        (run / "plots" / name).write_bytes(png_bytes(rgb=rgb))
    text = build_report(run, config=ReportConfig(top_n=0)).read_text(encoding="utf-8")
    for name, sid in FIGURE_SECTION_IDS.items():
        block = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S).group(1)
        assert f'src="plots/{name}"' in block, (name, sid)
    assert text.count("<figure>") == len(FIGURE_SECTION_IDS) == len(FIGURES) + len(MORE_FIGURES)


def test_index_heading_shows_the_recorded_threshold(tmp_path):
    run = make_fake_run(tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["correlate"]["config"]["threshold"] = 0.35
    (run / "manifest.json").write_text(json.dumps(manifest))
    text = build_report(run, config=ReportConfig(top_n=0)).read_text(encoding="utf-8")
    assert "Universal neurons (excess correlation &gt; 0.35)" in text and "0.5)" not in text
    del manifest["stages"]["correlate"]["config"]["threshold"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    text = build_report(run, config=ReportConfig(top_n=0)).read_text(encoding="utf-8")
    assert "Universal neurons (as marked in the neuron tables)" in text


def test_browser_data(built):
    run, _ = built
    data = _embedded(run / "report" / browser_file("toy-a"))
    keys = [c["key"] for c in data["columns"]]
    assert {"name", "layer", "is_universal", "families", "excess_corr", "org/toy-b_corr",
            "org/toy-b_best", "sparsity", "vocab_kurt"} <= set(keys)
    assert "org/toy-b_baseline" not in keys and "family_scores" not in keys
    data = _embedded(run / "report" / browser_file("org/toy-b"))
    keys = [c["key"] for c in data["columns"]]
    assert {"top_explanation", "top_vr", "toy-a_corr"} <= set(keys) and "families" not in keys
    top = [r[keys.index("top_explanation")] for r in data["rows"]]
    assert top[0] == "prev/unigram:" + XSS_SCRIPT and top[1] is None
    assert len(data["rows"]) == N_LAYERS * D_MLP == len(data["pages"])
    df = pd.read_parquet(run / "neurons" / "org--toy-b.parquet")
    row = data["rows"][5]
    assert row[keys.index("name")] == f"L{df.layer[5]}.{df.neuron[5]}"
    assert row[keys.index("excess_corr")] == pytest.approx(df.excess_corr[5], rel=1e-3)
    assert data["pageDir"] == "neurons/org--toy-b/"


def test_neuron_pages_are_bounded_and_complete(built):
    run, _ = built
    df = pd.read_parquet(run / "neurons" / "toy-a.parquet")
    expected = set(df[df.is_universal].apply(lambda r: f"L{r.layer}.{r.neuron}", axis=1))
    top = df.nlargest(10, "excess_corr")  # listed under "Most universal neurons" (top_n=3)
    expected |= {f"L{a}.{b}" for a, b in zip(top.layer, top.neuron)}
    expected.add("L2.3")  # named by the entropy table (max_pages=0: nothing else)
    other = pd.read_parquet(run / "neurons" / "org--toy-b.parquet")  # best partners of its
    expected |= set(other[other.is_universal]["toy-a_best"])  # universal neurons
    fams: dict[str, list] = {}  # the 3 best-scoring neurons of each family
    for r in df.itertuples():
        for f, score in json.loads(r.family_scores).items():
            fams.setdefault(f, []).append((-score, -r.excess_corr, f"L{r.layer}.{r.neuron}"))
    expected |= {name for v in fams.values() for _, _, name in sorted(v)[:3]}
    pages = {p.stem for p in (run / "report" / "neurons" / "toy-a").glob("*.html")}
    assert pages == expected
    text = (run / "report" / "neurons" / "toy-a" / f"{sorted(pages)[0]}.html").read_text()
    for sid in ("statistics", "partners", "histogram", "examples", "tokens", "explanations"):
        assert f'id="{sid}"' in text
    assert "not computed" not in text
    assert text.count("class=example") >= 1 and "<svg" in text
    assert 'href="../../index.html"' in text


def test_select_pages_order_and_cap():
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1],
                       "excess_corr": [0.1, 0.9, 0.6, None],
                       "is_universal": [False, True, True, False]})
    assert select_pages(df, "m", ReportConfig(top_n=1, max_pages=0)) == [(0, 1), (1, 0)]
    # the budget is filled by excess correlation (missing last)
    assert select_pages(df, "m", ReportConfig(top_n=0, max_pages=3)) == [(0, 1), (1, 0), (0, 0)]
    assert select_pages(df, "m", ReportConfig(top_n=0)) == [(0, 1), (1, 0), (0, 0), (1, 1)]
    cfg = ReportConfig(top_n=0, max_pages=3, neurons=("L1.1", "other:L0.0"))
    assert select_pages(df, "m", cfg) == [(1, 1), (0, 1), (1, 0)]
    assert select_pages(df.drop(columns=["excess_corr", "is_universal"]), "m", ReportConfig()) == []
    with pytest.raises(ValueError):
        ReportConfig(neurons=("X9",))


def test_missing_stages_say_not_computed(tmp_path):
    """Only a bare neuron table: every other section reports "not computed"."""
    run = tmp_path / "run"
    (run / "neurons").mkdir(parents=True)
    pd.DataFrame({"layer": [0, 0], "neuron": [0, 1]}).to_parquet(run / "neurons" / "m.parquet")
    index = build_report(run)
    text = index.read_text()
    for sid in ("claims", "families", "prediction", "entropy", "attention", "top"):
        block = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S).group(1)
        assert "not computed" in block, sid
    data = _embedded(run / "report" / browser_file("m"))
    assert len(data["rows"]) == 2 and data["sort"] is None


def test_neuron_page_without_stats_or_dataset(tmp_path):
    run = make_fake_run(tmp_path / "run", with_stats=False)
    for d in ("dataset", "tokenizer", "stats", "correlations"):
        shutil.rmtree(run / d)
    build_report(run, config=ReportConfig(top_n=1))
    page = next((run / "report" / "neurons" / "toy-a").glob("*.html")).read_text()
    for sid in ("histogram", "examples", "tokens"):
        block = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S).group(1)
        assert "not computed" in block, sid
    assert "not computed" not in re.search(r'<section id="partners">(.*?)</section>', page, re.S).group(1)


def test_examples_without_tokenizer_show_ids(tmp_path):
    run = make_fake_run(tmp_path / "run")
    shutil.rmtree(run / "tokenizer")
    build_report(run, config=ReportConfig(top_n=1))
    page = next((run / "report" / "neurons" / "toy-a").glob("*.html")).read_text()
    assert re.search(r'<([ib])[^>]* title=[^ >]*>#\d+</\1>', page)


def test_empty_and_damaged_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = build_report(empty).read_text()
    assert "not computed" in text and "Universal neurons report" in text

    bad = make_fake_run(tmp_path / "bad")
    (bad / "neurons" / "toy-a.parquet").write_bytes(b"not parquet")
    (bad / "manifest.json").write_text("{broken")
    (bad / "properties" / "claims.csv").write_bytes(b"\xff\xfe\x00garbage")
    text = build_report(bad, config=ReportConfig(top_n=1)).read_text()
    assert "Problems while building this report" in text and "toy-a.parquet" in text
    assert (bad / "report" / browser_file("org/toy-b")).is_file()
    assert not (bad / "report" / browser_file("toy-a")).exists()


def test_rebuild_replaces_old_report(tmp_path):
    run = make_fake_run(tmp_path / "run")
    build_report(run, config=ReportConfig(top_n=1))
    stale = run / "report" / "stale.html"
    stale.write_text("old")
    build_report(run, config=ReportConfig(top_n=1))
    assert not stale.exists() and (run / "report" / "index.html").is_file()
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_cli(tmp_path, capsys):
    run = make_fake_run(tmp_path / "run")
    assert main(["report", str(run), "--quiet", "--top-n", "2", "--out", str(tmp_path / "site"),
                 "--neuron", "toy-a:L0.0"]) == 0
    assert (tmp_path / "site" / "neurons" / "toy-a" / "L0.0.html").is_file()
    assert "report written to" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope"), "--quiet"]) == 2
    assert main(["report", str(run), "--quiet", "--neuron", "bogus"]) == 2


def test_paper_reference_and_manifest_models(tmp_path):
    assert paper_reference("stanford-gpt2-small-a") == 4.16
    assert paper_reference("EleutherAI/pythia-160m") == 1.26
    assert paper_reference("tiny-gpt2-a") is None
    run = tmp_path / "r"
    (run / "neurons").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(
        {"stages": {"correlate": {"config": {"models": ["b", "a/x"]}, "n_tokens": 7}}}))
    pd.DataFrame({"layer": [0], "neuron": [0]}).to_parquet(run / "neurons" / "c.parquet")
    rd = RunData(run)
    assert rd.models == ["b", "a/x", "c"] and rd.n_tokens() == 7


def test_long_explanations_and_correlation_summaries(built):
    """org/toy-b has the explain stage's long table; pages show it and the top-k partners."""
    run, _ = built
    pages = {p.stem for p in (run / "report" / "neurons" / "org--toy-b").glob("*.html")}
    explained = {f"L{i // D_MLP}.{i % D_MLP}" for i in range(0, N_LAYERS * D_MLP, 2)}
    name = sorted(pages & explained)[0]  # the explain stage analysed every other neuron
    layer, neuron = (int(x) for x in name[1:].split("."))
    page = (run / "report" / "neurons" / "org--toy-b" / f"{name}.html").read_text()
    block = re.search(r'<section id="explanations">(.*?)</section>', page, re.S).group(1)
    assert "variance reduction" in block and block.count("<tr>") == 1 + 3
    assert "unigram:&lt;script&gt;" in block and "alpha:c" in block
    partners = re.search(r'<section id="partners">(.*?)</section>', page, re.S).group(1)
    assert "top matches" in partners and partners.count("<svg") == 1
    from safetensors import safe_open

    with safe_open(str(run / "correlations" / "org--toy-b__toy-a.safetensors"), "np") as f:
        best = int(f.get_slice("top_indices")[layer * D_MLP + neuron][0])
    assert f"L{best // D_MLP}.{best % D_MLP}" in partners


def test_stage_tables_are_deduplicated_and_truncated(tmp_path):
    run = make_fake_run(tmp_path / "run")
    big = pd.DataFrame({"layer": range(500), "score": [0.5] * 500})
    big.to_parquet(run / "entropy" / "candidates.parquet")
    big.to_csv(run / "entropy" / "candidates.csv", index=False)  # the CSV copy write_table adds
    big.to_parquet(run / "entropy" / "sweep_tokens.parquet")  # per-token: not shown
    text = build_report(run, config=ReportConfig(top_n=1)).read_text()
    block = re.search(r'<section id="entropy">(.*?)</section>', text, re.S).group(1)
    assert "entropy/candidates.parquet" in block and "candidates.csv" not in block
    assert "sweep_tokens" not in block and "entropy/summary.csv" in block
    assert "<h3>Entropy neuron candidates" in block and "<h3>Summary</h3>" in block
    assert f"first {FRONT_ROWS} of 500 rows" in block
    assert block.count("<tr>") == (1 + FRONT_ROWS) + (1 + 1)


def test_refuses_to_replace_what_is_not_a_report(tmp_path):
    run = make_fake_run(tmp_path / "run")
    with pytest.raises(UserError):
        build_report(run, out_dir=run)
    with pytest.raises(UserError):
        build_report(run, out_dir=tmp_path)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data.txt").write_text("keep me")
    with pytest.raises(UserError):
        build_report(run, out_dir=other)
    assert (other / "data.txt").read_text() == "keep me" and (run / "neurons").is_dir()


def test_families_and_wide_explanations(tmp_path):
    run = make_fake_run(tmp_path / "run")
    build_report(run, config=ReportConfig(top_n=24))
    page = (run / "report" / "neurons" / "toy-a" / "L0.0.html").read_text()
    block = re.search(r'<section id="explanations">(.*?)</section>', page, re.S).group(1)
    assert "explaining feature" in block and "current/&lt;script&gt;" in block
    assert "family_features" not in page  # shown in the families table, not as a raw column
    assert "no family explains" in (run / "report" / "neurons" / "toy-a" / "L0.2.html").read_text()

    # the wide explanations contract: list families with aligned scores, other columns
    wide = wide_explanations_frame(pd.read_parquet(run / "neurons" / "org--toy-b.parquet"))
    wide.to_parquet(run / "explanations" / "org--toy-b.parquet", index=False)
    build_report(run, config=ReportConfig(top_n=24))
    data = _embedded(run / "report" / browser_file("org/toy-b"))
    keys = [c["key"] for c in data["columns"]]
    fams = [r[keys.index("families")] for r in data["rows"]]
    assert fams[:2] == [[], ["unigram:" + XSS_SCRIPT]] and "top_feature" in keys
    page = (run / "report" / "neurons" / "org--toy-b" / "L0.1.html").read_text()
    block = re.search(r'<section id="explanations">(.*?)</section>', page, re.S).group(1)
    assert "0.7" in block and "top_feature" in block and "&quot;&gt;&lt;img" in block


def test_damaged_per_neuron_files_are_reported_once(tmp_path):
    run = make_fake_run(tmp_path / "run")
    (run / "stats" / "toy-a" / "activation_stats.safetensors").write_bytes(b"\x00" * 64)
    (run / "correlations" / "toy-a__org--toy-b.safetensors").write_bytes(b"garbage")
    text = build_report(run, config=ReportConfig(top_n=5)).read_text()
    problems = re.search(r'<section id="problems">(.*?)</section>', text, re.S).group(1)
    assert problems.count("activation_stats.safetensors") == 1
    assert problems.count("toy-a__org--toy-b.safetensors") == 1
    page = next((run / "report" / "neurons" / "toy-a").glob("*.html")).read_text()
    hist = re.search(r'<section id="histogram">(.*?)</section>', page, re.S).group(1)
    assert "not computed" in hist and "<svg" not in hist


def test_top_tokens_of_the_whole_vocabulary_else_the_frequent_table(built):
    run, _ = built
    a = next((run / "report" / "neurons" / "toy-a").glob("*.html")).read_text()
    block = re.search(r'<section id="tokens">(.*?)</section>', a, re.S).group(1)
    assert "highest mean activation (whole vocabulary" in block
    assert "&lt;img" in block and "onerror=alert(1)&gt;" in block and "<img" not in block
    assert "\u2423</span>cat" in block and "\u23ce" in block
    b = next((run / "report" / "neurons" / "org--toy-b").glob("*.html")).read_text()
    block = re.search(r'<section id="tokens">(.*?)</section>', b, re.S).group(1)
    assert "highest mean activation (frequent tokens)" in block
