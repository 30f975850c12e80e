"""Per-sample quality control: MAD outliers on counts, genes and % mitochondrial reads."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("biomarkers")


def _mad_outlier(x: np.ndarray, nmads: float, *, upper_only: bool = False) -> np.ndarray:
    med = np.median(x)
    mad = np.median(np.abs(x - med)) * 1.4826
    if mad == 0:
        return np.zeros_like(x, dtype=bool)
    hi = x > med + nmads * mad
    return hi if upper_only else hi | (x < med - nmads * mad)


def qc_metrics(adata: AnnData, *, mt_prefix: str = "MT-", layer: str | None = None) -> None:
    """Compute per-cell QC metrics from raw counts.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` or ``layers[layer]``.
    mt_prefix
        Prefix of mitochondrial gene symbols.
    layer
        Layer holding raw counts; ``None`` uses ``X``.

    Returns
    -------
    Sets ``adata.obs['qc_n_counts']``, ``['qc_n_genes']``, ``['qc_pct_mt']`` and ``adata.var['mt']``.
    """
    x = adata.layers[layer] if layer is not None else adata.X
    x = sparse.csr_matrix(x) if not sparse.issparse(x) else x.tocsr()
    mt = np.asarray(adata.var_names.str.upper().str.startswith(mt_prefix.upper()))
    adata.var[K.MT] = mt
    n_counts = np.asarray(x.sum(axis=1)).ravel()
    n_genes = np.diff(x.indptr) if x.nnz == np.count_nonzero(x.data) else np.asarray((x > 0).sum(axis=1)).ravel()
    mt_counts = np.asarray(x[:, mt].sum(axis=1)).ravel() if mt.any() else np.zeros(adata.n_obs)
    adata.obs[K.QC_N_COUNTS] = n_counts.astype(np.float64)
    adata.obs[K.QC_N_GENES] = n_genes.astype(np.int64)
    adata.obs[K.QC_PCT_MT] = 100 * mt_counts / np.maximum(n_counts, 1)


def qc(
    adata: AnnData,
    *,
    sample_col: str = K.SAMPLE,
    min_genes: int = 200,
    min_counts: int = 500,
    max_pct_mt: float | None = 25.0,
    nmads: float = 5.0,
    nmads_mt: float = 3.0,
    mt_prefix: str = "MT-",
    remove_doublets: bool = False,
    seed: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Filter low-quality cells per sample (and optionally doublets).

    A cell is kept when it passes the hard floors (``min_genes``, ``min_counts``, ``max_pct_mt``) and is
    not a MAD outlier *within its own sample* on log counts, log genes (both sides, ``nmads``) or on
    % mitochondrial counts (upper side, ``nmads_mt``). Per-sample thresholds follow the single-cell
    best-practice guidance (Germain et al. 2020; Heumos et al. 2023), because depth varies by sample.

    Parameters
    ----------
    adata
        Raw counts in ``X``; ``obs[sample_col]`` names the sample of each cell.
    sample_col
        Column of ``obs`` with the sample of each cell.
    min_genes, min_counts
        Hard floors per cell.
    max_pct_mt
        Hard ceiling on % mitochondrial counts; ``None`` disables the mitochondrial filter.
    nmads, nmads_mt
        Number of median absolute deviations that make an outlier.
    mt_prefix
        Prefix of mitochondrial genes.
    remove_doublets
        Also run Scrublet per sample (``sc.pp.scrublet(batch_key=sample_col)``) and drop predicted doublets;
        samples with fewer than 50 cells are not scored.
    seed
        Seed for Scrublet.
    copy
        Return a filtered copy instead of filtering in place.

    Returns
    -------
    The filtered AnnData when ``copy=True``, else ``None``. Sets ``obs['qc_n_counts']``, ``['qc_n_genes']``,
    ``['qc_pct_mt']``, ``var['mt']`` and ``uns['bm']['qc']`` (params and per-sample cells kept).

    Examples
    --------
    >>> import biomarkers as bm
    >>> adata = bm.simulate_cohort(n_patients=6, cells_per_patient=80, n_genes=400, seed=0)
    >>> bm.qc(adata)
    >>> int(adata.n_obs) > 0
    True
    """
    if sample_col not in adata.obs:
        msg = f"Column '{sample_col}' not in adata.obs (have: {', '.join(map(str, adata.obs.columns[:12]))}). Set data.sample_col."
        raise DataSchemaError(msg)
    qc_metrics(adata, mt_prefix=mt_prefix)
    if max_pct_mt is not None and not adata.var[K.MT].any():
        msg = (
            f"No mitochondrial genes (prefix '{mt_prefix}') among {adata.n_vars} genes "
            f"(first: {', '.join(adata.var_names[:5])}). Set preprocess.mt_prefix (e.g. 'mt-' for mouse) "
            "or preprocess.max_pct_mt: null to skip the mitochondrial filter."
        )
        raise DataSchemaError(msg)
    obs = adata.obs
    keep = (obs[K.QC_N_GENES] >= min_genes) & (obs[K.QC_N_COUNTS] >= min_counts)
    if max_pct_mt is not None:
        keep &= obs[K.QC_PCT_MT] <= max_pct_mt
    outlier = pd.Series(data=False, index=obs.index)
    for _, idx in obs.groupby(sample_col, observed=True).indices.items():
        sub = obs.iloc[idx]
        out = _mad_outlier(np.log1p(sub[K.QC_N_COUNTS].to_numpy()), nmads)
        out |= _mad_outlier(np.log1p(sub[K.QC_N_GENES].to_numpy()), nmads)
        if max_pct_mt is not None:
            out |= _mad_outlier(sub[K.QC_PCT_MT].to_numpy(), nmads_mt, upper_only=True)
        outlier.iloc[idx] = out
    keep &= ~outlier
    if remove_doublets:
        keep &= ~_scrublet_calls(adata, sample_col=sample_col, seed=seed)
    kept = obs.loc[keep, sample_col].value_counts()
    empty = sorted(set(obs[sample_col].unique()) - set(kept[kept > 0].index))
    if empty:
        msg = (
            f"No cells left after QC in sample(s) {', '.join(map(str, empty[:5]))} "
            f"(min_genes={min_genes}, min_counts={min_counts}, max_pct_mt={max_pct_mt}). "
            "Drop the sample, or relax preprocess.min_genes / min_counts / max_pct_mt."
        )
        raise DataSchemaError(msg)
    n0 = adata.n_obs
    adata.uns.setdefault(K.BM, {})["qc"] = {
        "params": {
            "min_genes": min_genes,
            "min_counts": min_counts,
            "max_pct_mt": max_pct_mt if max_pct_mt is not None else "none",
            "nmads": nmads,
            "nmads_mt": nmads_mt,
            "remove_doublets": remove_doublets,
        },
        "n_cells_in": int(n0),
        "n_cells_kept": int(keep.sum()),
    }
    logger.info("qc: kept %d/%d cells in %d samples", int(keep.sum()), n0, len(kept))
    filtered = adata[keep.to_numpy()].copy()
    if copy:
        return filtered
    adata._init_as_actual(filtered)
    return None


SCRUBLET_MIN_CELLS = 50  # smaller samples are not scored: too few cells to simulate doublets against


def _scrublet_calls(adata: AnnData, *, sample_col: str, seed: int | None) -> pd.Series:
    """Predicted doublets from ``sc.pp.scrublet(batch_key=sample_col)``: Scrublet on each sample on its own.

    Samples with fewer than ``SCRUBLET_MIN_CELLS`` cells are not scored (no doublet calls, no score). Scrublet
    reads raw counts from ``X`` of a lean copy (sample column, positional index), so ``adata.obs`` is not replaced
    and duplicate cell names across samples do not matter (scverse/scanpy#4098). Cells that Scrublet's own filters
    would drop (fewer than 3 genes detected in >= 3 cells of their sample) are left out first: with ``batch_key``
    scanpy raises KeyError on them (scverse/scanpy#2377); they are not called doublets (the QC floors remove them).
    """
    import anndata as ad
    import scanpy as sc

    from biomarkers._optional import require

    # Scrublet's automatic threshold (threshold_minimum) comes from scikit-image, which scanpy does not install.
    require("skimage.filters", "doublets", purpose="preprocess.remove_doublets")
    calls = pd.Series(data=False, index=adata.obs_names)
    codes, names = pd.factorize(adata.obs[sample_col])  # NaN sample: code -1, never scored
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    x = adata.X.tocsr() if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
    use = _scrublet_keeps(x, codes, n_samples=len(names), big=np.flatnonzero(sizes >= SCRUBLET_MIN_CELLS))
    if not use.any():
        return calls
    lean = ad.AnnData(X=x[use], obs=pd.DataFrame({"sample": codes[use]}, index=np.flatnonzero(use).astype(str)))
    sc.pp.scrublet(lean, batch_key="sample", random_state=0 if seed is None else seed, verbose=False)
    calls.iloc[use] = lean.obs["predicted_doublet"].astype(bool).to_numpy()
    score = np.full(adata.n_obs, np.nan)
    score[use] = lean.obs["doublet_score"].to_numpy()
    adata.obs[K.QC_DOUBLET_SCORE] = score
    return calls


def _scrublet_keeps(x: sparse.csr_matrix, codes: np.ndarray, *, n_samples: int, big: np.ndarray) -> np.ndarray:
    """Cells of samples ``big`` that sc.pp.scrublet's filters keep (>= 3 genes each detected in >= 3 of the cells)."""
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))[x.data != 0]
    cols = x.indices[x.data != 0]
    use = np.isin(codes, big)
    while True:  # to a fixed point: dropping a cell can take a gene below 3 cells
        r = use[rows]
        cells = sparse.coo_matrix((np.ones(r.sum()), (codes[rows[r]], cols[r])), shape=(n_samples, x.shape[1]))
        ok = cells.toarray() >= 3
        n_ok = np.bincount(rows[r], weights=ok[codes[rows[r]], cols[r]], minlength=x.shape[0])
        new = use & (n_ok >= 3)
        if (new == use).all():
            return use
        use = new
