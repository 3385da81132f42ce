"""Definitions of every statistic the report shows: one source for the glossary page
(``report/glossary.html``), the browser's column headers and the neuron pages' labels.

Each entry gives the paper's name for the statistic (Gurnee et al. 2024, "Universal Neurons
in GPT2 Language Models") and how this toolkit computes it. Per-partner columns
(``{model}_best``, ``_corr``, ``_baseline``) are described by :func:`definition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from universal_neurons.report.html import esc, page, section

GLOSSARY_FILE = "glossary.html"
"""The glossary page, at the report's root."""


@dataclass(frozen=True)
class Term:
    paper: str
    """The paper's name for the statistic."""
    text: str
    """What it is, as computed here."""


GLOSSARY: dict[str, Term] = {
    # correlation (paper section 3)
    "excess_corr": Term("excess correlation",
                        "mean_corr - mean_baseline: how much better the neuron's best matches in "
                        "the sibling models correlate than the best directions of a randomly "
                        "rotated basis of them. Universal when > 0.5."),
    "mean_corr": Term("mean max correlation",
                      "Mean over the sibling models of the neuron's largest Pearson correlation "
                      "with any neuron of that model (every layer)."),
    "max_corr": Term("max correlation", "Largest of the per-sibling best correlations."),
    "min_corr": Term("min correlation", "Smallest of the per-sibling best correlations."),
    "mean_baseline": Term("baseline correlation (random rotation)",
                          "Mean over the sibling models of the neuron's largest correlation "
                          "with a direction of the sibling's randomly rotated neuron basis."),
    "max_baseline": Term("baseline correlation, max", "Largest per-sibling baseline."),
    "min_baseline": Term("baseline correlation, min", "Smallest per-sibling baseline."),
    "is_universal": Term("universal neuron", "excess_corr above the threshold (0.5)."),
    # weights (paper section 4.2)
    "w_in_norm": Term("input weight norm", "|w_in|, the norm of the neuron's input direction "
                      "(W_in column; for gated MLPs the gate column)."),
    "input_bias": Term("input bias", "b_in of the neuron (0 for gated MLPs)."),
    "w_out_norm": Term("output weight norm", "|w_out|, the norm of the neuron's output "
                       "direction (W_out row)."),
    "in_out_sim": Term("cos(w_in, w_out)", "Cosine similarity of the input and output "
                       "directions."),
    "l2_penalty": Term("L2 penalty (weight norm)", "|w_in|^2 + |w_out|^2."),
    # activation (paper section 4.2)
    "mean": Term("activation mean", "Mean pre-activation over the dataset's kept tokens."),
    "var": Term("activation variance", "Variance of the pre-activation (population, ddof=0)."),
    "skew": Term("activation skew", "Skewness of the pre-activation (biased estimator, "
                 "sqrt(n) M3 / M2^1.5)."),
    "kurt": Term("activation kurtosis", "Kurtosis of the pre-activation (biased, not excess: "
                 "a Gaussian gives 3)."),
    "sparsity": Term("activation frequency", "Fraction of kept tokens on which the neuron is "
                     "active (default rule: post-activation > 0). Higher means denser, not "
                     "sparser."),
    # vocabulary composition (paper section 4.3)
    "vocab_mean": Term("W_U cosine mean", "Mean over the vocabulary of cos(W_U[:, v], w_out)."),
    "vocab_var": Term("W_U cosine variance", "Variance over the vocabulary of "
                      "cos(W_U[:, v], w_out); large for prediction and suppression neurons."),
    "vocab_skew": Term("vocab skew", "Skewness of cos(W_U[:, v], w_out) over the vocabulary: "
                       "positive for prediction neurons, negative for suppression neurons."),
    "vocab_kurt": Term("vocab kurtosis", "Kurtosis of cos(W_U[:, v], w_out) over the "
                       "vocabulary (not excess; a random direction gives about 3)."),
    # explanations and families (paper section 4.1, 5)
    "families": Term("neuron family", "Families whose feature explains the neuron (variance "
                     "reduction above the family's threshold), or from the vocabulary moments "
                     "(prediction, suppression, partition)."),
    "top_explanation": Term("best explaining feature", "The feature with the largest "
                            "variance reduction."),
    "top_vr": Term("variance reduction", "Share of the activation's variance explained by "
                   "splitting the tokens on the best feature."),
    "vr": Term("variance reduction", "Share of the activation's variance explained by "
               "splitting the tokens on the feature."),
    # names
    "name": Term("neuron", "L{layer}.{index}, the paper's naming."),
    "layer": Term("layer", "The neuron's layer (0 is the first)."),
    "neuron": Term("neuron index", "The neuron's index within its layer's MLP."),
    # per-partner columns (their generic form)
    "best": Term("best match", "The sibling model's neuron most correlated with this one, "
                 "named model:L{layer}.{index}."),
    "corr": Term("max correlation with one sibling", "Correlation of the neuron with its best "
                 "match in that sibling model."),
    "baseline": Term("baseline for one sibling", "The largest correlation with a direction "
                     "of that sibling's randomly rotated basis."),
}


def definition(key: str) -> Term | None:
    """The entry for a column: its own, or for ``{model}_best`` / ``_corr`` / ``_baseline``
    the generic partner entry."""
    if key in GLOSSARY:
        return GLOSSARY[key]
    for suffix in ("best", "corr", "baseline"):
        if key.endswith("_" + suffix):
            return GLOSSARY[suffix]
    return None


def title(key: str) -> str:
    """Hover text for a column or statistic: ``paper name: definition`` (the key itself
    when the glossary has no entry)."""
    t = definition(key)
    return key if t is None else f"{t.paper}: {t.text}"


def anchor(key: str) -> str:
    """The glossary entry's id for ``key`` (partner columns share their generic entry)."""
    if key in GLOSSARY:
        return key
    t = definition(key)
    return next((k for k, v in GLOSSARY.items() if v is t), key)


def term_html(key: str, href_prefix: str = "") -> str:
    """``key`` as a link to its glossary entry with the definition as hover text
    (``href_prefix``: the relative URL of the report's root, e.g. ``../../``)."""
    if definition(key) is None:
        return esc(key)
    return (f'<a class="term" href="{esc(href_prefix + GLOSSARY_FILE)}#{esc(anchor(key))}" '
            f'title="{esc(title(key))}">{esc(key)}</a>')


def glossary_page(extra: Mapping[str, str] | None = None) -> str:
    """The HTML of ``report/glossary.html``: one row per statistic, with an id to link to."""
    rows = "".join(
        f'<tr id="{esc(k)}"><td><code>{esc(k if k not in ("best", "corr", "baseline") else "{model}_" + k)}'
        f"</code></td><td>{esc(t.paper)}</td><td>{esc(t.text)}</td></tr>"
        for k, t in GLOSSARY.items())
    table = ("<table><thead><tr><th>column</th><th>paper's name</th><th>definition</th></tr>"
             f"</thead><tbody>{rows}</tbody></table>")
    notes = "".join(f"<p>{esc(v)}</p>" for v in (extra or {}).values())
    body = section("statistics", "Statistics", table + notes)
    return page("Glossary", body, nav=[("index.html", "report")], css_href="report.css")
