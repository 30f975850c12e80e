"""Per-compartment differential expression of a cohort: labels, covariates, pseudobulk, :func:`rank_genes`."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from biomarkers import _keys as k
from biomarkers._errors import DataSchemaError
from biomarkers.discovery._de import DEFAULT_COMPARTMENTS, Method, rank_genes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from biomarkers.discovery._stream import PseudobulkSums

logger = logging.getLogger("biomarkers")


def patient_labels(
    meta: pd.DataFrame,
    *,
    label_col: str = k.RESPONSE,
    positive: str = k.NON_RESPONDER,
    negative: str | None = k.RESPONDER,
) -> pd.Series:
    """0/1 per patient of a pseudobulk metadata table; patients without a usable label are left out.

    Parameters
    ----------
    meta
        Metadata from :func:`biomarkers.discovery.pseudobulk`.
    label_col
        Label column.
    positive
        Value coded 1.
    negative
        Value coded 0; ``None`` codes every other non-missing value 0.

    Returns
    -------
    Labels indexed by patient.
    """
    if label_col not in meta or meta[label_col].isna().all():
        msg = f"No '{label_col}' labels for the patients (columns: {', '.join(meta.columns)}). Set label_col to the response column."
        raise DataSchemaError(msg)
    v = meta[label_col].dropna().astype(str)
    if negative is None:
        return (v == positive).astype(int)
    other = sorted(set(v) - {positive, negative})
    if other:
        warnings.warn(
            f"Label value(s) {other[:5]} are neither {positive!r} nor {negative!r}; those patients are left out.",
            stacklevel=3,
        )
    v = v[v.isin([positive, negative])]
    return (v == positive).astype(int)


def differential_expression(
    adata: AnnData | PseudobulkSums,
    *,
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    covariates: Sequence[str] = (k.BATCH,),
    label_col: str = k.RESPONSE,
    positive: str = k.NON_RESPONDER,
    negative: str | None = k.RESPONDER,
    method: Method = "deseq2",
    min_patients_per_group: int = 3,
    min_cells: int = 10,
    min_counts: int = 10,
    min_expressed: int = 3,
    patient_col: str = k.PATIENT,
    layer: str | None = k.COUNTS,
    seed: int | None = 0,
) -> dict[str, pd.DataFrame]:
    """Pseudobulk differential expression, non-responders vs responders, in each compartment.

    Parameters
    ----------
    adata
        Annotated cells (``obs['compartment']``) with raw counts in ``layers['counts']``, or their
        :class:`~biomarkers.discovery.PseudobulkSums` added up sample by sample (same result; `patient_col` and
        `layer` were fixed when streaming).
    compartments
        Compartments to test; ``'all'`` tests every cell together.
    covariates
        Patient-level ``obs`` columns added to the design (default ``batch``); dropped with a warning when constant
        or confounded with response in a compartment.
    label_col, positive, negative
        Response column and its two values (non-responder vs responder).
    method
        ``deseq2`` (default, PyDESeq2's own inference), ``deseq2_fast`` (vectorised, opt-in), ``ttest`` or
        ``wilcoxon``; see :func:`rank_genes`.
    min_patients_per_group
        A compartment with fewer patients in either group (after ``min_cells``) is skipped with a warning.
    min_cells
        Minimum cells of a patient in the compartment.
    min_counts, min_expressed
        Gene filter: total counts and number of patients with a non-zero count.
    patient_col, layer
        Patient column and raw-count layer.
    seed
        Recorded in ``attrs``; every method is deterministic.

    Returns
    -------
    Compartment -> table from :func:`rank_genes`, plus ``marker_of``: the cell types of other compartments that the
    gene marks (a hint that a hit may come from doublets or ambient RNA of those cells; empty otherwise).
    ``attrs`` has ``n_patients``, ``n_positive``, ``covariates``, ``method``, ``seconds``. Skipped compartments are
    absent.

    Examples
    --------
    >>> import biomarkers as bm
    >>> from biomarkers.discovery import differential_expression
    >>> adata = bm.simulate_cohort(n_patients=10, cells_per_patient=60, n_genes=300, seed=0)
    >>> adata.obs["compartment"] = "all_cells"
    >>> res = differential_expression(adata, compartments=["all_cells"], method="ttest", covariates=())
    >>> list(res["all_cells"].columns)
    ['gene', 'log2FC', 'lfcSE', 'stat', 'pvalue', 'padj', 'baseMean', 'rank', 'marker_of']
    """
    from biomarkers.discovery._stream import PseudobulkSums

    sums = adata if isinstance(adata, PseudobulkSums) else None
    obs_columns = sorted(sums.obs_columns) if sums is not None else list(adata.obs.columns)
    if label_col not in obs_columns:
        have = ", ".join(map(str, obs_columns[:12]))
        msg = f"Label column '{label_col}' not in adata.obs (have: {have}). Set label_col to the response column."
        raise DataSchemaError(msg)
    absent = [c for c in covariates if c not in obs_columns]
    if absent:
        warnings.warn(
            f"Covariate(s) {', '.join(absent)} not in adata.obs; testing without them. Pass covariates=() to silence.",
            stacklevel=2,
        )
        covariates = [c for c in covariates if c in obs_columns]
    from biomarkers.discovery._pseudobulk import pseudobulk

    out: dict[str, pd.DataFrame] = {}
    for comp in compartments:
        t0 = time.perf_counter()
        if sums is not None:
            counts, meta = sums.pseudobulk(compartment=comp, min_cells=min_cells)
        else:
            counts, meta = pseudobulk(
                adata, compartment=comp, patient_col=patient_col, layer=layer, min_cells=min_cells
            )
        if label_col != k.RESPONSE:
            if sums is not None:
                first = sums.first(label_col)
            else:
                first = adata.obs[label_col].groupby(adata.obs[patient_col].astype(str), observed=True).first()
            meta[label_col] = first.reindex(meta.index)
        y = (
            patient_labels(meta, label_col=label_col, positive=positive, negative=negative)
            if len(meta)
            else pd.Series(dtype=int)
        )
        n1, n0 = int(y.sum()), int((y == 0).sum())
        if min(n1, n0) < min_patients_per_group:
            warnings.warn(
                f"Compartment {comp!r} skipped: {n1} non-responder / {n0} responder patient(s) with >= {min_cells} "
                f"cells there (need >= {min_patients_per_group} each). Lower min_cells or min_patients_per_group.",
                stacklevel=2,
            )
            continue
        cov = (
            sums.covariates(covariates)
            if sums is not None
            else _patient_covariates(adata, covariates, patient_col=patient_col)
        ).reindex(y.index)
        table = rank_genes(
            counts.loc[y.index],
            y.to_numpy(),
            covariates=cov,
            method=method,
            min_counts=min_counts,
            min_expressed=min_expressed,
        )
        table["marker_of"] = table["gene"].map(_foreign_markers(comp)).fillna("")
        table.attrs.update(n_patients=len(y), n_positive=n1, seed=seed, seconds=time.perf_counter() - t0)
        logger.info(
            "differential_expression: %s: %d patients (%d NR), %d genes tested, %d with padj < 0.05 (%.1f s)",
            comp, len(y), n1, len(table), int((table["padj"] < 0.05).sum()), table.attrs["seconds"],
        )  # fmt: skip
        out[comp] = table
    return out


def _foreign_markers(compartment: str) -> dict[str, str]:
    """Gene -> cell types of *other* compartments that it marks (``_celltypes.MARKERS``).

    A hit on such a gene in this compartment's pseudobulk may come from doublets or ambient RNA of those cells,
    whose share differs between patients, rather than from this compartment's own cells.
    """
    from biomarkers import _celltypes as ct

    if compartment not in ct.COMPARTMENTS:
        return {}
    out: dict[str, list[str]] = {}
    for cell_type, genes in ct.MARKERS.items():
        if ct.COMPARTMENT_OF[cell_type] != compartment:
            for g in genes:
                out.setdefault(g, []).append(cell_type)
    return {g: ",".join(types) for g, types in out.items()}


def _patient_covariates(adata: AnnData, covariates: Sequence[str], *, patient_col: str) -> pd.DataFrame:
    if not covariates:
        return pd.DataFrame(index=pd.Index(np.unique(adata.obs[patient_col].astype(str)), name=k.PATIENT))
    obs = adata.obs
    groups = obs[patient_col].astype(str)
    cols = {}
    for c in covariates:
        v = obs[c]
        if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
            cols[c] = v.groupby(groups, observed=True).mean()
        else:
            cols[c] = v.astype(str).groupby(groups, observed=True).agg(lambda s: s.value_counts().index[0])
    out = pd.DataFrame(cols)
    out.index.name = k.PATIENT
    return out
