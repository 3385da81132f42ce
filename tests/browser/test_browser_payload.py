"""The browser's packed, column-oriented data: exact round trips and its size (no Chromium)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_browser_scale import PARTNERS, synthetic_neurons

from universal_neurons.report.browser import browser_data, browser_rows, round_sig_array
from universal_neurons.report.html import json_for_script
from universal_neurons.report.packing import (
    ALPHABET,
    pack_floats,
    pack_ints,
    unpack_floats,
    unpack_ints,
)


def test_floats_round_trip_to_what_is_displayed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20_000) * 10.0 ** rng.integers(-12, 12, 20_000)
    edge = [0.0, -0.0, np.nan, np.inf, -np.inf, 1000, 999.96, 9999.6, 9999.4, 0.001, 1.0, 10.0,
            0.1, 0.3, 2.5e-7, 99995.0, -123456789.0, 1e-300, 1e300]
    x = np.concatenate([edge, x])
    packed = pack_floats(x)
    assert set(packed["f"]) <= set(ALPHABET) and len(packed["f"]) == packed["w"] * len(x)
    assert unpack_floats(packed) == round_sig_array(x)  # the same floats, None for NaN/inf


def test_float_width_follows_the_range():
    corr = np.random.default_rng(1).uniform(-1, 1, 1000)
    assert pack_floats(corr)["w"] == 3  # a few decades: 3 characters a value
    assert pack_floats(np.array([1e-30, 1e30]))["w"] == 4
    assert pack_floats(np.array([np.nan, np.nan])) == {"w": 1, "e0": 0, "f": "AA"}


def test_ints_round_trip():
    values = [3, None, 5, 7_000_000, -2, 0]
    assert unpack_ints(pack_ints(values)) == values
    assert unpack_ints(pack_ints(np.array([1.0, np.nan]))) == [1, None]


def test_rows_decode_to_the_table():
    df = synthetic_neurons(2_000)
    df.loc[3, "seed-b_best"] = None
    data = browser_data(df, "seed-a", ("seed-a", *PARTNERS), [(0, 5)])
    keys = [c["key"] for c in data["columns"]]
    rows = browser_rows(data)
    assert len(rows) == len(df) and data["pages"] == [5]
    col = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
    assert col["name"][:2] == ["L0.0", "L0.1"]
    assert col["layer"] == df.layer.tolist() and col["neuron"] == df.neuron.tolist()
    assert col["is_universal"] == df.is_universal.tolist()
    best = [f"b:{v}" for v in df["seed-b_best"][:5]]  # shown with the partner's label
    assert col["seed-b_best"][:5] == [*best[:3], None, best[4]]
    assert "names" in data["values"][keys.index("seed-b_best")]  # neuron names packed as numbers
    assert col["families"][:6] == [[f] if f else [] for f in df.families[:6]]
    assert col["kurt"] == round_sig_array(df["kurt"])
    assert col["excess_corr"] == pytest.approx(df.excess_corr.tolist(), rel=1e-3)


def test_payload_size_per_neuron():
    df = synthetic_neurons(10_000)
    text = json_for_script(browser_data(df, "seed-a", ("seed-a", *PARTNERS), []), finite=True)
    per_row = len(text.encode()) / len(df)
    assert per_row < 110, per_row  # 26 float columns, 4 partner names, layer, index, families


def test_text_columns_keep_hostile_strings_as_data():
    df = pd.DataFrame({"layer": [0, 0], "neuron": [0, 1], "top_explanation": ["</script><b>", None]})
    data = browser_data(df, "m", ("m",), [])
    text = json_for_script(data, finite=True)
    assert "</script" not in text and "<b>" not in text
    assert [r[-1] for r in browser_rows(data)] == ["</script><b>", None]
