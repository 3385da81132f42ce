import numpy as np
import pytest
from data_helpers import make_documents, train_tokenizer

from universal_neurons.data.tokens import (
    check_same_tokenizer,
    keep_mask,
    newline_token_ids,
    special_ids,
    tokenizer_fingerprint,
)
from universal_neurons.errors import UserError


def test_fingerprint_stable_and_vocab_sensitive(tokenizer, other_tokenizer):
    fp = tokenizer_fingerprint(tokenizer)
    assert len(fp) == 64 and fp == tokenizer_fingerprint(tokenizer)
    retrained = train_tokenizer(make_documents(300, seed=1), vocab_size=300)[0]
    assert tokenizer_fingerprint(retrained) == fp
    assert tokenizer_fingerprint(other_tokenizer) != fp


def test_special_and_newline_ids(tokenizer):
    assert special_ids(tokenizer).tolist() == [0]
    nl = newline_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("Ċ") in nl  # byte-level "\n"
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        assert (i in nl) == (text.isspace() and "\n" in text), (i, text)


def test_keep_mask_drops_bos_and_newlines_only(tokenizer, raw_tokenizer):
    text = "The cat sat.\nA dog ran\n\non the mat. \n Red fox"
    ids = [0] + raw_tokenizer.encode(text).ids + [0]
    tokens = np.array([ids, ids[::-1]], dtype=np.uint16)  # [n_seq, n_ctx]
    expected = np.array([[not (t == 0 or (raw_tokenizer.decode([t]).isspace()
                                            and "\n" in raw_tokenizer.decode([t])))
                          for t in row] for row in tokens.tolist()])
    mask = keep_mask(tokens, tokenizer)
    assert mask.shape == tokens.shape and mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)
    assert not mask[:, 0].any() and 0 < (~mask).sum() < mask.size
    # every word survives: dropping only BOS/newline ids loses no letters
    kept = raw_tokenizer.decode([t for t, k in zip(ids, mask[0]) if k])
    assert kept.split() == text.replace("\n", "").split()
    assert keep_mask(tokens, tokenizer, keep_all=True).all()


def test_keep_mask_paper_rule_drops_pad_and_single_newline_only(tokenizer, raw_tokenizer):
    """The paper (correlations_fast.py): ``isin(inputs, [pad_token_id,
    to_single_token('\\n')], invert=True)``."""
    text = "The cat sat.\nA dog ran\n\non the mat. \n Red fox"
    ids = [0] + raw_tokenizer.encode(text).ids + [0]
    tokens = np.array([ids, ids[::-1]], dtype=np.uint16)
    single_nl = raw_tokenizer.encode("\n").ids
    assert len(single_nl) == 1
    forbidden = [tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                 else tokenizer.eos_token_id, single_nl[0]]
    expected = ~np.isin(tokens, forbidden)
    mask = keep_mask(tokens, tokenizer, rule="paper")
    np.testing.assert_array_equal(mask, expected)
    ours = keep_mask(tokens, tokenizer)
    assert (mask >= ours).all()  # the paper drops a subset of what we drop
    multi = [t for t in ids if raw_tokenizer.decode([t]).isspace() and raw_tokenizer.decode([t]) != "\n"
             and "\n" in raw_tokenizer.decode([t])]
    if multi:  # e.g. "\n\n": kept by the paper, dropped by ours
        assert mask[0, ids.index(multi[0])] and not ours[0, ids.index(multi[0])]
    with pytest.raises(ValueError, match="rule"):
        keep_mask(tokens, tokenizer, rule="other")  # type: ignore[arg-type]


def test_keep_mask_rejects_foreign_ids(tokenizer):
    with pytest.raises(UserError, match="300"):
        keep_mask(np.array([[0, 5, 300]]), tokenizer)


def test_check_same_tokenizer(tokenizer, other_tokenizer):
    check_same_tokenizer("a", tokenizer, "b", tokenizer)
    with pytest.raises(UserError, match="'model-a'.*'model-b'"):
        check_same_tokenizer("model-a", tokenizer, "model-b", other_tokenizer)
