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
from scipy import sparse

from biomarkers import _keys as k
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger("biomarkers")

ALL = "all"  # every cell of the patient, the single-cell analogue of a bulk biopsy
META_COLUMNS: tuple[str, ...] = (k.RESPONSE, k.BATCH)
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


def _counts_matrix(adata: AnnData, layer: str | None) -> sparse.csr_matrix:
    from biomarkers.preprocess import check_counts

    if layer is not None and layer not in adata.layers:
        msg = (
            f"Layer '{layer}' not in adata.layers (have: {', '.join(adata.layers) or 'none'}). "
            "Pseudobulk needs raw counts: pass layer=None to use X, or keep the raw counts in layers['counts']."
        )
        raise DataSchemaError(msg)
    check_counts(adata, layer=layer)
    x = adata.layers[layer] if layer is not None else adata.X
    return x.tocsr() if sparse.issparse(x) else sparse.csr_matrix(np.asarray(x))


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
    """Sum raw counts per patient within one compartment.

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
    x = _counts_matrix(adata, layer)
    obs = adata.obs
    mask = np.ones(adata.n_obs, dtype=bool) if compartment == ALL else (obs[k.COMPARTMENT].astype(str) == compartment)
    mask = np.asarray(mask)
    patients = obs[patient_col].astype(str).to_numpy()
    uniq, inv = np.unique(patients[mask], return_inverse=True)
    rows = np.flatnonzero(mask)
    onehot = sparse.csr_matrix((np.ones(rows.size), (inv, rows)), shape=(uniq.size, adata.n_obs))
    sums = np.asarray((onehot @ x).todense())
    n_cells = np.bincount(inv, minlength=uniq.size)
    index = pd.Index(uniq, name=k.PATIENT)
    counts = pd.DataFrame(np.rint(sums).astype(np.int64), index=index, columns=pd.Index(adata.var_names.astype(str)))
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
