"""The package's statistics: one implementation each, used by models, signatures and discovery.

- :func:`auroc`: Mann-Whitney AUROC with average ranks for ties (equals ``sklearn.metrics.roc_auc_score``),
  vectorised over rows so that a thousand bootstrap replicates are one call; :func:`weighted_auroc` is the same
  statistic with frequency weights, for bootstraps that draw patients with several samples each.
- :func:`bootstrap_indices`: resamples of patients with replacement, stratified by class (each replicate keeps
  the numbers of non-responders and responders), so every replicate has both classes and the same prevalence.
- :func:`bh_adjust`: Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``).
- :func:`zscore`: standardisation with one ``ddof`` (:data:`DDOF`) everywhere.
- :func:`calibration_slope_intercept`: logistic recalibration of predicted probabilities (Cox 1958; Van Calster
  et al. 2019 BMC Med 17:230).
- :func:`net_benefit`: decision-curve net benefit (Vickers & Elkin 2006, Med Decis Making 26:565).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from biomarkers._errors import DataSchemaError

#: Delta degrees of freedom of every z-score in the package (population SD: a cohort is standardised on itself).
DDOF = 0


def auroc(y: Any, s: Any) -> np.ndarray | float:
    """AUROC of scores ``s`` for 0/1 labels ``y``, along the last axis (rows are separate problems).

    Parameters
    ----------
    y
        0/1 labels (1 = positive), shape ``(n,)`` or ``(m, n)``.
    s
        Scores, same shape as ``y``; larger means more likely positive.

    Returns
    -------
    A float for 1-D input, else an array of ``m`` AUROCs (NaN where a row has one class).

    Examples
    --------
    >>> from biomarkers.stats import auroc
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(y, dtype=float)
    s = np.asarray(s, dtype=float)
    r = rankdata(s, axis=-1)
    n1 = y.sum(axis=-1)
    n0 = y.shape[-1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ((r * y).sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return float(out) if np.ndim(out) == 0 else out


def weighted_auroc(y: Any, s: Any, weights: Any) -> np.ndarray | float:
    """AUROC of scores ``s`` for 0/1 labels ``y`` with frequency weights, one AUROC per row of ``weights``.

    With integer weights this is :func:`auroc` of the sample that repeats row ``i`` ``weights[i]`` times (ties
    count 1/2). It serves cluster bootstraps, where a replicate draws patients and each drawn patient brings all
    of its samples: replicates then differ in size, so they cannot be rows of one rectangular :func:`auroc` call.

    Parameters
    ----------
    y
        0/1 labels, shape ``(n,)``.
    s
        Scores, shape ``(n,)``.
    weights
        Non-negative weights, shape ``(n,)`` or ``(m, n)`` (e.g. how often a bootstrap replicate drew each row).

    Returns
    -------
    A float for 1-D ``weights``, else ``m`` AUROCs (NaN where a row gives one class zero total weight).

    Examples
    --------
    >>> from biomarkers.stats import weighted_auroc
    >>> round(weighted_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [1, 2, 1, 1]), 3)  # the 0.4 negative twice
    0.667
    """
    y = np.asarray(y, dtype=float).ravel()
    s = np.asarray(s, dtype=float).ravel()
    w = np.asarray(weights, dtype=float)
    w2 = np.atleast_2d(w)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # one block per tied score value
    if s.size == 0:
        out = np.full(w2.shape[0], np.nan)
    else:
        pos = np.add.reduceat((w2 * y)[:, order], starts, axis=1)
        neg = np.add.reduceat((w2 * (1 - y))[:, order], starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each score value
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))
    return float(out[0]) if w.ndim == 1 else out


def bootstrap_indices(y: Any, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resamples of rows with replacement, stratified by class.

    Each replicate draws as many positives from the positives, and negatives from the negatives, as the sample
    has: the prevalence is fixed and no replicate lacks a class (an AUROC needs both).

    Parameters
    ----------
    y
        0/1 labels, one per patient.
    n_boot
        Number of replicates.
    rng
        Random generator.

    Returns
    -------
    Integer array ``(n_boot, n)`` of row indices (positives' draws first, then negatives').
    """
    y = np.asarray(y, dtype=int).ravel()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        msg = f"A stratified bootstrap needs both classes; found {neg.size} negative / {pos.size} positive."
        raise DataSchemaError(msg)
    return np.hstack(
        [pos[rng.integers(0, pos.size, size=(n_boot, pos.size))], neg[rng.integers(0, neg.size, size=(n_boot, neg.size))]]
    )


def bh_adjust(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN stays NaN and is not counted as a test.

    Parameters
    ----------
    pvalues
        Raw p-values.

    Returns
    -------
    Adjusted p-values (same shape).

    Examples
    --------
    >>> from biomarkers.stats import bh_adjust
    >>> bh_adjust([0.01, 0.04, float("nan"), 0.03]).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def zscore(x: Any, *, axis: int = 0, ddof: int = DDOF) -> Any:
    """Centre and scale along ``axis``; a constant column gives NaN (it carries no information).

    Parameters
    ----------
    x
        Array or DataFrame (a DataFrame keeps its labels; NaNs are ignored in the mean and SD).
    axis
        0: each column across rows (features across patients).
    ddof
        Delta degrees of freedom of the SD; the package uses :data:`DDOF` everywhere.

    Returns
    -------
    Same type and shape as ``x``.
    """
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        sd = x.std(axis=axis, ddof=ddof)
        sd = sd.where(sd > 0)
        return x.sub(x.mean(axis=axis), axis=1 - axis).div(sd, axis=1 - axis)
    a = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.nanstd(a, axis=axis, ddof=ddof, keepdims=True)
        return (a - np.nanmean(a, axis=axis, keepdims=True)) / np.where(sd > 0, sd, np.nan)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _logistic_fit(X: np.ndarray, y: np.ndarray, offset: np.ndarray, n_iter: int = 100) -> np.ndarray:
    """Unpenalised logistic regression by Newton-Raphson (a handful of columns, tens of rows)."""
    beta = np.zeros(X.shape[1])
    for _ in range(n_iter):
        eta = np.clip(X @ beta + offset, -30, 30)
        mu = 1 / (1 + np.exp(-eta))
        w = mu * (1 - mu)
        hess = X.T @ (X * w[:, None]) + 1e-9 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, X.T @ (y - mu))
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def calibration_slope_intercept(y: Any, p: Any) -> tuple[float, float]:
    """Calibration slope and intercept (calibration-in-the-large) of predicted probabilities.

    The slope is ``b`` in ``logit P(y=1) = a + b * logit(p)``: 1 is ideal, below 1 the predictions are too
    extreme (overfitting). The intercept is ``a`` in ``logit P(y=1) = a + logit(p)`` (slope fixed at 1): 0 is
    ideal, above 0 the predictions are too low on average.

    Parameters
    ----------
    y
        0/1 outcomes.
    p
        Predicted probabilities (out-of-fold), clipped to [1e-6, 1 - 1e-6].

    Returns
    -------
    ``(slope, intercept)``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomarkers.stats import calibration_slope_intercept
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0.05, 0.95, 20000)
    >>> y = (rng.uniform(size=p.size) < p).astype(int)
    >>> [round(v, 1) for v in calibration_slope_intercept(y, p)]
    [1.0, 0.0]
    """
    y = np.asarray(y, dtype=float).ravel()
    lp = _logit(p).ravel()
    ones = np.ones((y.size, 1))
    _, slope = _logistic_fit(np.column_stack([ones, lp]), y, np.zeros(y.size))
    (intercept,) = _logistic_fit(ones, y, lp)
    return float(slope), float(intercept)


def net_benefit(y: Any, p: Any, thresholds: Any) -> np.ndarray:
    """Net benefit of treating patients with ``p >= t``: ``TP/n - FP/n * t / (1 - t)`` at each threshold ``t``.

    Parameters
    ----------
    y
        0/1 outcomes (1 = the event a positive call acts on, here non-response).
    p
        Predicted probabilities.
    thresholds
        Threshold probabilities in (0, 1).

    Returns
    -------
    Net benefit per threshold. "Treat all" is ``net_benefit(y, ones, t)``; "treat none" is 0.
    """
    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    t = np.asarray(thresholds, dtype=float)
    call = p[None, :] >= t[:, None]
    tp = (call & (y == 1)).sum(axis=1)
    fp = (call & (y == 0)).sum(axis=1)
    return tp / y.size - fp / y.size * t / (1 - t)
