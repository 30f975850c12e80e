"""Evaluate signatures on a bulk cohort: AUROC for a binary outcome, bootstrap CIs (by patient), Mann-Whitney p."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from biomarkers import _keys
from biomarkers._errors import DataSchemaError
from biomarkers.signatures._aliases import _Resolver
from biomarkers.signatures._bulk import _bulk_tables, _set_scores
from biomarkers.signatures._gene_sets import as_gene_sets, load_gene_sets
from biomarkers.stats import auroc, bh_adjust, bootstrap_indices, weighted_auroc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from numpy.typing import NDArray

    from biomarkers.signatures._gene_sets import GeneSetsLike

logger = logging.getLogger("biomarkers")

EVAL_COLUMNS = [
    "signature",
    "kind",
    "n_genes",
    "n_found",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "p_value",
    "q_value",
    "direction",
    "n_pos",
    "n_neg",
    "found",
]


def _labels(meta: pd.DataFrame, *, label_col: str, positive: object) -> pd.Series:
    if label_col not in meta.columns:
        msg = (
            f"Column {label_col!r} not in the sample metadata (have: {', '.join(map(str, meta.columns))}). "
            "Pass label_col=<outcome column>."
        )
        raise DataSchemaError(msg)
    labels = meta[label_col].dropna()
    classes = list(pd.unique(labels))
    if positive not in classes or len(classes) != 2:
        msg = (
            f"{label_col!r} has classes {classes}; evaluation needs exactly two, one of them positive={positive!r}. "
            "Fix positive= or filter the samples."
        )
        raise DataSchemaError(msg)
    dropped = len(meta) - len(labels)
    if dropped:
        logger.info("evaluate_signatures: %d sample(s) without %s dropped", dropped, label_col)
    return labels.eq(positive)


def _boot_weights(
    y: NDArray[np.bool_], groups: NDArray[np.int64] | None, *, n_boot: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Bootstrap replicates as sample weights (n_boot x n_samples): how often each sample is drawn.

    The units drawn are samples or, with groups, patients (repeat biopsies of one patient travel together), by the
    package's stratified bootstrap (:func:`biomarkers.stats.bootstrap_indices`), so each replicate keeps the class
    sizes. A patient whose samples disagree in label counts as positive when stratifying.
    """
    if groups is None:
        unit_of_sample = np.arange(len(y))
        unit_y = y
    else:
        units, unit_of_sample = np.unique(groups, return_inverse=True)
        unit_y = np.zeros(len(units), dtype=bool)
        np.logical_or.at(unit_y, unit_of_sample, y)
        mixed = np.zeros(len(units), dtype=bool)
        np.logical_or.at(mixed, unit_of_sample, unit_y[unit_of_sample] != y)
        if mixed.any():
            logger.warning(
                "evaluate_signatures: %d group(s) have both labels; the bootstrap counts them as positive", mixed.sum()
            )
        if unit_y.all():
            msg = (
                f"All {len(units)} groups have a positive sample, so no patient is negative and a bootstrap over "
                "patients stratified by class is impossible. Check group_col: it should hold one id per patient."
            )
            raise DataSchemaError(msg)
    n_units = len(unit_y)
    idx = bootstrap_indices(unit_y, n_boot, rng)
    # Draws -> how often each unit was drawn, one bincount over all replicates at once.
    flat = (np.arange(n_boot)[:, None] * n_units + idx).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units).astype(float)
    return counts[:, unit_of_sample]


def _bootstrap_ci(
    score: NDArray[np.float64], y: NDArray[np.bool_], weights: NDArray[np.float64], *, ci: float
) -> tuple[float, float, float]:
    """AUROC of ``score`` for ``y`` and its percentile bootstrap CI over the replicates in ``weights``."""
    auc = float(auroc(y, score))
    if weights.shape[0] == 0:
        return auc, np.nan, np.nan
    boot = weighted_auroc(y, score, weights)
    # Rows with NaN scores are dropped before this, so a replicate may lack a class here: it has no AUROC.
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha]) if boot.size else (np.nan, np.nan)
    return auc, float(low), float(high)


def _p_value(score: pd.Series, y: pd.Series, groups: pd.Series | None) -> float:
    if groups is not None:
        # Repeat biopsies of one patient are not independent: test patient means when each patient has one label.
        by_patient = pd.DataFrame({"s": score, "y": y, "g": groups}).groupby("g", observed=True)
        if (by_patient["y"].nunique() == 1).all():
            agg = by_patient.agg(s=("s", "mean"), y=("y", "first"))
            score, y = agg["s"], agg["y"].astype(bool)
    pos, neg = score[y].to_numpy(), score[~y].to_numpy()
    if len(pos) == 0 or len(neg) == 0:
        return np.nan
    return float(mannwhitneyu(pos, neg, alternative="two-sided").pvalue)


def evaluate_signatures(
    data: AnnData | pd.DataFrame,
    *,
    label_col: str = _keys.RESPONSE,
    positive: object = _keys.NON_RESPONDER,
    gene_sets: GeneSetsLike | None = None,
    genes: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int | None = 0,
    group_col: str | None = None,
    meta_cols: Sequence[str] | None = None,
    layer: str | None = None,
    method: Literal["zscore_mean", "mean"] = "zscore_mean",
    ci: float = 0.95,
) -> pd.DataFrame:
    """AUROC of each signature (and of single genes) for the positive class in a bulk cohort, with bootstrap CIs.

    The direction is fixed before looking: a higher score predicts ``positive`` (non-response). AUROC is reported as
    is, never flipped to >= 0.5; an AUROC below 0.5 means the signature runs the other way in this cohort
    (``direction`` names the observed side). Set scores come from :func:`score_bulk`; a single gene's score is its
    expression. CIs are percentile bootstraps, stratified by class, over samples or, with ``group_col``, over
    patients (repeat biopsies of one patient travel together); every row uses the same replicates, so rows are
    comparable. ``p_value`` is a two-sided Mann-Whitney U test (on patient means when ``group_col`` is given and each
    patient has one label) and ``q_value`` its Benjamini-Hochberg adjustment across the rows.

    Parameters
    ----------
    data
        AnnData (obs = samples with ``label_col``) or DataFrame (samples x [metadata + genes]).
    label_col
        Outcome column.
    positive
        Label of the positive class.
    gene_sets
        Sets to evaluate; `None`: every package set (:func:`list_gene_sets`). Pass ``[]`` for single genes only.
    genes
        Single genes to evaluate as their own rows (named by the requested symbol; aliases resolved).
    n_boot
        Bootstrap replicates (0: no CI).
    seed
        Seed of the bootstrap.
    group_col
        Column identifying patients (e.g. ``patient_id``) for a patient-level bootstrap and test.
    meta_cols
        DataFrame columns that are metadata, not genes (default: every non-numeric column, plus ``label_col`` and
        ``group_col``).
    layer
        AnnData layer to use instead of ``X``.
    method
        Set score, see :func:`score_bulk`.
    ci
        Confidence level of the interval.

    Returns
    -------
    One row per set then per gene: ``signature, kind ("gene_set" | "single_gene"), n_genes, n_found, auroc,
    auroc_ci_low, auroc_ci_high, p_value, q_value, direction, n_pos, n_neg, found``. A set with no gene in the data
    has ``n_found = 0`` and NaN statistics.

    Examples
    --------
    >>> import pandas as pd
    >>> from biomarkers.signatures import evaluate_signatures
    >>> df = pd.DataFrame({"response": ["responder"] * 3 + ["non_responder"] * 3, "IL6": [1, 2, 3, 4, 5, 6.0]})
    >>> evaluate_signatures(df, gene_sets=[], genes=["IL6"], n_boot=200)[["signature", "auroc"]].to_dict("records")
    [{'signature': 'IL6', 'auroc': 1.0}]
    """
    expr, meta = _bulk_tables(data, layer=layer, meta_cols=meta_cols, extra_meta=(label_col, group_col))
    y_all = _labels(meta, label_col=label_col, positive=positive)
    expr = expr.loc[y_all.index]
    groups = None
    if group_col is not None:
        if group_col not in meta.columns:
            msg = f"group_col={group_col!r} not in the sample metadata (have: {', '.join(map(str, meta.columns))})."
            raise DataSchemaError(msg)
        groups = meta.loc[y_all.index, group_col]
        if groups.isna().any():
            msg = f"{group_col!r} is missing for {int(groups.isna().sum())} sample(s). Fill it (one id per patient)."
            raise DataSchemaError(msg)

    sets = load_gene_sets() if gene_sets is None else as_gene_sets(gene_sets)
    set_scores, coverage = _set_scores(expr, sets, method=method)
    rows = [
        {
            "signature": r["set"],
            "kind": "gene_set",
            "n_genes": r["n_genes"],
            "n_found": r["n_found"],
            "found": r["found"],
        }
        for r in coverage.to_dict(orient="records")
    ]
    scores = {r["signature"]: set_scores[r["signature"]] for r in rows}
    resolver = _Resolver(expr.columns)
    for gene in genes or []:
        hit = resolver.resolve_one(gene)
        rows.append({"signature": gene, "kind": "single_gene", "n_genes": 1, "n_found": int(hit is not None)})
        rows[-1]["found"] = gene if hit is not None else ""
        scores[gene] = expr[hit] if hit is not None else pd.Series(np.nan, index=expr.index)

    rng = np.random.default_rng(seed)
    codes = None if groups is None else pd.factorize(groups)[0]
    y = y_all.to_numpy()
    weights = _boot_weights(y, codes, n_boot=n_boot, rng=rng)
    for row in rows:
        score = scores[row["signature"]]
        valid = np.isfinite(score.to_numpy())
        row["n_pos"], row["n_neg"] = int((valid & y).sum()), int((valid & ~y).sum())
        if row["n_pos"] == 0 or row["n_neg"] == 0:
            row.update(auroc=np.nan, auroc_ci_low=np.nan, auroc_ci_high=np.nan, p_value=np.nan, direction="")
            continue
        auc, low, high = _bootstrap_ci(score.to_numpy()[valid], y[valid], weights[:, valid], ci=ci)
        p = _p_value(score[valid], y_all[valid], None if groups is None else groups[valid])
        direction = "higher_in_positive" if auc > 0.5 else "lower_in_positive" if auc < 0.5 else "none"
        row.update(auroc=auc, auroc_ci_low=low, auroc_ci_high=high, p_value=p, direction=direction)

    table = pd.DataFrame(rows)
    table["q_value"] = bh_adjust(table["p_value"].to_numpy(dtype=float))  # rows without a p-value stay NaN
    table = table[EVAL_COLUMNS]
    table.attrs["params"] = {
        "label_col": label_col,
        "positive": positive,
        "group_col": group_col,
        "n_boot": n_boot,
        "seed": seed,
        "method": method,
        "ci": ci,
        "n_samples": len(y),
    }
    logger.info(
        "evaluate_signatures: %d rows (%d sets, %d genes) on %d samples (%d positive)",
        len(table),
        len(sets),
        len(genes or []),
        len(y),
        int(y.sum()),
    )
    return table
