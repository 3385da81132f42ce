"""The properties stage (paper §4.2, Fig. 3): how universal neurons differ from the rest.

``run_properties(PropertiesConfig(...))`` is what ``universal-neurons properties`` runs: read
every model's neuron table of a run, compare universal neurons with the others
(``analysis.properties.analyse_table``), write ``RUN/properties/`` and the plots, and record
the stage in the manifest.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from universal_neurons.analysis.properties import CLAIMS, PropertiesConfig, analyse_table
from universal_neurons.analysis.selection import SELECTION, recorded_threshold
from universal_neurons.constants import (
    PROPERTIES_CLAIMS,
    PROPERTIES_CLAIMS_JSON,
    PROPERTIES_COMPARISON,
    PROPERTIES_DIR,
    PROPERTIES_PERCENTILES,
)
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

STAGE = "properties"

__all__ = ["PropertiesConfig", "PropertiesResult", "run_properties"]


@dataclass
class PropertiesResult:
    comparison: Any  # DataFrame: model x statistic
    claims: Any  # DataFrame: model x claim
    percentiles: Any  # DataFrame: model, layer, neuron, universal, <stat> percentiles
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)



def run_properties(config: PropertiesConfig) -> PropertiesResult:
    """Analyse every model of the run; write ``RUN/properties/`` and ``RUN/plots/``."""
    import pandas as pd

    from universal_neurons.analysis.neuron_table import refresh_neuron_table, table_models
    from universal_neurons.rundir import RunDir, write_json, write_table

    run = RunDir(config.out)
    if not run.path.is_dir():
        raise UserError(f"run directory {config.out} does not exist")
    tables, skipped = {}, []
    for model in table_models(run.path):
        df = refresh_neuron_table(run.path, model)
        if df is not None and ({"excess_corr", "is_universal"} & set(df.columns)):
            tables[model] = df
        else:
            skipped.append(model)
    if skipped:
        log.info("no correlation columns (not a correlate reference model): %s", skipped)
    if not tables:
        raise UserError(f"{config.out} holds no neuron table with correlation columns; run "
                        f"`universal-neurons correlate --out {config.out}` (and `weights`, "
                        "`stats`) first")
    comparison, claims, frames = [], [], []
    threshold = recorded_threshold(run.manifest())
    for model, df in tables.items():
        c, cl, f = _analyse_with_fallback(model, df, config, threshold)
        comparison += c
        claims += cl
        frames.append(f)
    res = PropertiesResult(pd.DataFrame(comparison), pd.DataFrame(claims),
                           pd.concat(frames, ignore_index=True))
    res.summary = _summary(res.claims, config)
    out = run.path / PROPERTIES_DIR
    write_table(out / PROPERTIES_CLAIMS, res.claims)
    write_json(out / PROPERTIES_CLAIMS_JSON, {"config": asdict(config), "summary": res.summary,
                                     "claims": _records(res.claims)})
    write_table(out / PROPERTIES_COMPARISON, res.comparison)
    write_table(out / PROPERTIES_PERCENTILES, res.percentiles, csv=False)
    res.files = [f"{PROPERTIES_DIR}/{n}" for n in (_csv(PROPERTIES_CLAIMS), PROPERTIES_CLAIMS_JSON,
                                                     _csv(PROPERTIES_COMPARISON),
                                                     PROPERTIES_PERCENTILES)]
    if config.plots:
        from universal_neurons.report.plots_properties import plot_properties

        res.files += plot_properties(run.path, tables, res.percentiles, config.threshold)
    run.record_stage(STAGE, asdict(config), models=list(tables), outputs=res.files,
                     summary=res.summary)
    return res


def _analyse_with_fallback(model: str, df, config: PropertiesConfig, threshold: float | None):
    """:func:`analyse_table`, every row labelled with its ``selection``; when too few
    neurons are universal (``analysis.selection``), the comparison and claims rows of the
    top ``fallback_percent`` % are appended and the percentile frame gets a
    ``fallback_universal`` column."""
    from universal_neurons.analysis.selection import fallback_label, threshold_label

    comparison, claims, frame = analyse_table(model, df, config)
    n_universal = int(frame["universal"].sum())
    if config.top_percent is not None:
        label = f"top {config.top_percent:g}% by excess correlation: {n_universal} neurons"
    else:
        label = threshold_label(n_universal, threshold if "is_universal" in df.columns
                                else config.threshold)
    for row in (*comparison, *claims):
        row[SELECTION] = label
    if (config.top_percent is not None or not config.fallback_percent
            or n_universal >= config.min_universal or "excess_corr" not in df.columns):
        return comparison, claims, frame
    alt = replace(config, top_percent=config.fallback_percent)
    c2, cl2, f2 = analyse_table(model, df, alt)
    label = fallback_label(config.fallback_percent, int(f2["universal"].sum()), n_universal,
                           threshold if "is_universal" in df.columns else config.threshold)
    log.info("%s: only %d universal neurons; claims also tested on the %s", model,
             n_universal, label)
    for row in (*c2, *cl2):
        row[SELECTION] = label
    return comparison + c2, claims + cl2, frame.assign(fallback_universal=f2["universal"])


def _csv(parquet_name: str) -> str:
    """The CSV copy ``write_table`` writes beside a parquet file."""
    return parquet_name.removesuffix(".parquet") + ".csv"


def _summary(claims, config: PropertiesConfig) -> dict[str, Any]:
    """Per claim: models where it held / was tested, over the ordinary selection; the
    fallback's rows (``selection`` starting "top", when ``top_percent`` was not given)
    are counted apart under ``fallback``."""
    fallback = (claims[SELECTION].str.startswith("top") if config.top_percent is None
                and SELECTION in claims.columns else claims["statistic"].isna())
    out: dict[str, Any] = _counts(claims[~fallback])
    out["universal_set"] = (f"top {config.top_percent:g}% by excess_corr" if config.top_percent
                            else "is_universal (excess_corr > threshold)")
    if fallback.any():
        out["fallback"] = {"selection": sorted(set(claims.loc[fallback, SELECTION])),
                           **_counts(claims[fallback])}
    return out


def _counts(claims) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in CLAIMS:
        rows = claims[claims.statistic == c.statistic]
        out[c.statistic] = {"claim": c.text,
                            "held_in": int((rows.status == "held").sum()),
                            "tested_in": int(rows.status.isin(["held", "not held"]).sum()),
                            "models": int(len(rows))}
    return out


def _records(df) -> list[dict[str, Any]]:
    """JSON-safe records (NaN -> None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else
                 v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in df.to_dict("records")]
