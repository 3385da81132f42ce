"""The explain stage end to end on a tiny random GPT-2: engine pass, tiling, outputs, and VR
against activations captured directly and grouped with pandas."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import loaded_model
from universal_neurons.analysis.features import surface_strings
from universal_neurons.stages.explain import ExplainConfig, explanation_paths, run_explain
from universal_neurons.stages.families import FamiliesConfig, run_families

WORDS = "the cat dog sat on a mat red blue day night tree river (stone) \"light\" 1999".split()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(LoadedModel-like toy model, token dataset path)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from universal_neurons.data.dataset import build_token_dataset

    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 30)))).capitalize() + "."
            + ("\n" if i % 2 else "") for i in range(60)]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = loaded_model("gpt2", name="toy", tokenizer=tok, perturb=0.0, n_layers=2, d_model=32,
                         n_heads=2, d_mlp=128, vocab=len(tok), n_ctx=64)
    root = tmp_path_factory.mktemp("toy")
    (root / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    ds = build_token_dataset(root / "docs.jsonl", tok, root / "tokens", n_ctx=32,
                             show_progress=False)
    return model, ds


def _config(out, ds, **kw):
    kw = {"neurons": "all", **kw}
    return ExplainConfig(model="toy", out=str(out), dataset=str(ds.path), spacy=False,
                         position_bins=4, unigram_min_count=3, precision="fp64",
                         batch_size=16, progress=False, **kw)


def test_explain_stage_matches_direct_activations(toy, tmp_path):
    from universal_neurons.data.tokens import keep_mask

    model, ds = toy
    res = run_explain(_config(tmp_path / "run", ds), model=model)
    paths = explanation_paths(tmp_path / "run", "toy")
    wide = pd.read_parquet(paths["vr"])
    top = pd.read_parquet(paths["top"])
    ad = model.adapter
    assert len(wide) == ad.n_layers * ad.d_mlp and top.groupby(["layer", "neuron"]).size().max() == 10
    assert set(top["kind"]) <= {"current", "prev", "sequence"}
    # oracle: capture the activations directly and compute VR with pandas
    tokens = np.asarray(ds.tokens, dtype=np.int64)
    keep = keep_mask(tokens, model.tokenizer)
    acts = ad.capture(torch.from_numpy(tokens))["post"]  # [L, n_seq, n_ctx, d_mlp]
    feats = pd.read_parquet(res.paths["vocab_features"]).set_index("token_id")
    prev = np.full_like(tokens, -1)
    prev[:, 1:] = tokens[:, :-1]
    strings = surface_strings(model.tokenizer)
    name = next(c for c in feats.columns if c.startswith("unigram:"))
    for layer, neuron in [(0, 3), (1, 100)]:
        a = acts[layer, :, :, neuron].double().numpy()
        row = wide[(wide.layer == layer) & (wide.neuron == neuron)].iloc[0]
        for feat in (name, "starts_w_space", "contains_period"):
            member = feats[feat].to_numpy()
            for kind, ids, rows in (("current", tokens, keep), ("prev", prev, keep & (prev >= 0))):
                x, g = a[rows], member[ids[rows]]
                within = sum(x[g == v].var() * (g == v).mean() for v in (True, False) if
                             (g == v).any())
                assert row[f"{kind}/{feat}"] == pytest.approx(1 - within / x.var(), abs=2e-6)
        assert row["n_rows"] == keep.sum()
        assert json.loads(row["top_tokens"])[0] in strings
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["explain:toy"]
    assert m["kept_tokens"] == keep.sum() and m["n_tiles"] == 1


def test_tiling_gives_the_same_numbers(toy, tmp_path):
    model, ds = toy
    one = run_explain(_config(tmp_path / "one", ds), model=model).explanations
    tiled = run_explain(_config(tmp_path / "tiled", ds, max_memory="2M"), model=model)
    manifest = json.loads((tmp_path / "tiled" / "manifest.json").read_text())
    assert manifest["stages"]["explain:toy"]["n_tiles"] > 1
    np.testing.assert_allclose(tiled.explanations.vr, one.vr, atol=1e-12)
    assert tiled.explanations.columns == one.columns
    # sequence labels are cached per dataset under RUN/features
    assert list((tmp_path / "tiled" / "features").glob("*/sequence_labels-*.npz"))


def test_families_after_explain(toy, tmp_path):
    model, ds = toy
    run_explain(_config(tmp_path / "run", ds, neurons="L0.1,L1.5"), model=model)
    counts = run_families(FamiliesConfig(str(tmp_path / "run"), weights=False, plots=False))
    assert list(counts) == ["toy"]
    table = pd.read_parquet(tmp_path / "run" / "neurons" / "toy.parquet")
    assert table[["layer", "neuron"]].values.tolist() == [[0, 1], [1, 5]]
    assert {"families", "family_scores", "family_features"} <= set(table.columns)


def test_topic_features_join_without_changing_the_others(toy, tmp_path):
    from universal_neurons.analysis.topics import derive_topics
    from universal_neurons.data.tokens import keep_mask, special_ids

    model, ds = toy
    off = run_explain(_config(tmp_path / "off", ds, topics=0), model=model)
    on = run_explain(_config(tmp_path / "on", ds, topics=3, topic_tokens=8), model=model)
    topic_cols = [c for c in on.explanations.columns if c.split("/", 1)[1].startswith("topic:")]
    assert topic_cols and not any("topic:" in c for c in off.explanations.columns)
    rest = [on.explanations.columns.index(c) for c in off.explanations.columns]
    assert [on.explanations.columns[i] for i in rest] == off.explanations.columns
    np.testing.assert_allclose(on.explanations.vr[:, rest], off.explanations.vr, rtol=0,
                               atol=1e-12)  # the same sums, a larger feature matrix
    # the sets are analysis.topics' on the whole dataset, written beside the features
    strings = surface_strings(model.tokenizer)
    topics = derive_topics(np.asarray(ds.tokens), strings, eos_id=int(ds.meta["eos_id"]), k=3,
                           n_tokens=8, special_ids=special_ids(model.tokenizer).tolist())
    table = pd.read_parquet(on.paths["topics"])
    assert sorted(set(table["topic"])) == sorted(topics.columns)
    feats = pd.read_parquet(on.paths["vocab_features"]).set_index("token_id")
    for col, ids in zip(topics.columns, topics.token_ids):
        assert set(np.flatnonzero(feats[col].to_numpy())) == set(ids.tolist())
    # oracle: the VR of a topic feature from directly captured activations
    tokens = np.asarray(ds.tokens, dtype=np.int64)
    keep = keep_mask(tokens, model.tokenizer)
    acts = model.adapter.capture(torch.from_numpy(tokens))["post"]
    wide = pd.read_parquet(on.paths["vr"])
    member = feats[topics.columns[0]].to_numpy()
    for layer, neuron in [(0, 7), (1, 90)]:
        x = acts[layer, :, :, neuron].double().numpy()[keep]
        g = member[tokens[keep]]
        within = sum(x[g == v].var() * (g == v).mean() for v in (True, False) if (g == v).any())
        row = wide[(wide.layer == layer) & (wide.neuron == neuron)].iloc[0]
        assert row[f"current/{topics.columns[0]}"] == pytest.approx(1 - within / x.var(),
                                                                     abs=2e-6)
