"""The training cohort's profile, stored with the model: percentiles, out-of-distribution flags and reasons at predict.

A probability says nothing about whether a sample resembles what the model learned from. scMILD's Crohn's model
fell to an AUROC of 0.22 on a CD45-sorted cohort (no stroma, no epithelium) and nothing warned its users. So
``predict`` flags, per patient:

- ``out_of_range:<feature>``: a feature the model uses outside the training range widened by ``margin`` (25%)
  of it;
- ``no_stroma`` / ``no_epithelium`` / ``no_mnp``: a compartment absent (under 1% of the cells or under 5
  cells, from the ``prop__`` features) that most training patients had;
- ``low_gene_coverage``: model features missing from the input, or under 90% of a signature's genes found;
- ``few_cells``: fewer cells than the training minimum.

It refuses only where it must (too few model features), as before; flags are warnings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _celltypes as ct
from biomarkers import _keys as K

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_MARGIN = 0.25
#: Percentiles are reported for these features when the model has them (the study's mechanisms).
KEY_FEATURES: tuple[str, ...] = (
    K.AQP9_FRACTION,
    "sig__MNP__AQP9_INFLAMMATORY_MACROPHAGE",
    "pb__MNP__OSM",
    "sig__stroma__OSM_RESPONSE",
    "sig__stroma__IL6_JAK_STAT3",
    "sig__epithelium__OSM_RESPONSE",
)
#: Compartments whose absence is flagged, and the flag's name.
ABSENCE_FLAGS: dict[str, str] = {ct.STROMA: "no_stroma", ct.EPITHELIUM: "no_epithelium", ct.MNP: "no_mnp"}
_QUANTILES = np.linspace(0, 100, 101)
#: A compartment is absent below this share of a patient's cells, or below this many cells (marker calls put a few
#: stray cells anywhere: a CD45-sorted sample still has one or two "epithelial" cells).
ABSENT_SHARE = 0.01
ABSENT_CELLS = 5


def _compartment_shares(table: pd.DataFrame) -> pd.DataFrame:
    """Share of cells per compartment from the ``prop__<cell type>`` features (columns the table lacks: absent)."""
    prefix = f"{K.FAMILY_PROP}{K.FEATURE_SEP}"
    out = {}
    for comp in ABSENCE_FLAGS:
        cols = [c for c in table.columns if c.startswith(prefix) and ct.COMPARTMENT_OF.get(c[len(prefix) :]) == comp]
        if cols:
            out[comp] = table[cols].sum(axis=1, min_count=1)
    return pd.DataFrame(out, index=table.index)


def _absent(shares: pd.DataFrame, n_cells: pd.Series | None) -> pd.DataFrame:
    """Per patient and compartment: absent (True), present (False); a patient without the share is not absent."""
    absent = shares.fillna(1.0) < ABSENT_SHARE
    if n_cells is not None:
        absent |= shares.mul(n_cells.reindex(shares.index), axis=0).fillna(np.inf) < ABSENT_CELLS
    return absent


def training_profile(features: pd.DataFrame, *, model_features: Sequence[str]) -> dict[str, Any]:
    """Summarise the training table for :func:`flag_patients` and :func:`percentiles` (JSON-serialisable).

    Parameters
    ----------
    features
        The training patients x features table (as the model saw it).
    model_features
        The model's input columns.

    Returns
    -------
    ``{"range": {feature: [min, max]}, "quantiles": {key feature: [101 values]}, "compartments": {comp: share of
    training patients with cells there}, "n_cells_min": float | None}``.
    """
    rng = {f: [float(features[f].min()), float(features[f].max())] for f in model_features if f in features}
    quant = {
        f: np.nanpercentile(features[f].to_numpy(dtype=float), _QUANTILES).tolist()
        for f in KEY_FEATURES
        if f in features and features[f].notna().any()
    }
    shares = _compartment_shares(features)
    absent = _absent(shares, features.get(K.N_CELLS))
    present = {c: float(1 - absent[c].mean()) for c in shares.columns}
    n_min = float(features[K.N_CELLS].min()) if K.N_CELLS in features else None
    return {"range": rng, "quantiles": quant, "compartments": present, "n_cells_min": n_min, "margin": DEFAULT_MARGIN}


def percentiles(table: pd.DataFrame, profile: dict[str, Any]) -> pd.DataFrame:
    """``pctl__<feature>``: each patient's percentile (0-100) of the training cohort, for the key features."""
    out = {}
    for f, q in (profile.get("quantiles") or {}).items():
        if f in table:
            v = table[f].to_numpy(dtype=float)
            # Percentile by interpolating the stored training quantiles (ties: the middle of the tied run).
            lo = np.interp(v, q, _QUANTILES, left=0.0, right=100.0)
            hi = 100.0 - np.interp(-v, -np.asarray(q)[::-1], _QUANTILES, left=0.0, right=100.0)
            out[f"pctl__{f}"] = np.where(np.isnan(v), np.nan, (lo + hi) / 2)
    return pd.DataFrame(out, index=table.index)


def flag_patients(
    table: pd.DataFrame,
    profile: dict[str, Any],
    *,
    missing_features: int = 0,
    gene_coverage: float | None = None,
    n_cells: pd.Series | None = None,
    used: Sequence[str] | None = None,
) -> pd.Series:
    """Return the ``;``-joined out-of-distribution codes of each patient (empty string: none).

    Parameters
    ----------
    table
        The new patients' features (all the columns predict built, not only the model's).
    profile
        From :func:`training_profile`.
    missing_features
        Model features absent from the input altogether (not NaN for a patient: a feature of an absent
        compartment is NaN, and flagged as that compartment).
    gene_coverage
        Smallest fraction of a signature's (and its control) genes found in the input, when read from cells.
    n_cells
        Cells used per patient.
    used
        The features the model's prediction depends on; only they are range-checked (None: every model feature).

    Returns
    -------
    Series ``flags`` indexed like ``table``.
    """
    margin = float(profile.get("margin", DEFAULT_MARGIN))
    codes: dict[Any, list[str]] = {pid: [] for pid in table.index}
    for f, (lo, hi) in (profile.get("range") or {}).items():
        if f not in table or f == K.N_CELLS or (used is not None and f not in used):  # cell counts: few_cells
            continue
        width = (hi - lo) or abs(hi) or 1.0
        v = table[f]
        out = (v < lo - margin * width) | (v > hi + margin * width)
        for pid in v.index[out.fillna(value=False).to_numpy()]:
            codes[pid].append(f"out_of_range:{f}")
    cells = n_cells if n_cells is not None else table.get(K.N_CELLS)
    absent = _absent(_compartment_shares(table), cells)
    for comp, flag in ABSENCE_FLAGS.items():
        trained_with = (profile.get("compartments") or {}).get(comp, 0.0)
        if comp in absent and trained_with >= 0.5:  # only a compartment most training patients had
            for pid in absent.index[absent[comp].to_numpy()]:
                codes[pid].append(flag)
    if missing_features > 0 or (gene_coverage is not None and gene_coverage < 0.9):
        for pid in table.index:
            codes[pid].append("low_gene_coverage")
    n_min = profile.get("n_cells_min")
    if n_min is not None and cells is not None:
        for pid in cells.index[(cells.reindex(table.index) < n_min).fillna(value=False).to_numpy()]:
            codes[pid].append("few_cells")
    return pd.Series({pid: ";".join(c) for pid, c in codes.items()}, name="flags").reindex(table.index)


def reasons(
    p: pd.Series, threshold: float, contrib: pd.DataFrame, pctl: pd.DataFrame, flags: pd.Series, *, k: int = 2
) -> pd.Series:
    """One readable line per patient: the call, what drove it (with the training percentile), and any flags."""
    out = {}
    for pid in p.index:
        call = "non-responder" if p[pid] >= threshold else "responder"
        row = contrib.loc[pid]
        top = row[row.abs() > 0].abs().sort_values(ascending=False).index[:k]
        parts = []
        for f in top:
            pc = pctl.at[pid, f"pctl__{f}"] if f"pctl__{f}" in pctl.columns else np.nan
            where = f", {pc:.0f}th percentile of training" if pc == pc else ""
            parts.append(f"{f} {'raises' if row[f] > 0 else 'lowers'} the risk ({row[f]:+.2f} log-odds{where})")
        line = f"p = {p[pid]:.2f} {'>=' if call == 'non-responder' else '<'} {threshold:.2f}: {call}"
        if parts:
            line += "; " + "; ".join(parts)
        if flags[pid]:
            line += f"; caution: {flags[pid].replace(';', ', ')}"
        out[pid] = line
    return pd.Series(out, name="reason").reindex(p.index)
