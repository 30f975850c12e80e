"""Library-size normalisation and log transform, keeping raw counts in ``layers['counts']``."""

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


def check_counts(adata: AnnData, *, layer: str | None = None, n_check: int = 100_000) -> None:
    """Raise :class:`DataSchemaError` unless the matrix holds raw, non-negative integer counts.

    Parameters
    ----------
    adata
        Cells x genes.
    layer
        Layer to check; ``None`` checks ``X``.
    n_check
        Number of stored values to check (the first ones), to stay fast on large data.
    """
    x = adata.layers[layer] if layer is not None else adata.X
    vals = x.data[:n_check] if sparse.issparse(x) else np.asarray(x).ravel()[:n_check]
    where = f"layers['{layer}']" if layer else "X"
    if vals.size and not np.all(np.isfinite(vals)):
        msg = f"{where} has NaN or inf values. Raw UMI counts are finite integers; re-export the counts matrix."
        raise DataSchemaError(msg)
    if vals.size and vals.min() < 0:
        msg = (
            f"{where} has negative values (min {vals.min():.3g}): it looks scaled, not raw counts. "
            "Provide raw UMI counts (e.g. layers['counts'] or .raw)."
        )
        raise DataSchemaError(msg)
    frac = float(np.mean(vals != np.round(vals))) if vals.size else 0.0
    if frac > 0:
        msg = (
            f"{where} is not raw counts: {frac:.0%} of the checked values are non-integer (max {vals.max():.3g}), "
            "as in log-normalised data. Provide raw UMI counts in X, layers['counts'] or .raw."
        )
        raise DataSchemaError(msg)


def normalize(adata: AnnData, *, target_sum: float = 1e4, copy: bool = False) -> AnnData | None:
    """Normalise each cell to ``target_sum`` counts and log1p-transform.

    Raw counts are kept in ``layers['counts']`` (copied from ``X`` if absent), and ``X`` becomes
    log1p(CP10k) as float32.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (or already in ``layers['counts']``).
    target_sum
        Counts per cell after normalisation.
    copy
        Work on a copy and return it.

    Returns
    -------
    The normalised AnnData when ``copy=True``, else ``None``. Sets ``layers['counts']``, ``X``,
    ``uns['log1p']`` and ``uns['bm']['normalize']``.

    Examples
    --------
    >>> import biomarkers as bm
    >>> adata = bm.simulate_cohort(n_patients=4, cells_per_patient=50, n_genes=300, seed=0)
    >>> bm.normalize(adata)
    >>> 'counts' in adata.layers
    True
    """
    import scanpy as sc

    adata = adata.copy() if copy else adata
    if K.COUNTS not in adata.layers:
        check_counts(adata)
        adata.layers[K.COUNTS] = adata.X.copy()
    counts = adata.layers[K.COUNTS]
    x = counts.astype(np.float32, copy=True) if sparse.issparse(counts) else np.asarray(counts, dtype=np.float32)
    adata.X = x
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.uns.setdefault(K.BM, {})["normalize"] = {"params": {"target_sum": float(target_sum)}}
    logger.info("normalize: X <- log1p(CP%g), raw counts in layers['%s']", target_sum, K.COUNTS)
    return adata if copy else None
