"""One accessor for raw counts, wherever an AnnData keeps them: ``layers['counts']``, ``.raw.X`` or ``X``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("biomarkers")


def count_cells(adata: AnnData, *, allow_non_integer: bool = False) -> AnnData:
    """Cells with raw counts in ``X`` and ``layers['counts']``, found where the object keeps them.

    The candidates are tried in the order the readers use (:func:`biomarkers.io.read_cohort`):
    ``layers['counts']``, then ``.raw.X`` (CELLxGENE keeps counts there next to a log-normalised ``X``), then
    ``X``; the first holding non-negative integers wins. So an object in the usual scanpy state (``X`` = log1p,
    counts in a layer) is QC'd and normalised from its counts, never from its log values.

    Parameters
    ----------
    adata
        Cells x genes, in memory or backed.
    allow_non_integer
        Accept the first matrix present, with a warning, when none holds integers (as ``read_cohort`` allows).

    Returns
    -------
    `adata` itself when its ``layers['counts']`` already holds the counts and ``X`` is that same matrix; else a
    new AnnData (obs copied; var from ``.raw`` when the counts come from there) whose ``X`` and
    ``layers['counts']`` are the counts as float32 CSR.

    Raises
    ------
    DataSchemaError
        No candidate holds raw counts.
    """
    import anndata as ad

    from biomarkers.io._common import as_counts
    from biomarkers.io._h5ad import pick_counts

    if adata.isbacked:
        adata = adata.to_memory()
    if not adata.var_names.is_unique:
        dupes = adata.var_names[adata.var_names.duplicated()].unique()
        msg = (
            f"{len(dupes)} gene names occur more than once in var_names (e.g. {', '.join(map(str, dupes[:3]))}). "
            "Call adata.var_names_make_unique() first (bm.read_cohort does this for files)."
        )
        raise DataSchemaError(msg)
    layer = adata.layers.get(K.COUNTS)
    raw = adata.raw.X if adata.raw is not None else None
    choice = pick_counts(
        [("layers['counts']", layer), (".raw.X", raw), ("X", adata.X)],
        source="the cells",
        allow_non_integer=allow_non_integer,
    )
    if choice == 0 and layer is adata.X:
        return adata
    matrix = (layer, raw, adata.X)[choice]
    var = adata.raw.var if choice == 1 else adata.var
    if choice == 1 and not var.index.equals(adata.var_names):
        logger.info("counts from .raw.X: %d genes (X has %d)", len(var), adata.n_vars)
    # A float32 CSR matrix is used as is (qc copies what it keeps); anything else is converted once.
    is_csr32 = sparse.issparse(matrix) and matrix.format == "csr" and matrix.dtype == np.float32
    counts = matrix if is_csr32 else as_counts(matrix)
    out = ad.AnnData(X=counts, obs=adata.obs.copy(), var=var.copy(), uns=dict(adata.uns))
    out.uns.pop("log1p", None)  # would make scanpy treat the counts as logged
    out.layers[K.COUNTS] = counts
    if choice != 2:
        logger.info("counts taken from %s", ("layers['counts']", ".raw.X")[choice])
    return out
