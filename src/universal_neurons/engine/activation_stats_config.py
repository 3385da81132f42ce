"""Settings of :class:`~universal_neurons.engine.activation_stats.ActivationStats`, the
sparsity rule and the pairwise merge of central moments it uses."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RULE = re.compile(r"^\s*(pre|post)\s*(>=|>)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class ActivationStatsConfig:
    """Settings of :class:`ActivationStats`."""

    n_bins: int = 64
    """Interior histogram bins per neuron (plus one underflow and one overflow bin)."""
    hist_quantile: float = 1e-3
    """The histogram range is fixed from the ``[q, 1-q]`` quantiles of the first batch..."""
    hist_margin: float = 0.25
    """...widened by this fraction of that span on each side."""
    hist_init_tokens: int = 4096
    """At most this many rows of the first batch fix the ranges."""
    top_k: int = 16
    """Top activating examples kept per neuron."""
    bottom_k: int = 16
    """Most negative examples kept per neuron."""
    sample_k: int = 48
    """Positive-activation tokens sampled per neuron (quantile-band examples)."""
    sparsity_rule: str = "post>0"
    """``site>threshold`` or ``site>=threshold``; the paper's code used e.g. ``pre>-0.1``."""
    chunk_elements: int = 1 << 24
    """Rows are processed in chunks of at most this many activations (bounds temporaries)."""

    def __post_init__(self) -> None:
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if not 0 <= self.hist_quantile < 0.5:
            raise ValueError(f"hist_quantile must be in [0, 0.5), got {self.hist_quantile}")
        if self.hist_margin < 0:
            raise ValueError(f"hist_margin must be >= 0, got {self.hist_margin}")
        if self.hist_init_tokens < 1:
            raise ValueError(f"hist_init_tokens must be >= 1, got {self.hist_init_tokens}")
        for k in ("top_k", "bottom_k", "sample_k"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        parse_sparsity_rule(self.sparsity_rule)


def parse_sparsity_rule(rule: str) -> tuple[str, str, float]:
    """``"pre>-0.1"`` -> ``("pre", ">", -0.1)``."""
    m = _RULE.match(rule)
    if m is None:
        raise ValueError(f"bad sparsity rule {rule!r}; expected SITE>THRESHOLD with SITE "
                         "pre or post, e.g. 'post>0' (default) or 'pre>-0.1' (paper code)")
    return m.group(1), m.group(2), float(m.group(3))


# ----------------------------------------------------------------------------- pieces
def merge_moments(a: tuple, b: tuple) -> tuple:
    """Pébay's pairwise update of ``(n, mean, M2, M3, M4)``; ``n`` a float, rest ``[N]``."""
    na, ma, m2a, m3a, m4a = a
    nb, mb, m2b, m3b, m4b = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    d = mb - ma
    d2 = d * d
    mean = ma + d * (nb / n)
    m2 = m2a + m2b + d2 * (na * nb / n)
    m3 = (m3a + m3b + d * d2 * (na * nb * (na - nb) / n**2)
          + 3 * d * (na * m2b - nb * m2a) / n)
    m4 = (m4a + m4b + d2 * d2 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
          + 6 * d2 * (na * na * m2b + nb * nb * m2a) / n**2
          + 4 * d * (na * m3b - nb * m3a) / n)
    return n, mean, m2, m3, m4
