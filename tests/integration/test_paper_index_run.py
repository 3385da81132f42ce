"""A short ``run`` on the bundled suite writes the paper index: every required id, each
with files that exist or the reason it is not computed. Several minutes on a loaded 2-core
CPU (``-m "not slow"`` leaves it out)."""

from __future__ import annotations

import json

import pytest

from universal_neurons.analysis.paper_index import REQUIRED_IDS
from universal_neurons.models.registry import is_bundled_built

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not is_bundled_built(), reason="bundled suite not built")]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from universal_neurons.cli import main

    run = tmp_path_factory.mktemp("paper") / "run"
    assert main(["run", "--models", "tiny-gpt2", "--out", str(run), "--tokens", "2048",
                 "--explain-tokens", "2048", "--intervention-tokens", "128",
                 "--skip", "entropy", "--quiet"]) == 0
    return run


def test_every_required_id_has_files_or_a_reason(short_run):
    index = json.loads((short_run / "paper" / "index.json").read_text())
    entries = {e["id"]: e for e in index["results"]}
    assert list(entries) == list(REQUIRED_IDS) and index["reference"] == "tiny-gpt2-a"
    for e in entries.values():
        assert all((short_run / f).is_file() for f in e["files"]), e
        if e["status"] == "computed":
            assert e["files"] and e["text"] and e["reason"] is None, e
        else:
            assert e["status"] == "not computed" and e["reason"], e
    for rid in ("entropy_sweep", "entropy_pair"):
        assert entries[rid]["reason"].startswith("stage entropy skipped"), entries[rid]
    for rid in ("universal_share", "universal_by_layer", "property_percentiles", "families",
                "alphabet", "attention_heuristic", "attention_path_ablation", "bos_value_ratio",
                "corr_distributions", "depth_specialisation", "raw_by_layer"):
        assert entries[rid]["status"] == "computed", entries[rid]
    assert 0 <= entries["depth_specialisation"]["value"] <= 100  # read by paper_summaries
    topic = entries["topic_neurons"]  # explain's default topics, then paper-results' pass
    assert topic["status"] == "computed", topic
    assert {"paper/topic_neurons.parquet", "plots/paper_topic_neurons.png"} <= set(topic["files"])
    claims = entries["property_claims"]  # computed, or for the labelled top 5% when too few
    assert claims["status"] == "computed", claims
    n_universal = int(entries["universal_share"]["text"].split("(")[1].split()[0])
    if n_universal < 10:
        assert claims["selection"].startswith("top 5% by excess correlation: 103 neurons")
        assert entries["families"]["selection"] == claims["selection"]
    assert (short_run / "paper" / "index.md").read_text().count("\n| `") == len(REQUIRED_IDS)
    assert 'href="paper.html"' in (short_run / "report" / "index.html").read_text()
    assert (short_run / "report" / "paper.html").is_file()
