"""Differential expression of pseudobulk counts between non-responders and responders, patient as the unit.

Methods
-------
``deseq2``
    PyDESeq2 (Muzellec et al. 2023 Bioinformatics; Love et al. 2014 Genome Biol) with its own
    ``DefaultInference``: negative binomial GLM with ``~ covariates + condition``, Wald test, Cook's outlier
    handling, and ``padj`` from PyDESeq2's independent filtering (BH over the genes that pass the mean-count filter
    chosen at alpha 0.05; filtered genes and Cook's outliers get NaN). About 3-5 s per compartment of ~2,000 genes
    x 40 patients on one core, 20-30 s when its many small BLAS calls compete with other load
    (``benchmarks/deseq2_inference.py``).
``deseq2_fast``
    The same PyDESeq2 pipeline and ``padj``, with dispersions, IRLS and Wald tests vectorised over genes
    (``_inference.py``, which overrides PyDESeq2 inference internals). Opt-in (``discovery.method: deseq2_fast``);
    checked against ``deseq2`` by the equivalence tests; about 0.5 s for the same compartment (6-10x faster).
``ttest``
    Ordinary least squares per gene on log2(CPM + 1) with the same design; ``stat`` is the t statistic of the
    condition coefficient (Student's t-test when there are no covariates), as in limma without variance moderation.
    Fast (milliseconds), meant for the many fits of nested cross-validation.
``wilcoxon``
    Mann-Whitney U on log2(CPM + 1), ignoring covariates; ``stat`` is the normal z of U.

For ``ttest`` and ``wilcoxon``, p-values are adjusted per compartment by Benjamini-Hochberg over every tested gene
(:func:`biomarkers.stats.bh_adjust`).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.stats import bh_adjust, zscore  # bh_adjust stays importable from here and biomarkers.discovery

if TYPE_CHECKING:
    from collections.abc import Sequence


logger = logging.getLogger("biomarkers")

Method = Literal["deseq2", "deseq2_fast", "ttest", "wilcoxon"]
METHODS: tuple[str, ...] = ("deseq2", "deseq2_fast", "ttest", "wilcoxon")
DESEQ2_METHODS: tuple[str, ...] = ("deseq2", "deseq2_fast")
DEFAULT_COMPARTMENTS: tuple[str, ...] = ("MNP", "stroma", "epithelium", "lymphoid", "plasma", "granulocyte")
RESULT_COLUMNS: tuple[str, ...] = ("gene", "log2FC", "lfcSE", "stat", "pvalue", "padj", "baseMean", "rank")
_NR, _R = "NR", "R"  # condition levels handed to PyDESeq2 (plain names keep formulaic contrasts simple)


def filter_genes(counts: pd.DataFrame, *, min_counts: int = 10, min_expressed: int = 3) -> pd.DataFrame:
    """Keep genes with ``>= min_counts`` summed counts and non-zero counts in ``>= min_expressed`` patients."""
    total = counts.sum(axis=0)
    expressed = (counts > 0).sum(axis=0)
    return counts.loc[:, (total >= min_counts) & (expressed >= min_expressed)]


def _design(covariates: pd.DataFrame | None, y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Intercept + covariates (categorical one-hot, numeric standardised) + condition; returns matrix and kept names."""
    cols = [np.ones(y.size)]
    kept: list[str] = []
    if covariates is not None:
        for name in covariates.columns:
            block = _covariate_block(covariates[name])
            if block.shape[1] == 0:
                warnings.warn(
                    f"Covariate '{name}' is constant among the tested patients; it is dropped from the design.",
                    stacklevel=4,
                )
                continue
            trial = np.column_stack([*cols, block, y])
            if np.linalg.matrix_rank(trial) < trial.shape[1] or trial.shape[0] - trial.shape[1] < 2:
                warnings.warn(
                    f"Covariate '{name}' is confounded with the response (or leaves < 2 residual degrees of freedom) "
                    "among the tested patients; it is dropped from the design. Its effect cannot be separated from "
                    "response: interpret the results with care.",
                    stacklevel=4,
                )
                continue
            cols.append(block)
            kept.append(str(name))
    return np.column_stack([*cols, y]), kept


def _covariate_block(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        z = zscore(values.to_numpy(dtype=float))
        # A constant covariate z-scores to all-NaN: it carries no information, so it adds no column.
        return z[:, None] if np.isfinite(z).any() else np.zeros((z.size, 0))
    levels = sorted(values.astype(str).unique())
    return (
        np.column_stack([(values.astype(str) == lv).to_numpy(float) for lv in levels[1:]])
        if len(levels) > 1
        else np.zeros((len(values), 0))
    )


def _log_cpm(counts: np.ndarray) -> np.ndarray:
    lib = counts.sum(axis=1, keepdims=True)
    return np.log2(1e6 * counts / np.where(lib > 0, lib, 1.0) + 1.0)


def _base_mean(counts: np.ndarray) -> np.ndarray:
    lib = counts.sum(axis=1)
    sf = lib / np.exp(np.mean(np.log(np.where(lib > 0, lib, 1.0))))
    return (counts / np.where(sf > 0, sf, 1.0)[:, None]).mean(axis=0)


def _ols(counts: np.ndarray, design: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import stats

    yv = _log_cpm(counts)
    xtx_inv = np.linalg.pinv(design.T @ design)
    beta = xtx_inv @ design.T @ yv
    resid = yv - design @ beta
    df = design.shape[0] - design.shape[1]
    sigma2 = (resid**2).sum(axis=0) / max(df, 1)
    se = np.sqrt(sigma2 * xtx_inv[-1, -1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, beta[-1] / se, 0.0)
    return {"log2FC": beta[-1], "lfcSE": se, "stat": t, "pvalue": 2 * stats.t.sf(np.abs(t), df)}


def _wilcoxon(counts: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import stats

    lc = _log_cpm(counts)
    a, b = lc[y == 1], lc[y == 0]
    res = stats.mannwhitneyu(a, b, alternative="two-sided", axis=0, method="asymptotic")
    n1, n0 = a.shape[0], b.shape[0]
    mu, sd = n1 * n0 / 2, np.sqrt(n1 * n0 * (n1 + n0 + 1) / 12)
    z = (res.statistic - mu) / sd
    return {
        "log2FC": a.mean(axis=0) - b.mean(axis=0),
        "lfcSE": np.full(lc.shape[1], np.nan),
        "stat": z,
        "pvalue": res.pvalue,
    }


def _deseq2(
    counts: pd.DataFrame, y: np.ndarray, covariates: pd.DataFrame | None, kept: list[str], *, fast: bool
) -> dict[str, np.ndarray]:
    from biomarkers._optional import require

    require("pydeseq2", "discover", purpose="Discovery with method='deseq2'")
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    from biomarkers.discovery._inference import fast_inference

    meta = pd.DataFrame({"condition": np.where(y == 1, _NR, _R)}, index=counts.index)
    terms = []
    for i, name in enumerate(kept):
        col = f"cov{i}"  # formula-safe names, whatever the obs column is called
        v = covariates[name]  # type: ignore[index]
        if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
            meta[col] = zscore(v.to_numpy(float))
        else:
            meta[col] = v.astype(str).to_numpy()
        terms.append(col)
    design = "~" + " + ".join([*terms, "condition"])
    fit_type = "ratio" if int((counts > 0).all(axis=0).sum()) >= 10 else "poscounts"
    inference = fast_inference(n_cpus=1) if fast else DefaultInference(n_cpus=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dds = DeseqDataSet(
            counts=counts, metadata=meta, design=design, size_factors_fit_type=fit_type, inference=inference, quiet=True
        )
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", _NR, _R], inference=inference, quiet=True)
        ds.summary()
    for w in caught:  # PyDESeq2's notices (e.g. trend fit fell back to the mean) are not caller-fixable
        logger.info("PyDESeq2: %s", w.message)
    r = ds.results_df.reindex(counts.columns)
    return {
        "log2FC": r["log2FoldChange"].to_numpy(float),
        "lfcSE": r["lfcSE"].to_numpy(float),
        "stat": r["stat"].to_numpy(float),
        "pvalue": r["pvalue"].to_numpy(float),
        "padj": r["padj"].to_numpy(float),  # PyDESeq2's independent filtering, not plain BH
        "baseMean": r["baseMean"].to_numpy(float),
    }


def rank_genes(
    counts: pd.DataFrame,
    y: Sequence[int] | np.ndarray | pd.Series,
    *,
    covariates: pd.DataFrame | None = None,
    method: Method = "deseq2",
    min_counts: int = 10,
    min_expressed: int = 3,
) -> pd.DataFrame:
    """Test every gene of a patients x genes pseudobulk table for a difference between the two label groups.

    Parameters
    ----------
    counts
        Patients x genes raw pseudobulk counts (index = patient id).
    y
        0/1 per row of ``counts`` (1 = non-responder).
    covariates
        Patients x covariates (e.g. ``batch``); a covariate constant or confounded with ``y`` is dropped with a
        warning. Ignored by ``wilcoxon``.
    method
        ``deseq2`` (PyDESeq2's own inference), ``deseq2_fast`` (vectorised inference, opt-in), ``ttest`` or
        ``wilcoxon`` (see the module docstring).
    min_counts, min_expressed
        Gene filter applied first (see :func:`filter_genes`).

    Returns
    -------
    One row per tested gene, sorted by ``rank``, with columns ``gene, log2FC, lfcSE, stat, pvalue, padj, baseMean,
    rank``. ``padj`` is PyDESeq2's (independent filtering) for the DESeq2 methods, else BH over all tested genes.
    ``log2FC`` and ``stat`` are non-responder vs responder; ``rank`` 1 is the strongest up-regulation in
    non-responders (largest ``stat``). ``attrs['covariates']`` lists the covariates kept in the design.
    """
    if method not in METHODS:
        msg = f"Unknown DE method {method!r}. Use one of {', '.join(METHODS)}."
        raise ConfigError(msg)
    y_arr = np.asarray(y, dtype=int)
    if y_arr.size != counts.shape[0]:
        msg = f"y has {y_arr.size} labels but counts has {counts.shape[0]} patients. Align y to counts.index."
        raise DataSchemaError(msg)
    kept_counts = filter_genes(counts, min_counts=min_counts, min_expressed=min_expressed)
    cov = covariates.loc[counts.index] if covariates is not None and covariates.shape[1] else None
    design, kept = _design(cov, y_arr) if method != "wilcoxon" else (None, [])
    x = kept_counts.to_numpy(dtype=float)
    if kept_counts.shape[1] == 0:
        res: dict[str, np.ndarray] = {name: np.zeros(0) for name in ("log2FC", "lfcSE", "stat", "pvalue")}
    elif method in DESEQ2_METHODS:
        res = _deseq2(kept_counts, y_arr, cov, kept, fast=method == "deseq2_fast")
    elif method == "ttest":
        res = _ols(x, design)
    else:
        res = _wilcoxon(x, y_arr)
    out = pd.DataFrame(
        {"gene": kept_counts.columns.astype(str), **{name: np.asarray(v, float) for name, v in res.items()}}
    )
    if "baseMean" not in out:
        out["baseMean"] = _base_mean(x) if x.size else np.zeros(0)
    if "padj" not in out:
        out["padj"] = bh_adjust(out["pvalue"].to_numpy())
    order = np.lexsort((out["gene"].to_numpy(), -np.nan_to_num(out["stat"].to_numpy(), nan=-np.inf)))
    out = out.iloc[order].reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    out = out.loc[:, list(RESULT_COLUMNS)]
    out.attrs["covariates"] = kept
    out.attrs["method"] = method
    return out
