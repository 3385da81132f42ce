"""Binary token features for any vocabulary (the paper's vocabulary data frame, §4.3).

Three kinds of features, one boolean column each, rows = token ids:

* **token properties** (paper names): type (``all_white_space``, ``all_caps``, ``all_lower``,
  ``all_alpha``, ``all_numeric``, ``all_symbolic``; our ``all_symbolic`` means every
  character is non-alphanumeric, the paper's means *any* is, which is our
  ``any_symbolic``), symbols and punctuation
  (``contains_period``, ...), numbers (``contains_digit``, ``is_year``, ...), pronoun
  classes, starts-with (space, capital, vowel, ...), common suffixes (``end_w_ing``) and
  prefixes (``start_w_un``), word groups (``is_month``, ``is_day_of_week``, ``is_state``, ...);
* **unigram** features ``unigram:<form>``: one per normalised form (lower-cased, stripped
  surface string, no undecodable byte pieces ``�``) that (a) occurs at least ``min_count`` times in the dataset, all its
  surface forms together, and (b) has at least ``min_forms`` surface forms in the
  vocabulary (``the``, `` the``, `` The``, ...). Defaults: ``min_count`` = 3 per 10,000
  tokens (the paper's 3,000 in 10M), at least 10; ``min_forms`` = 2 (the paper used 4 on
  GPT-2's 50k vocabulary; smaller vocabularies have fewer variants per word);
* **alphabet** features ``alpha:<c>``: the token *is* the single letter ``c`` once stripped
  and lower-cased (``c``, `` C``, ``C``, ...), one per letter a-z. This is the paper's
  ``{c}_unigram`` feature (``paper_notebooks/alphabet_neurons.ipynb`` reads the
  ``a_unigram`` ... ``z_unigram`` columns of its unigram frame). Unlike the paper, the 26
  letters are always built, not only those that pass the unigram count cut. (An earlier
  version used "the stripped token starts with ``c``", true for ``apple``: that is the
  paper's ``start_w_{c}``, which it only uses to colour its histograms.)

Features are computed on *surface strings* (:func:`surface_strings`): each token decoded
on its own, with the leading space restored for SentencePiece-style ``▁`` tokens.
Features true for no token are dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from universal_neurons.constants import FEATURES_DIR, VOCAB_FEATURES
from universal_neurons.rundir import write_json, write_table

log = logging.getLogger(__name__)

TOKEN_COLUMN = "token"

UNIGRAM_PREFIX = "unigram:"
ALPHABET_PREFIX = "alpha:"


def feature_group(name: str) -> str:
    """The group a feature name belongs to: the part before ``:`` or ``token``.

    ``unigram:the`` -> ``unigram``, ``alpha:c`` -> ``alpha``, ``pos:NOUN`` -> ``pos``,
    ``is_month`` -> ``token``.
    """
    return name.split(":", 1)[0] if ":" in name else "token"


def surface_strings(tokenizer: Any) -> list[str]:
    """Each token id decoded alone: ``[vocab]`` strings; special tokens keep their text.

    For SentencePiece-style tokenizers (pieces starting with ``▁``) the leading space that
    ``decode`` drops is restored, so `` the`` and ``the`` stay apart as in byte-level BPE.
    """
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    return [(" " + t if isinstance(p, str) and p.startswith("▁") and not t.startswith(" ") else t)
            for t, p in zip(texts, pieces)]


# ---- token properties --------------------------------------------------------------------
Str: TypeAlias = pd.Series  # of str, one per token id


def _isin(words: set[str]) -> Callable[[Str], pd.Series]:
    return lambda s: s.str.strip().str.lower().isin(words)


def _contains(s: Str, text: str) -> pd.Series:
    return s.str.contains(text, regex=False)


def _ends(s: Str, suffix: str) -> pd.Series:
    return s.str.strip().str.lower().str.endswith(suffix)


def _starts(s: Str, prefix: str) -> pd.Series:
    return s.str.strip().str.lower().str.startswith(prefix)


TYPE_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    "all_white_space": lambda s: s.str.strip() == "",
    "all_caps": lambda s: s.str.strip().str.isupper() & (s.str.strip().str.len() > 1),
    "all_lower": lambda s: s.str.strip().str.islower(),
    "all_alpha": lambda s: s.str.strip().str.isalpha(),
    "all_numeric": lambda s: s.str.strip().str.isdecimal(),
    "all_symbolic": lambda s: s.map(lambda x: bool(x.strip()) and
                                    not any(c.isalnum() for c in x)),
    # the paper's "all_symbolic" (analysis/vocab_df.py): ANY non-alphanumeric character
    # once stripped, e.g. " don't" or "e.g"; ours above is what the name says
    "any_symbolic": lambda s: s.map(lambda x: any(not c.isalnum() for c in x.strip())),
}

_SYMBOLS = {
    "period": ".", "comma": ",", "exclamation": "!", "question": "?", "semicolon": ";",
    "colon": ":", "dash": "-", "slash": "/", "backslash": "\\", "underscore": "_",
    "caret": "^", "apostrophe": "'", "quotation": '"', "close_paren": ")", "open_paren": "(",
    "close_bracket": "]", "open_bracket": "[", "close_brace": "}", "open_brace": "{",
    "dollar": "$", "double_dollar": "$$", "hash": "#", "at": "@", "ampersand": "&",
    "percent": "%", "asterisk": "*", "equals": "=", "backtick": "`",
}
SYMBOL_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    **{f"contains_{k}": partial(_contains, text=c) for k, c in _SYMBOLS.items()},
    "contains_closing_punc": lambda s: s.str.contains(r"[)\]}>]"),
    "contains_opening_punc": lambda s: s.str.contains(r"[(\[{<]"),
    "contains_math_symbol": lambda s: s.str.contains(r"[+\-*/=<>]"),
    "contains_currency": lambda s: s.str.contains("[$€£¥]"),
}

NUMBER_WORDS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    "hundred", "thousand", "million", "billion", "trillion", "hundreds", "thousands",
    "millions", "billions", "trillions", "dozen", "dozens",
}


def _int_value(s: Str) -> pd.Series:
    st = s.str.strip()
    return pd.to_numeric(st.where(st.str.isdecimal() & (st.str.len() <= 9)), errors="coerce")


NUMERIC_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    "contains_digit": lambda s: s.str.contains(r"\d"),
    "all_digits": lambda s: s.str.strip().str.isdigit(),
    "is_number_word": _isin(NUMBER_WORDS),
    "is_year": lambda s: _int_value(s).between(1491, 2199) & (s.str.strip().str.len() == 4),
    "is_one_digit": lambda s: s.str.strip().str.isdecimal() & (s.str.strip().str.len() == 1),
    "is_two_digit": lambda s: s.str.strip().str.isdecimal() & (s.str.strip().str.len() == 2),
    "is_three_digit": lambda s: s.str.strip().str.isdecimal() & (s.str.strip().str.len() == 3),
    "is_four_digit": lambda s: s.str.strip().str.isdecimal() & (s.str.strip().str.len() == 4),
    "is_lt_31": lambda s: _int_value(s) <= 31,
}

_P = {
    "male": "he him his himself", "female": "she her hers herself",
    "neutral": "they them their theirs themself themselves",
    "first_person": "i me my mine myself we us our ours ourselves",
    "second_person": "you your yours yourself yourselves",
    "third_person": "he him his himself she her hers herself it its itself they them their "
                    "theirs themself themselves",
    "plural": "we us our ours ourselves they them their theirs themselves",
    "singular": "i me my mine myself he him his himself she her hers herself it its itself",
    "subject": "i we you he she it they", "object": "me us you him her it them",
    "possessive": "my mine our ours your yours his her hers its their theirs",
    "reflexive": "myself ourselves yourself yourselves himself herself itself themselves",
    "indefinite": "anybody anyone anything each either everybody everyone everything neither "
                  "nobody nothing somebody someone something both few many several all any "
                  "most none some such",
    "demonstrative": "this that these those", "interrogative": "who whom whose which what",
    "relative": "who whom whose which that",
}
PRONOUN_FEATURES = {f"is_{k}_pronoun": _isin(set(v.split())) for k, v in _P.items()}

STARTS_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    "starts_w_vowel": lambda s: s.str.strip().str.lower().str.match("[aeiou]"),
    "starts_w_consonant": lambda s: s.str.strip().str.lower().str.match("[b-df-hj-np-tv-z]"),
    "start_w_no_space": lambda s: (s.str.len() > 0) & ~s.str.startswith(" "),
    "start_w_no_space_and_letter": lambda s: s.str[:1].str.isalpha(),
    "start_w_no_space_and_digit": lambda s: s.str[:1].str.isdigit(),
    "starts_w_digit": lambda s: s.str.strip().str[:1].str.isdigit(),
    "starts_w_space": lambda s: s.str.startswith(" ") & (s.str.strip() != ""),
    "start_w_space_and_letter": lambda s: s.str.startswith(" ") & s.str[1:2].str.isalpha(),
    "starts_w_cap": lambda s: s.str.strip().str[:1].str.isupper(),
    "starts_w_no_space_and_cap": lambda s: s.str[:1].str.isupper(),
    "starts_w_no_space_and_lower": lambda s: s.str[:1].str.islower(),
}

SUFFIXES = ("ness ment tion sion ance ence er or ist ism hood ship age able ible al ial ish "
            "ive less ful ous ic ly ward wise ize ise en ify let ling ie ette dom logy graphy "
            "y cy ty ant ent ary ery ing ed s est").split()
PREFIXES = ("un re in im dis en em non over mis sub pre inter fore de trans super semi anti "
            "mid under mono bi tri multi poly ex micro macro auto tele homo hetero post geo "
            "hydro thermo electro photo pan mega kilo pseudo neo counter ultra infra bio").split()
AFFIX_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    **{f"end_w_{x}": partial(_ends, suffix=x) for x in SUFFIXES},
    **{f"start_w_{x}": partial(_starts, prefix=x) for x in PREFIXES},
}

MONTHS = set("january february march april may june july august september october november "
             "december jan feb mar apr jun jul aug sep sept oct nov dec".split())
WEEKDAYS = set("monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu "
               "thurs fri sat sun".split())
US_STATES = set("alabama alaska arizona arkansas california colorado connecticut delaware "
                "florida georgia hawaii idaho illinois indiana iowa kansas kentucky louisiana "
                "maine maryland massachusetts michigan minnesota mississippi missouri montana "
                "nebraska nevada hampshire jersey mexico york carolina dakota ohio oklahoma "
                "oregon pennsylvania rhode tennessee texas utah vermont virginia washington "
                "wisconsin wyoming".split())
STATE_ABBREVIATIONS = set("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI "
                          "MN MS MO MT NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT "
                          "VA WA WV WI WY".split())
COUNTRIES = set("afghanistan albania algeria argentina australia austria bangladesh belgium "
                "brazil bulgaria canada chile china colombia croatia cuba denmark egypt "
                "england ethiopia finland france germany greece hungary india indonesia iran "
                "iraq ireland israel italy japan kenya korea malaysia mexico morocco "
                "netherlands nigeria norway pakistan peru philippines poland portugal romania "
                "russia scotland singapore spain sweden switzerland syria taiwan thailand "
                "turkey uganda ukraine vietnam wales".split())
WEB_SUFFIXES = set("com net org edu gov mil int io co uk ca ai html php".split())
CONTRASTIVE = set("but however nonetheless yet nevertheless although though whereas".split())
LENGTH_WORDS = ("meter", "metre", "inch", "foot", "feet", "yard", "mile")
TIME_WORDS = ("second", "minute", "hour", "day", "week", "month", "year")
COLOURS = set("red green blue yellow black white orange purple pink brown grey gray".split())

WORD_GROUP_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    "is_month": _isin(MONTHS),
    "is_day_of_week": _isin(WEEKDAYS),
    "is_state": _isin(US_STATES),
    "is_state_abv": lambda s: s.str.strip().isin(STATE_ABBREVIATIONS),
    "is_country": _isin(COUNTRIES),
    "is_website_suffix": _isin(WEB_SUFFIXES),
    "is_contrastive_conjunction": _isin(CONTRASTIVE),
    "is_colour": _isin(COLOURS),
    "is_length": lambda s: s.str.strip().str.lower().str.contains("|".join(LENGTH_WORDS)),
    "is_time": lambda s: s.str.strip().str.lower().str.contains("|".join(TIME_WORDS)),
}

TOKEN_PROPERTY_FEATURES: dict[str, Callable[[Str], pd.Series]] = {
    **TYPE_FEATURES, **SYMBOL_FEATURES, **NUMERIC_FEATURES, **PRONOUN_FEATURES,
    **STARTS_FEATURES, **AFFIX_FEATURES, **WORD_GROUP_FEATURES,
}
"""Name -> function of the surface strings (a ``pd.Series`` of str) returning booleans."""


def token_property_features(strings: Sequence[str]) -> pd.DataFrame:
    """``[vocab, n_properties]`` bool frame of :data:`TOKEN_PROPERTY_FEATURES`."""
    s = pd.Series(list(strings), dtype=object).fillna("").astype(str)
    cols = {name: fn(s).fillna(False).astype(bool).to_numpy()
            for name, fn in TOKEN_PROPERTY_FEATURES.items()}
    return pd.DataFrame(cols)


def alphabet_features(strings: Sequence[str]) -> pd.DataFrame:
    """``[vocab, 26]``: ``alpha:c`` = the stripped, lower-cased token is ``c`` (the paper's
    ``{c}_unigram``)."""
    norm = pd.Series(list(strings), dtype=object).astype(str).str.strip().str.lower()
    return pd.DataFrame({f"{ALPHABET_PREFIX}{c}": (norm == c).to_numpy()
                         for c in "abcdefghijklmnopqrstuvwxyz"})


def default_unigram_min_count(n_tokens: int) -> int:
    """3 occurrences per 10,000 tokens (the paper: 3,000 in 10M), at least 10."""
    return max(10, int(round(3e-4 * n_tokens)))


def unigram_features(strings: Sequence[str], token_counts: np.ndarray, min_count: int | None = None,
                     min_forms: int = 2, exclude: np.ndarray | None = None) -> pd.DataFrame:
    """One ``unigram:<form>`` column per frequent normalised form (see module doc).

    ``token_counts: Int[vocab]`` occurrences of each id in the dataset; ``exclude``:
    ``Bool[vocab]`` ids never counted as a surface form (special tokens). Empty and
    whitespace-only forms are skipped.
    """
    counts = np.asarray(token_counts, dtype=np.int64)
    if len(counts) != len(strings):
        raise ValueError(f"{len(counts)} token counts for a vocabulary of {len(strings)}")
    if min_count is None:
        min_count = default_unigram_min_count(int(counts.sum()))
    norm = pd.Series(list(strings), dtype=object).astype(str).str.strip().str.lower()
    ok = np.array((norm != "") & ~norm.str.contains("\ufffd", regex=False), dtype=bool)
    if exclude is not None:
        ok &= ~np.asarray(exclude, dtype=bool)
    frame = pd.DataFrame({"norm": norm[ok].to_numpy(), "count": counts[ok]})
    per_form = frame.groupby("norm")["count"].agg(["sum", "size"])
    keep = per_form[(per_form["sum"] >= min_count) & (per_form["size"] >= min_forms)]
    keep = keep.sort_values("sum", ascending=False)
    cols = {}
    norm_arr = np.where(ok, norm.to_numpy(), None)
    for form in keep.index:
        cols[f"{UNIGRAM_PREFIX}{form}"] = norm_arr == form
    log.info("%d unigram features (min_count=%d, min_forms=%d)", len(cols), min_count, min_forms)
    return pd.DataFrame(cols, index=range(len(strings)))


def build_vocab_features(strings: Sequence[str], token_counts: np.ndarray | None = None, *,
                         unigram_min_count: int | None = None, unigram_min_forms: int = 2,
                         special_ids: Sequence[int] = ()) -> pd.DataFrame:
    """The full vocabulary feature frame: ``token`` (surface string) + one bool column each.

    Rows are token ids ``0..vocab-1``. Unigram features need ``token_counts``; without them
    only properties and alphabet features are built. Special ids are False everywhere.
    """
    parts = [token_property_features(strings), alphabet_features(strings)]
    special = np.zeros(len(strings), dtype=bool)
    special[list(special_ids)] = True
    if token_counts is not None:
        parts.append(unigram_features(strings, token_counts, unigram_min_count,
                                      unigram_min_forms, exclude=special))
    names = [c for p in parts for c in p.columns]
    mat = np.concatenate([p.to_numpy(dtype=bool) for p in parts], axis=1)  # [vocab, F]
    mat[special] = False
    used: np.ndarray = np.asarray(mat.any(axis=0))  # [F]
    feats = pd.DataFrame(mat[:, used], columns=[n for i, n in enumerate(names) if used[i]])
    feats.insert(0, TOKEN_COLUMN, list(strings))
    feats.index.name = "token_id"
    return feats


def feature_matrix(vocab_features: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """``(names [F], Bool[F, vocab])`` from a frame built by :func:`build_vocab_features`."""
    names = [c for c in vocab_features.columns if c != TOKEN_COLUMN]
    return names, vocab_features[names].to_numpy(dtype=bool).T.copy()


def vocab_features_path(run_dir: str | os.PathLike, fingerprint: str) -> Path:
    """``RUN/features/<fingerprint[:16]>/vocab_features.parquet`` (one per tokenizer)."""
    return Path(run_dir) / FEATURES_DIR / fingerprint[:16] / VOCAB_FEATURES


def write_vocab_features(run_dir: str | os.PathLike, fingerprint: str, feats: pd.DataFrame,
                         info: dict[str, Any] | None = None) -> Path:
    """Write the frame (token ids as column ``token_id``) and a JSON sidecar; return the path."""
    path = vocab_features_path(run_dir, fingerprint)
    write_table(path, feats.reset_index(), csv=False)
    write_json(path.with_suffix(".json"), {"tokenizer_fingerprint": fingerprint,
                                           "n_features": feats.shape[1] - 1, **(info or {})})
    return path


def read_vocab_features(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(path).set_index("token_id")
