"""Benchmark of the explain stage's one-pass algebra (not a timed test).

Synthetic data at GPT-2 scale: a 50,257-token vocabulary of pseudo-words, Zipf-distributed
token ids in windows of 512, activations for N neurons (a pool of random batches; a few
neurons are made to depend on the current / previous token so the result can be checked),
and per-row labels shaped like spaCy's (pos 18, dep 45, ent 19, in_entity 2 labels) plus
position bins and context flags. Times (1) the token-table pass (the accumulator's
``update`` on every batch, what the engine adds to a forward pass) and (2) the
variance-reduction algebra for every feature, and prints neurons x features x tokens.
Prints the expected duration first (sizes and a quick fp32 matmul rate; rough). fp32 and
fp64 are native on every CPU, so no precision is skipped.

    .venv/bin/python benchmarks/bench_explain.py                 # 2,000 neurons, 1M tokens
    .venv/bin/python benchmarks/bench_explain.py --neurons 500 --tokens 200k   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch
from expected_duration import announce, explain_seconds, matmul_gflops

from universal_neurons.analysis.explain import explain_table
from universal_neurons.analysis.features import build_vocab_features
from universal_neurons.analysis.sequence_features import context_codes, position_codes
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.token_table import RowLabels, TokenTableAccumulator, token_table_bytes


def pseudo_vocab(n: int, seed: int = 0) -> list[str]:
    """Strings that look like a BPE vocabulary: words in several surface forms, numbers,
    punctuation, word pieces."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    p = np.array([12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 6, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9,
                  1.5, 1, .8, .2, .2, .1, .1])
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9), p=p / p.sum()))
             for _ in range(n)]
    out = ["<|endoftext|>"] + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["\n", "\n\n", " "]
    out += [str(i) for i in range(1000)] + [f" {y}" for y in range(1800, 2030)]
    out += ["the", " the", " The", "The", " of", " and", " in", " to", " a", " is", " May",
            " June", " Monday", " Texas", " he", " she", " they", " it", " we", " you"]
    for w in words:
        r = rng.random()
        out.append(" " + w if r < .5 else w if r < .75 else " " + w.capitalize() if r < .9
                   else w.upper())
        if len(out) >= n:
            break
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--neurons", type=int, default=2000)
    ap.add_argument("--tokens", default="1M", help="e.g. 1M, 200k")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--batch-seqs", type=int, default=16)
    ap.add_argument("--precision", choices=("fp32", "fp64"), default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from universal_neurons.data.dataset import parse_count

    if args.threads:
        torch.set_num_threads(args.threads)
    n_tokens = parse_count(args.tokens)
    V, N, n_ctx = args.vocab, args.neurons, args.n_ctx
    n_seq = max(1, n_tokens // n_ctx)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    rate = matmul_gflops()
    expected = explain_seconds(n_tokens, N, V, rate, args.precision)
    announce(expected, {"fp32": rate})

    t = time.perf_counter()
    strings = pseudo_vocab(V)
    ids = np.minimum(rng.zipf(1.15, size=(n_seq, n_ctx)), V - 1)  # [n_seq, n_ctx]
    the = [i for i, w in enumerate(strings) if w.strip().lower() == "the"]
    perm = rng.permutation(V)  # frequent ids spread over the vocabulary, "the" among the top
    perm = np.concatenate([the, perm[~np.isin(perm, the)]])
    ids = perm[ids]
    ids[:, 0] = 0  # BOS
    pos, pos_labels = position_codes(n_seq, n_ctx, 16)
    ctx = context_codes(ids, strings).astype(np.uint8)
    spacy_like = [rng.integers(0, k, size=(n_seq, n_ctx), dtype=np.uint8) for k in (18, 45, 19)]
    spacy_like.append((spacy_like[2] > 0).astype(np.uint8))
    labels = RowLabels(np.stack(spacy_like + [pos] + [ctx[..., i] for i in range(4)], -1),
                       ("pos", "dep", "ent", "in_entity", "position", "in_quotes", "in_parens",
                        "in_brackets", "after_newline"),
                       (tuple(f"p{i}" for i in range(18)), tuple(f"d{i}" for i in range(45)),
                        tuple(f"e{i}" for i in range(19)), ("False", "True"), pos_labels,
                        *[("False", "True")] * 4))
    rows = args.batch_seqs * (n_ctx - 1)
    pool = [torch.randn(rows, N) for _ in range(3)]  # [rows, N] activations, reused
    is_the = torch.zeros(V)
    is_the[the] = 3.0
    print(f"setup {time.perf_counter() - t:.1f}s; token table {token_table_bytes(V, N) / 2**30:.2f}"
          f" GiB + {token_table_bytes(0, N, n_label_groups=labels.n_groups) / 2**20:.0f} MiB "
          f"for {labels.n_groups} label groups")

    acc = TokenTableAccumulator("bench", V, N, None, labels,
                                compute_dtype=torch.float64 if args.precision == "fp64"
                                else torch.float32)
    t = time.perf_counter()
    kept = 0
    for b, s in enumerate(range(0, n_seq, args.batch_seqs)):
        tok = torch.from_numpy(ids[s:s + args.batch_seqs])  # [b, n_ctx]
        nb = tok.shape[0]
        prev = torch.cat([torch.full((nb, 1), -1), tok[:, :-1]], 1)
        keep = torch.zeros_like(tok, dtype=torch.bool)
        keep[:, 1:] = True
        a = pool[b % len(pool)][: nb * (n_ctx - 1)].clone()
        cur_ids, prev_ids = tok[keep], prev[keep]
        a[:, 0] += is_the[cur_ids]  # neuron 0: fires on "the" (a unigram neuron)
        a[:, 1] += is_the[prev_ids]  # neuron 1: fires after "the" (a previous-token neuron)
        batch = ActivationBatch(
            acts={"bench": {"post": a}}, token_ids=cur_ids, prev_token_ids=prev_ids,
            positions=torch.arange(n_ctx).repeat(nb)[keep.reshape(-1)],
            seq_index=(torch.arange(nb) + s).repeat_interleave(n_ctx)[keep.reshape(-1)])
        acc.update(batch)
        kept += batch.n
    t_pass = time.perf_counter() - t
    table = acc.finalize()

    t = time.perf_counter()
    feats = build_vocab_features(strings, table.current.count.numpy(), special_ids=[0])
    t_feats = time.perf_counter() - t
    t = time.perf_counter()
    ex = explain_table(table, feats, d_mlp=N, strings=strings)
    top = ex.top(3)
    t_vr = time.perf_counter() - t
    F = len(ex.columns)
    by_kind = {k: sum(c.startswith(k + "/") for c in ex.columns) for k in ("current", "prev",
                                                                            "sequence")}
    total = t_pass + t_feats + t_vr
    print(f"{N:,} neurons x {F:,} features ({by_kind}) x {kept:,} tokens")
    print(f"  token-table pass  {t_pass:7.1f}s  ({kept / t_pass / 1e3:.0f}k tokens/s, "
          f"{kept * N / t_pass / 1e6:.1f}M neuron-rows/s)")
    print(f"  vocab features    {t_feats:7.1f}s  ({feats.shape[1] - 1} token features)")
    print(f"  VR algebra        {t_vr:7.1f}s")
    print(f"  total             {total:7.1f}s  ({'under' if total < 600 else 'OVER'} 10 min); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB, "
          f"load average now {os.getloadavg()[0]:.1f}; expected "
          f"~{sum(v for k, v in expected.items() if k != 'setup'):.0f}s")
    best = top[top["rank"] == 0].set_index("neuron")
    print(f"  check: neuron 0 best {best.loc[0, 'kind']}/{best.loc[0, 'feature']} "
          f"(VR {best.loc[0, 'vr']:.2f}); neuron 1 best {best.loc[1, 'kind']}/"
          f"{best.loc[1, 'feature']} (VR {best.loc[1, 'vr']:.2f})")


if __name__ == "__main__":
    main()
