"""The paper index's references and values against the paper's text (arXiv 2401.12181v1,
transcribed below), and docs/paper.md against the index."""

from __future__ import annotations

import re
from pathlib import Path

from universal_neurons.analysis.paper_index import RESULTS
from universal_neurons.report.rundata import PAPER_UNIVERSAL_PCT

DOC = Path(__file__).resolve().parents[3] / "docs" / "paper.md"

# Section and figure of each result in the paper's text.
WHERE = {
    "universal_share": "§4.1",
    "corr_distributions": "§4.1, Fig. 2a; §6.3, Fig. 11",
    "universal_by_layer": "App. B, Fig. 14 (nearest)",
    "depth_specialisation": "§4.1, Fig. 2c",
    "property_percentiles": "§4.2, Fig. 3",
    "property_claims": "§4.2",
    "raw_by_layer": "App. B, Fig. 14",
    "families": "§4.3, Figs. 1, 4",
    "unigram_roles": "§4.3, Figs. 4a, 15",
    "alphabet": "§4.3, Fig. 17",
    "position": "§4.3, Figs. 1c, 19",
    "previous_token": "§4.3, Figs. 1b, 18",
    "syntax": "§4.3, Figs. 4b, 20",
    "source_neurons": "§4.3, Figs. 1d, 21",
    "prediction_curves": "§5.1, Fig. 6a-b",
    "prediction_skew_late": "§5.1, Fig. 6c",
    "prediction_class_split": "§5.1, Fig. 5",
    "prediction_conditional": "§5.1, Fig. 24",
    "entropy_weights": "§5.2, Fig. 7a-b",
    "entropy_sweep": "§5.2, Fig. 7c-f",
    "entropy_pair": "§5.2",
    "attention_heuristic": "§5.3, Fig. 8a",
    "attention_path_ablation": "§5.3, Fig. 8b-c",
    "bos_value_ratio": "§5.3",
}
# Numbers as the text states them: §4.3 (18 of 26 letters), §5.2 (cos -0.886), §5.3 (19.4x).
VALUES = {"alphabet": 18, "entropy_pair": -0.886, "bos_value_ratio": 19.4}
# Universal neurons / all neurons in the paper's released universal.csv tables.
COUNTS = {"stanford-gpt2-small-a": (1533, 12 * 3072),
          "stanford-gpt2-medium-a": (1211, 24 * 4096),
          "pythia-160m": (465, 12 * 3072)}

BY_ID = {r.id: r for r in RESULTS}


def test_where_follows_the_paper():
    assert set(WHERE) <= set(BY_ID)
    assert {i: BY_ID[i].where for i in WHERE} == WHERE


def test_values_follow_the_paper():
    for i, v in VALUES.items():
        assert BY_ID[i].paper_value == v
    shares = {m: round(100 * n / total, 2) for m, (n, total) in COUNTS.items()}
    assert shares == PAPER_UNIVERSAL_PCT
    assert BY_ID["universal_share"].paper_value == shares["stanford-gpt2-small-a"]
    for m, name in [("stanford-gpt2-small-a", "GPT2-small-a"),
                    ("stanford-gpt2-medium-a", "GPT2-medium-a"), ("pythia-160m", "Pythia-160m")]:
        assert f"{name} {shares[m]:.2f}%" in BY_ID["universal_share"].paper


def test_descriptions_say_what_the_paper_says():
    # §5.1: suppression neurons fire more when the next token IS in their set.
    assert "is not" not in BY_ID["prediction_conditional"].paper
    # §4.3: the 18 letters have a universal alphabet neuron; §5.3: the median head.
    assert "universal" in BY_ID["alphabet"].paper
    assert "median head" in BY_ID["bos_value_ratio"].paper


def _section(text: str, title: str) -> list[str]:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None].splitlines()


def test_bundled_table_copies_the_index():
    lines = _section(DOC.read_text(), "### The bundled suite next to the paper")
    seen = set()
    for line in lines:
        m = re.match(r"^\| `(\w+)` \| ", line)
        cells = line[2:-2].split(" | ")
        if not m or m.group(1) not in WHERE or len(cells) != 4:
            continue
        seen.add(m.group(1))
        assert cells[1:3] == [BY_ID[m.group(1)].where, BY_ID[m.group(1)].paper]
    assert seen == set(WHERE)


def test_check_table_lists_every_result():
    lines = _section(DOC.read_text(), "## Checked against the paper's text")
    listed = {i for line in lines if line.startswith("| ")
              for i in re.findall(r"`(\w+)`", line.split(" | ")[0])}
    assert set(WHERE) <= listed
