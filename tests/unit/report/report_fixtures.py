"""A fabricated run directory for the report tests (also used by tests/browser).

Two models (one named like a hub id, with a slash), 3 layers x 8 neurons, a neuron table
with every contract column, explanations, activation statistics in the engine's format, a
token dataset whose tokenizer has hostile tokens, plots, claims, family counts, entropy and
attention tables. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = ("toy-a", "org/toy-b")
N_LAYERS, D_MLP, N_SEQ, N_CTX, TOP_K = 3, 8, 6, 12, 4
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
FIGURES = {  # plots/ file -> colour (the browser tests count four figures)
    "universal_by_layer.png": (30, 90, 200),
    "prediction_curves.png": (120, 120, 0),
    "entropy_L2.3.png": (200, 30, 30),
    "attention_bos_value_norms.png": (30, 160, 60),
}
MORE_FIGURES = {"families_toy-a.png": (90, 30, 200), "my_extra_figure.png": (60, 60, 60)}
FIGURE_SECTION_IDS = {"universal_by_layer.png": "claims", "families_toy-a.png": "families",
                      "prediction_curves.png": "prediction", "entropy_L2.3.png": "entropy",
                      "attention_bos_value_norms.png": "attention",
                      "my_extra_figure.png": "figures"}
"""Report section (its HTML id) of each figure of FIGURES and MORE_FIGURES."""
HOSTILE = [XSS_SCRIPT, XSS_IMG, "</script><!--", "a&amp;b", "\u2028line"]
VOCAB = ["<bos>", "the", " cat", " sat", "\n", *HOSTILE, " on", " mat", "!"]
STATS = ["w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty", "mean", "var",
         "skew", "kurt", "sparsity", "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt"]


def png_bytes(width: int = 8, height: int = 6, rgb: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    """A valid solid-colour PNG (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def neuron_frame(model: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = N_LAYERS * D_MLP
    layer, neuron = np.divmod(np.arange(n), D_MLP)
    mean_corr = rng.uniform(0.2, 0.95, n)
    mean_base = rng.uniform(0.1, 0.4, n)
    df = pd.DataFrame({"layer": layer, "neuron": neuron,
                       "max_corr": np.minimum(mean_corr + 0.03, 1), "mean_corr": mean_corr,
                       "min_corr": mean_corr - 0.03, "max_baseline": mean_base + 0.02,
                       "mean_baseline": mean_base, "min_baseline": mean_base - 0.02})
    df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]
    df["is_universal"] = df["excess_corr"] > 0.5
    for other in MODELS:
        if other != model:
            df[f"{other}_best"] = [f"L{i // D_MLP}.{i % D_MLP}" for i in rng.integers(0, n, n)]
            df[f"{other}_corr"] = df["mean_corr"]
            df[f"{other}_baseline"] = df["mean_baseline"]
    for c in STATS:
        df[c] = rng.normal(size=n)
    df.loc[0, "kurt"] = np.nan  # a dead neuron's moments
    return df


def long_explanations_frame(df: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The explain stage's format: top-k features per explained neuron (here: every other)."""
    rows = []
    for layer, neuron in zip(df["layer"][::2], df["neuron"][::2]):
        for rank in range(k):
            feature = ["unigram:" + XSS_SCRIPT, "alpha:c", "is_month"][rank]
            rows.append({"layer": layer, "neuron": neuron, "rank": rank,
                         "kind": "current" if rank else "prev", "feature": feature,
                         "group": feature.split(":")[0], "vr": 0.5 / (rank + 1),
                         "mean_in": 1.0, "mean_out": 0.1, "frac_in": 0.02})
    return pd.DataFrame(rows)


def write_correlations(run: Path, a: str, b: str, seed: int, k: int = 3, bins: int = 20) -> None:
    """``correlations/<a>__<b>.safetensors`` as the correlate stage writes it."""
    import torch
    from safetensors.torch import save_file

    from universal_neurons.constants import safe_name
    from universal_neurons.engine.summary import NeuronSummary

    n = N_LAYERS * D_MLP
    rho = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    s = NeuronSummary(n, n, k=k, bins=bins)
    s.add(rho, slice(0, n), 0)
    s.add_baseline(rho * 0.3, slice(0, n))
    tensors = {key: v.contiguous() for key, v in s.finalize().items()}
    tensors["hist_edges"] = torch.linspace(-1, 1, bins + 1, dtype=torch.float64)
    meta = {"model": a, "partner": b, "n_layers": str(N_LAYERS), "d_mlp": str(D_MLP),
            "partner_n_layers": str(N_LAYERS), "partner_d_mlp": str(D_MLP),
            "index": "layer * d_mlp + neuron"}
    (run / "correlations").mkdir(exist_ok=True)
    save_file(tensors, str(run / "correlations" / f"{safe_name(a)}__{safe_name(b)}.safetensors"),
              metadata=meta)


def family_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The families stage's columns: ``families`` (``;``-joined), ``family_scores`` and
    ``family_features`` (JSON objects), one hostile family name among them."""
    fams, scores, feats = [], [], []
    for i in range(len(df)):
        f = [] if i % 3 == 2 else (["unigram:" + XSS_SCRIPT] if i % 3 == 0 else ["position", XSS_IMG])
        fams.append(";".join(f))
        scores.append(json.dumps({name: 0.5 + 0.01 * i for name in f}))
        feats.append(json.dumps({name: "current/" + XSS_SCRIPT for name in f}))
    return df.assign(families=fams, family_scores=scores, family_features=feats)


def wide_explanations_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A wide explanations table (one row per neuron: list ``families``, aligned scores)."""
    fams = [["unigram:" + XSS_SCRIPT] if i % 2 else [] for i in range(len(df))]
    return pd.DataFrame({"layer": df["layer"], "neuron": df["neuron"], "families": fams,
                         "family_scores": [[0.7] * len(f) for f in fams],
                         "top_feature": [XSS_IMG] * len(df)})


def write_stats(path: Path, model: str, seed: int, n_vocab: int) -> None:
    from universal_neurons.engine.activation_stats_result import ActivationStatsResult

    rng = np.random.default_rng(seed)
    shape = (N_LAYERS, D_MLP)
    nb = 16
    hist = rng.integers(0, 50, size=(*shape, nb + 2)).astype(np.int64)
    top_values = -np.sort(-rng.uniform(0.5, 3.0, size=(*shape, TOP_K)), axis=-1).astype(np.float32)
    top_seq = rng.integers(0, N_SEQ, size=(*shape, TOP_K))
    top_pos = rng.integers(1, N_CTX, size=(*shape, TOP_K))
    top_seq[0, 1, -1] = -1  # fewer examples than k
    token_ids = np.arange(1, n_vocab)
    known = dict(
        model=model, n_tokens=N_SEQ * N_CTX, sparsity_rule="post>0",
        mean=rng.normal(size=shape), var=rng.uniform(size=shape), skew=rng.normal(size=shape),
        kurt=rng.uniform(3, 9, size=shape), sparsity=rng.uniform(size=shape),
        pre_min=np.full(shape, -4.0), pre_max=np.full(shape, 4.0), hist=hist,
        hist_lo=np.full(shape, -2.0), hist_hi=np.full(shape, 2.0), hist_width=np.full(shape, 0.25),
        top_values=top_values, top_seq=top_seq, top_pos=top_pos, token_ids=token_ids,
        token_count=np.full(len(token_ids), 5), token_mean=rng.normal(size=(len(token_ids), *shape)),
        token_max=rng.normal(size=(len(token_ids), *shape)).astype(np.float32))
    if seed == 0:  # the whole-vocabulary top tokens (one model; the other has only the table)
        top_ids = np.full((*shape, 5), -1, np.int32)
        top_ids[..., :3] = [VOCAB.index(XSS_IMG), VOCAB.index(" cat"), VOCAB.index("\n")]
        known.update(vocab_token_count=np.arange(n_vocab, dtype=np.int64) + 5,
                     token_top_ids=top_ids,
                     token_top_mean=np.where(top_ids >= 0, 2.0, np.nan).astype(np.float32))
    if seed == 0:  # a version-2 file: shown examples with their window activations
        known.update(window_examples(shape))
        tops = [v for kind, _, _, v in EXAMPLES if kind == 0]  # the top candidates agree
        known["top_values"][..., :len(tops)] = tops
        known["top_values"][..., len(tops):] = np.minimum(known["top_values"][..., len(tops):],
                                                          min(tops))
    # fields added to the format later than this fixture (without a default) get placeholders
    extra = {f.name: np.zeros(shape) for f in dataclasses.fields(ActivationStatsResult)
             if f.name not in known and f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING}
    ActivationStatsResult(**known, **extra).save(path)


EX_BEFORE, EX_AFTER = 3, 2
EXAMPLES = [(0, 0, 5, 2.0), (0, 1, 6, 1.5), (2, 2, 4, 0.8), (1, 3, 1, -0.2)]
"""``(kind, seq, pos, value)`` of every neuron's shown examples in the version-2 fixture:
two top, one from the band 50-100 %, one negative (window reaching before the sequence)."""


def window_acts(value: float, pos: int) -> np.ndarray:
    """The fixture's window: ``value * (w + 1) / width`` at offset ``w``, NaN before pos 0;
    a negative example's last token is +1 (a positive value in a negative window)."""
    w = EX_BEFORE + 1 + EX_AFTER
    acts = value * np.arange(1, w + 1, dtype=np.float32) / w
    acts[EX_BEFORE] = value
    if value < 0:
        acts[-1] = 1.0
    acts[pos - EX_BEFORE + np.arange(w) < 0] = np.nan
    return acts


def window_examples(shape) -> dict:
    e, w = len(EXAMPLES), EX_BEFORE + 1 + EX_AFTER
    out = dict(example_seq=np.zeros((*shape, e), np.int64), example_pos=np.zeros((*shape, e), np.int64),
               example_value=np.zeros((*shape, e), np.float32),
               example_kind=np.zeros((*shape, e), np.int8),
               example_acts=np.zeros((*shape, e, w), np.float32),
               band_edges=np.tile(np.array([[0.5, 1.0]], np.float32), (*shape, 1, 1)),
               examples={"before": EX_BEFORE, "after": EX_AFTER, "n_top": 2, "n_negative": 1,
                         "per_band": 1, "bands": [[0.5, 1.0]]})
    for i, (kind, seq, pos, value) in enumerate(EXAMPLES):
        out["example_kind"][..., i], out["example_seq"][..., i] = kind, seq
        out["example_pos"][..., i], out["example_value"][..., i] = pos, value
        out["example_acts"][..., i, :] = window_acts(value, pos)
    return out


def write_weights(directory: Path, seed: int, k: int = 3) -> None:
    """Top/bottom vocabulary tokens in the weights analysis' format (ids of hostile tokens)."""
    from universal_neurons.analysis.weights import WeightStats

    rng = np.random.default_rng(seed)
    shape = (N_LAYERS, D_MLP, k)
    hostile = [VOCAB.index(t) for t in (XSS_SCRIPT, XSS_IMG, "</script><!--")]
    arrays = {"vocab_top_ids": np.broadcast_to(np.array(hostile), shape).copy(),
              "vocab_top_cos": np.broadcast_to(np.array([0.9, 0.5, 0.3]), shape).copy(),
              "vocab_bottom_ids": rng.integers(1, len(VOCAB), size=shape),
              "vocab_bottom_cos": -rng.uniform(0.1, 0.9, size=shape)}
    directory.mkdir(parents=True, exist_ok=True)
    WeightStats(arrays).save(directory)


def write_dataset(run: Path) -> None:
    """``RUN/dataset`` (tokens.npy + meta.json) and ``RUN/tokenizer/tokenizer.json``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<bos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (run / "tokenizer").mkdir(parents=True)
    tok.save(str(run / "tokenizer" / "tokenizer.json"))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, len(VOCAB), size=(N_SEQ, N_CTX)).astype(np.uint16)
    tokens[:, 0] = 0
    tokens[:, 3] = VOCAB.index(XSS_SCRIPT)
    tokens[:, 5] = VOCAB.index(XSS_IMG)
    d = run / "dataset"
    d.mkdir()
    np.save(d / "tokens.npy", tokens)
    (d / "meta.json").write_text(json.dumps({
        "n_seq": N_SEQ, "n_ctx": N_CTX, "tokenizer_fingerprint": "fake",
        "tokenizer": str(run / "tokenizer" / "tokenizer.json")}))


def make_fake_run(run: Path, *, with_stats: bool = True) -> Path:
    """Write the fabricated run directory into ``run`` and return it."""
    from universal_neurons.constants import safe_name

    run.mkdir(parents=True, exist_ok=True)
    (run / "manifest.json").write_text(json.dumps({  # as the correlate stage records itself
        "stages": {"correlate": {"config": {"models": ["toy"], "dataset": None, "threshold": 0.5},
                                 "models": list(MODELS),
                                 "tokens": {"dataset_tokens": N_SEQ * N_CTX,
                                            "kept_tokens": N_SEQ * (N_CTX - 1)},
                                 "dataset": {"path": "dataset"},
                                 "finished_at": "2025-01-01T00:00:00"}},
        "versions": {"universal-neurons": "0.1.0"}}))
    for i, m in enumerate(MODELS):
        df = neuron_frame(m, seed=i)
        if i == 0:
            df = family_columns(df)
        (run / "neurons").mkdir(exist_ok=True)
        df.to_parquet(run / "neurons" / f"{safe_name(m)}.parquet", index=False)
        if i == 1:  # toy-a has families in its table, org/toy-b the explain stage's table
            (run / "explanations").mkdir(exist_ok=True)
            long_explanations_frame(df).to_parquet(
                run / "explanations" / f"{safe_name(m)}.parquet", index=False)
        write_weights(run / "stats" / safe_name(m), seed=i)
        if with_stats:
            write_stats(run / "stats" / safe_name(m) / "activation_stats.safetensors", m, seed=i,
                        n_vocab=len(VOCAB))
        for j, other in enumerate(MODELS):
            if other != m:
                write_correlations(run, m, other, seed=10 * i + j)
    write_dataset(run)
    (run / "plots").mkdir()
    for name, rgb in FIGURES.items():
        (run / "plots" / name).write_bytes(png_bytes(rgb=rgb))
    (run / "properties").mkdir()
    pd.DataFrame({"claim": ["universal neurons have large weight norm", XSS_SCRIPT],
                  "holds": [True, False], "p_value": [0.001, 0.4]}).to_csv(
        run / "properties" / "claims.csv", index=False)
    (run / "families").mkdir()
    pd.DataFrame({"family": ["unigram", XSS_IMG], "count": [5, 2]}).to_csv(
        run / "families" / "toy-a_counts.csv", index=False)
    (run / "entropy").mkdir()
    pd.DataFrame({"neuron": ["L2.3"], "delta_entropy": [0.12]}).to_csv(
        run / "entropy" / "summary.csv", index=False)
    (run / "attention").mkdir()
    (run / "attention" / "heads.json").write_text(json.dumps([{"head": "L1H2", "score": 0.7}]))
    return run
