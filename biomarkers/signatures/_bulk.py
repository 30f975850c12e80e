"""Bulk samples: signature scores as the mean of within-cohort z-scores (Martin et al. 2019)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from biomarkers import _keys
from biomarkers._errors import DataSchemaError
from biomarkers.signatures._aliases import LIST_SEP, _Resolver
from biomarkers.signatures._gene_sets import as_gene_sets
from biomarkers.stats import zscore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from biomarkers.signatures._gene_sets import GeneSetsLike

logger = logging.getLogger("biomarkers")


def _bulk_tables(
    data: AnnData | pd.DataFrame,
    *,
    layer: str | None,
    meta_cols: Sequence[str] | None,
    extra_meta: Sequence[str | None] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split bulk input into (expression: samples x genes, float) and (metadata: samples x columns)."""
    if isinstance(data, AnnData):
        if layer is not None and layer not in data.layers:
            msg = f"Layer {layer!r} not in adata.layers (have: {', '.join(data.layers) or 'none'}). Pass layer=None."
            raise DataSchemaError(msg)
        x = data.X if layer is None else data.layers[layer]
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        expr = pd.DataFrame(x, index=data.obs_names, columns=data.var_names.astype(str), dtype="float64")
        return expr, data.obs.copy()
    if not isinstance(data, pd.DataFrame):
        msg = f"Bulk input must be an AnnData or a pandas DataFrame, found {type(data).__name__}."
        raise DataSchemaError(msg)
    df = data
    if _keys.SAMPLE in df.columns and df[_keys.SAMPLE].is_unique:
        df = df.set_index(_keys.SAMPLE, drop=False)
    if meta_cols is not None:
        absent = [c for c in meta_cols if c not in df.columns]
        if absent:
            msg = f"meta_cols {absent} not in the table (have: {', '.join(map(str, df.columns[:20]))}, ...)."
            raise DataSchemaError(msg)
        meta_set = set(meta_cols) | {c for c in extra_meta if c is not None and c in df.columns}
        gene_cols = [c for c in df.columns if c not in meta_set]
        non_numeric = [c for c in gene_cols if not pd.api.types.is_numeric_dtype(df[c])]
        if non_numeric:
            msg = (
                f"Gene column(s) {non_numeric[:5]} are not numeric. Add them to meta_cols, or fix the values "
                "(expression must be numbers)."
            )
            raise DataSchemaError(msg)
    else:
        meta_set = {c for c in extra_meta if c is not None and c in df.columns}
        gene_cols = [c for c in df.columns if c not in meta_set and pd.api.types.is_numeric_dtype(df[c])]
        meta_set |= {c for c in df.columns if c not in gene_cols}
        logger.info(
            "bulk table: %d numeric columns used as genes; metadata: %s (pass meta_cols= to be explicit)",
            len(gene_cols),
            ", ".join(map(str, [c for c in df.columns if c in meta_set])),
        )
    expr = df[gene_cols].astype("float64")
    expr.columns = expr.columns.astype(str)
    return expr, df[[c for c in df.columns if c in meta_set]]


def _set_scores(expr: pd.DataFrame, gene_sets: dict[str, object], *, method: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    resolver = _Resolver(expr.columns)
    resolved = {}
    rows = []
    for name, gs in as_gene_sets(gene_sets).items():
        mapping, missing = resolver.resolve(gs.genes)
        resolved[name] = list(dict.fromkeys(mapping.values()))
        rows.append(
            {
                "set": name,
                "n_genes": len(gs.genes),
                "n_found": len(mapping),
                "found": LIST_SEP.join(mapping),
                "missing": LIST_SEP.join(missing),
            }
        )
    needed = list(dict.fromkeys(v for cols in resolved.values() for v in cols))
    # Within the cohort, with the package's one ddof; a gene constant across samples is NaN, then skipped in the mean.
    values = zscore(expr[needed]) if method == "zscore_mean" else expr[needed]
    scores = pd.DataFrame(
        {name: values[cols].mean(axis=1, skipna=True) if cols else np.nan for name, cols in resolved.items()},
        index=expr.index,
        dtype="float64",
    )
    return scores, pd.DataFrame(rows)


def score_bulk(
    data: AnnData | pd.DataFrame,
    *,
    gene_sets: GeneSetsLike,
    method: Literal["zscore_mean", "mean"] = "zscore_mean",
    layer: str | None = None,
    meta_cols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score gene sets in bulk samples: the mean of each set's genes after z-scoring every gene within the cohort.

    Each gene is z-scored across the samples passed (:func:`biomarkers.stats.zscore`: mean 0, population SD 1, as
    every z-score in the package; genes constant in the cohort are ignored), then a set's score is the mean over its
    genes found in the data (aliases resolved), as Martin et al. 2019 (Cell) scored the GIMATS module in bulk cohorts. The score is relative to the cohort: score training and new
    cohorts separately, never after concatenating them.

    Parameters
    ----------
    data
        AnnData (obs = samples, X = log expression) or a DataFrame (samples x [metadata + genes]). For a DataFrame,
        genes are the numeric columns not in ``meta_cols``; a unique ``sample_id`` column becomes the index.
    gene_sets
        Set names, ``{name: GeneSet}`` or ``{name: [genes]}``.
    method
        ``"zscore_mean"`` (default) or ``"mean"`` (plain mean of the log expression, no z-scoring).
    layer
        AnnData layer to use instead of ``X``.
    meta_cols
        DataFrame columns that are metadata, not genes. `None`: every non-numeric column is metadata.

    Returns
    -------
    Samples x sets (float). A set with no gene in the data is an all-NaN column. ``.attrs["coverage"]`` holds
    ``set, n_genes, n_found, found, missing``.

    Examples
    --------
    >>> import pandas as pd
    >>> from biomarkers.signatures import score_bulk
    >>> df = pd.DataFrame({"IL1B": [1.0, 2.0, 3.0], "IL6": [2.0, 2.0, 5.0]}, index=["s1", "s2", "s3"])
    >>> score_bulk(df, gene_sets={"INFL": ["IL1B", "IL6"]})["INFL"].round(3).tolist()
    [-0.966, -0.354, 1.319]
    """
    if method not in ("zscore_mean", "mean"):
        msg = f"method={method!r} is not available; use 'zscore_mean' or 'mean'."
        raise DataSchemaError(msg)
    expr, _ = _bulk_tables(data, layer=layer, meta_cols=meta_cols)
    scores, coverage = _set_scores(expr, as_gene_sets(gene_sets), method=method)
    empty = coverage.loc[coverage["n_found"] == 0, "set"].tolist()
    if empty:
        logger.warning("score_bulk: no gene found for %s (NaN scores)", ", ".join(empty))
    scores.attrs["coverage"] = coverage
    return scores
