"""Pseudobulk: raw counts summed per patient within a compartment, the unit of differential expression.

Cells of one patient are not independent replicates; testing cells inflates significance (Squair et al. 2021 Nat
Commun; Zimmerman et al. 2021 Nat Commun). Summing raw counts per patient and testing patients keeps the false
discovery rate at its nominal level.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from biomarkers import _keys as k
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger("biomarkers")

ALL = "all"  # every cell of the patient, the single-cell analogue of a bulk biopsy
META_COLUMNS: tuple[str, ...] = (k.RESPONSE, k.BATCH)
_BY = "_patient"  # grouping column of the lean AnnData handed to sc.get.aggregate
FAMILY_PBCOUNT = "pbcount"  # raw pseudobulk counts, input of nested discovery: pbcount__<compartment>__<gene>


def count_columns(compartment: str, genes: Sequence[str] | pd.Index) -> list[str]:
    """Column names ``pbcount__<compartment>__<gene>`` of the wide pseudobulk table."""
    return [k.FEATURE_SEP.join((FAMILY_PBCOUNT, compartment, str(g))) for g in genes]


def _require_obs(adata: AnnData, cols: Sequence[str], *, hint: str) -> None:
    missing = [c for c in cols if c not in adata.obs]
    if missing:
        have = ", ".join(map(str, adata.obs.columns[:12]))
        msg = f"Column(s) {', '.join(missing)} not in adata.obs (have: {have}). {hint}"
        raise DataSchemaError(msg)


def _check_counts_layer(adata: AnnData, layer: str | None) -> None:
    from biomarkers.preprocess import check_counts

    if layer is not None and layer not in adata.layers:
        msg = (
            f"Layer '{layer}' not in adata.layers (have: {', '.join(adata.layers) or 'none'}). "
            "Pseudobulk needs raw counts: pass layer=None to use X, or keep the raw counts in layers['counts']."
        )
        raise DataSchemaError(msg)
    check_counts(adata, layer=layer)


def _mode(values: pd.Series) -> object:
    counts = values.dropna().astype(str).value_counts()
    return counts.index[0] if len(counts) else np.nan


def pseudobulk(
    adata: AnnData,
    *,
    compartment: str,
    patient_col: str = k.PATIENT,
    layer: str | None = k.COUNTS,
    min_cells: int = 10,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sum raw counts per patient within one compartment (``sc.get.aggregate(..., func="sum")``).

    Parameters
    ----------
    adata
        Annotated cells: ``obs['compartment']`` (from :meth:`biomarkers.features.FeaturePipeline.process`), the
        patient column and raw counts in ``layers[layer]``.
    compartment
        A compartment of ``obs['compartment']`` (``MNP``, ``stroma``, ...), or ``'all'`` for every cell.
    patient_col
        Column of ``obs`` with the patient id.
    layer
        Layer with raw integer counts (``None`` = ``X``).
    min_cells
        Patients with fewer cells in the compartment are dropped (their sums are too noisy).

    Returns
    -------
    ``counts``: patients x genes integer sums (index ``patient_id``, sorted); ``metadata``: the same patients with
    ``response`` and ``batch`` (the patient's value, or its most common one across samples; NaN when the column is
    absent) and ``n_cells``.

    Examples
    --------
    >>> import biomarkers as bm
    >>> from biomarkers.discovery import pseudobulk
    >>> adata = bm.simulate_cohort(n_patients=6, cells_per_patient=40, n_genes=300, seed=0)
    >>> adata.obs["compartment"] = "all_cells"
    >>> counts, meta = pseudobulk(adata, compartment="all_cells", min_cells=5)
    >>> counts.shape[0] == meta.shape[0] == 6, int(counts.to_numpy().sum()) == int(adata.layers["counts"].sum())
    (True, True)
    """
    _require_obs(adata, [patient_col], hint="Set patient_col to the column holding the patient id.")
    if compartment != ALL:
        _require_obs(
            adata,
            [k.COMPARTMENT],
            hint="Annotate the cells first: biomarkers.features.FeaturePipeline(...).process(adata).",
        )
    import scanpy as sc

    _check_counts_layer(adata, layer)
    obs = adata.obs
    mask = np.ones(adata.n_obs, dtype=bool) if compartment == ALL else (obs[k.COMPARTMENT].astype(str) == compartment)
    mask = np.asarray(mask)
    # sc.get.aggregate over the compartment's cells (a subset rather than mask=, whose float32 weights would sum
    # float32 counts in float32), grouped by the patient id as a string; positional names avoid duplicate warnings.
    cells = adata if mask.all() else adata[mask]
    x = cells.layers[layer] if layer is not None else cells.X
    patients = cells.obs[patient_col].astype(str).to_numpy()
    genes = pd.Index(adata.var_names.astype(str))
    if patients.size:
        lean = sc.AnnData(
            X=x,
            obs=pd.DataFrame({_BY: patients}, index=pd.RangeIndex(patients.size).astype(str)),
            var=pd.DataFrame(index=pd.RangeIndex(genes.size).astype(str)),
        )
        sums = sc.get.aggregate(lean, by=_BY, func="sum").to_df(layer="sum").sort_index()
    else:
        sums = pd.DataFrame(np.zeros((0, genes.size)), index=pd.Index([], dtype=object))
    index = pd.Index(sums.index.astype(str), name=k.PATIENT)
    n_cells = pd.Series(patients).value_counts().reindex(index).to_numpy(dtype=np.int64)
    counts = pd.DataFrame(np.rint(sums.to_numpy()).astype(np.int64), index=index, columns=genes)
    sub = obs.loc[mask]
    meta = pd.DataFrame(index=index)
    for col in META_COLUMNS:
        if col in obs:
            meta[col] = sub.groupby(sub[patient_col].astype(str), observed=True)[col].agg(_mode).reindex(index)
        else:
            meta[col] = np.nan
    meta[k.N_CELLS] = n_cells
    keep = n_cells >= min_cells
    if not keep.all():
        logger.info(
            "pseudobulk: %s: dropped %d/%d patient(s) with < %d cells",
            compartment,
            int((~keep).sum()),
            keep.size,
            min_cells,
        )
    return counts.loc[keep], meta.loc[keep]


def pseudobulk_table(
    adata: AnnData,
    *,
    compartments: Sequence[str],
    patient_col: str = k.PATIENT,
    layer: str | None = k.COUNTS,
    min_cells: int = 10,
) -> pd.DataFrame:
    """Wide patients x ``pbcount__<compartment>__<gene>`` table of raw pseudobulk counts, for nested discovery.

    Parameters
    ----------
    adata
        Annotated cells, as for :func:`pseudobulk`.
    compartments
        Compartments to include.
    patient_col, layer, min_cells
        As in :func:`pseudobulk`; a patient with fewer than ``min_cells`` cells in a compartment gets NaN there.

    Returns
    -------
    One row per patient of ``adata`` (index ``patient_id``, sorted), float counts (NaN = too few cells).
    """
    patients = pd.Index(np.unique(adata.obs[patient_col].astype(str)), name=k.PATIENT)
    parts = []
    for comp in compartments:
        counts, _ = pseudobulk(adata, compartment=comp, patient_col=patient_col, layer=layer, min_cells=min_cells)
        part = counts.reindex(patients).astype(float)
        part.columns = count_columns(comp, counts.columns)
        parts.append(part)
    return pd.concat(parts, axis=1)
