"""Metrics of out-of-fold predictions with percentile-bootstrap CIs over patients, thresholds and paired deltas.

The metric functions are small numpy re-implementations of sklearn's (checked against sklearn in the tests), so
that 1,000 bootstrap resamples of several models take well under a second. AUROC and the bootstrap (stratified by
class) are :mod:`biomarkers.stats`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.stats import auroc as _auroc
from biomarkers.stats import bootstrap_indices

METRICS: tuple[str, ...] = ("auroc", "auprc", "balanced_accuracy", "brier")


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision as in sklearn: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct-score block
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _balanced_accuracy(y: np.ndarray, s: np.ndarray, threshold: float) -> np.ndarray:
    pred = s >= threshold
    n1 = y.sum(axis=-1)
    tpr = (pred & (y == 1)).sum(axis=-1) / n1
    tnr = (~pred & (y == 0)).sum(axis=-1) / (y.shape[-1] - n1)
    return (tpr + tnr) / 2


def _brier(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    return ((s - y) ** 2).mean(axis=-1)


def point_metrics(y_true: Any, p: Any, *, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, AUPRC (average precision), balanced accuracy at ``threshold`` and Brier score, without CIs.

    Parameters
    ----------
    y_true
        0/1 labels (1 = non-responder).
    p
        Predicted probability of non-response.
    threshold
        ``p >= threshold`` is called non-responder (balanced accuracy only).

    Returns
    -------
    Dict with keys ``auroc``, ``auprc``, ``balanced_accuracy``, ``brier``.
    """
    y, s = _check(y_true, p)
    return {
        "auroc": float(_auroc(y, s)),
        "auprc": _average_precision(y, s),
        "balanced_accuracy": float(_balanced_accuracy(y, s, threshold)),
        "brier": float(_brier(y, s)),
    }


def _check(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int).ravel()
    s = np.asarray(p, dtype=float).ravel()
    if y.size != s.size:
        msg = f"y_true has {y.size} values but p has {s.size}. Pass one prediction per patient."
        raise DataSchemaError(msg)
    if np.isnan(s).any():
        msg = f"p has {int(np.isnan(s).sum())} missing prediction(s). Every patient needs an out-of-fold prediction."
        raise DataSchemaError(msg)
    n1 = int(y.sum())
    if n1 == 0 or n1 == y.size:
        msg = f"Metrics need both classes; found {y.size - n1} responder / {n1} non-responder. Check the labels."
        raise DataSchemaError(msg)
    return y, s


def evaluate_predictions(
    y_true: Any,
    p: Any,
    *,
    n_boot: int = 1000,
    seed: int | None = 0,
    threshold: float = 0.5,
    ci: float = 0.95,
    p_repeats: np.ndarray | None = None,
) -> dict[str, float]:
    """Point estimates and percentile-bootstrap CIs of AUROC, AUPRC, balanced accuracy and Brier score.

    The bootstrap resamples patients within each class (:func:`biomarkers.stats.bootstrap_indices`: the
    out-of-fold predictions are held fixed, so without ``p_repeats`` the CI reflects which patients were sampled,
    not refitting variability).

    Parameters
    ----------
    y_true
        0/1 labels (1 = non-responder).
    p
        Out-of-fold probability of non-response, one per patient.
    n_boot
        Bootstrap resamples (0 skips the CIs; they are then NaN).
    seed
        Seed of the resampling.
    threshold
        ``p >= threshold`` is called non-responder (balanced accuracy only).
    ci
        Central coverage of the interval.
    p_repeats
        Optional repeats x patients matrix of each CV repeat's out-of-fold probabilities (same patient order).
        Then the point estimate is the mean over repeats of each repeat's metric (the usual repeated-CV
        estimate), and each bootstrap replicate draws one repeat as well as the patients, so the CI also
        carries the CV's refitting variability. Without it, averaged predictions are smoother than any one
        model's and a bootstrap over patients alone is too narrow: on null cohorts the best model's CI could
        exclude 0.5.

    Returns
    -------
    ``{metric, metric_ci_low, metric_ci_high}`` for each of ``auroc``, ``auprc``, ``balanced_accuracy``, ``brier``,
    plus ``n`` (patients), ``n_positive`` and ``threshold``.

    Examples
    --------
    >>> from biomarkers.models import evaluate_predictions
    >>> m = evaluate_predictions([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9], n_boot=200)
    >>> round(m["auroc"], 3), m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"]
    (0.889, True)
    """
    y, s = _check(y_true, p)
    out: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    if p_repeats is None:
        point = point_metrics(y, s, threshold=threshold)
    else:
        reps = np.atleast_2d(np.asarray(p_repeats, dtype=float))
        per_rep = [point_metrics(y, r, threshold=threshold) for r in reps]
        point = {name: float(np.mean([m[name] for m in per_rep])) for name in METRICS}
    boot: dict[str, np.ndarray] = {}
    if n_boot > 0:
        idx = bootstrap_indices(y, n_boot, rng)
        yb = y[idx]
        sb = s[idx] if p_repeats is None else reps[rng.integers(0, reps.shape[0], size=n_boot)[:, None], idx]
        boot = {
            "auroc": _auroc(yb, sb),
            "auprc": np.array([_average_precision(yb[i], sb[i]) for i in range(n_boot)]),
            "balanced_accuracy": _balanced_accuracy(yb, sb, threshold),
            "brier": _brier(yb, sb),
        }
    alpha = (1 - ci) / 2 * 100
    for name in METRICS:
        out[name] = point[name]
        lo, hi = np.percentile(boot[name], [alpha, 100 - alpha]) if boot else (np.nan, np.nan)
        out[f"{name}_ci_low"] = float(lo)
        out[f"{name}_ci_high"] = float(hi)
    out["n"] = float(y.size)
    out["n_positive"] = float(y.sum())
    out["threshold"] = float(threshold)
    return out


def _rates_at_each_value(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of ``p`` and the sensitivity and false-positive rate of calling ``p >= value``."""
    y, s = _check(y_true, p)
    cand = np.unique(s)
    pred = s[None, :] >= cand[:, None]
    return cand, (pred & (y == 1)).sum(axis=1) / y.sum(), (pred & (y == 0)).sum(axis=1) / (y.size - y.sum())


def youden_threshold(y_true: Any, p: Any) -> float:
    """Threshold maximising Youden's J (sensitivity + specificity - 1); call non-responder when ``p >= t``.

    Computed on out-of-fold predictions, so it uses no patient's own in-sample fit; the balanced accuracy at this
    threshold on the same predictions is optimistic and is not reported. Ties go to the threshold closest to 0.5.

    Parameters
    ----------
    y_true
        0/1 labels (1 = non-responder).
    p
        Out-of-fold probability of non-response.

    Returns
    -------
    The threshold: one of the observed values of ``p``.

    Examples
    --------
    >>> from biomarkers.models import youden_threshold
    >>> youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.7])
    0.6
    """
    cand, tpr, fpr = _rates_at_each_value(y_true, p)
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(cand[best[np.argmin(np.abs(cand[best] - 0.5))]])


def threshold_rule(rule: Any) -> dict[str, Any]:
    """Normalise ``evaluation.threshold``: ``"youden"`` or ``{"target_sensitivity": s}`` with ``0 < s < 1``.

    Parameters
    ----------
    rule
        The setting (a string, a mapping, or a pydantic model with ``model_dump``).

    Returns
    -------
    ``{"rule": "youden"}`` or ``{"rule": "target_sensitivity", "target_sensitivity": s}``.
    """
    if hasattr(rule, "model_dump"):
        rule = rule.model_dump()
    if rule is None or rule == "youden" or rule == {"rule": "youden"}:
        return {"rule": "youden"}
    if isinstance(rule, Mapping) and set(rule) - {"rule"} == {"target_sensitivity"}:
        s = float(rule["target_sensitivity"])
        if 0 < s < 1:
            return {"rule": "target_sensitivity", "target_sensitivity": s}
    msg = f"evaluation.threshold must be 'youden' or {{target_sensitivity: s}} with 0 < s < 1 (got {rule!r})."
    raise ConfigError(msg)


def choose_threshold(y_true: Any, p: Any, rule: Any = "youden") -> float:
    """Threshold chosen on (training-fold, out-of-fold) predictions by ``rule``; call non-responder when ``p >= t``.

    ``youden``: maximise sensitivity + specificity - 1 (:func:`youden_threshold`). ``target_sensitivity: s``: the
    largest threshold whose sensitivity on these predictions is at least ``s`` (the most specific such call).

    Parameters
    ----------
    y_true
        0/1 labels (1 = non-responder).
    p
        Out-of-fold probability of non-response.
    rule
        See :func:`threshold_rule`.

    Returns
    -------
    The threshold (one of the observed values of ``p``).

    Examples
    --------
    >>> from biomarkers.models._metrics import choose_threshold
    >>> choose_threshold([0, 0, 1, 1, 1], [0.1, 0.5, 0.4, 0.6, 0.9], {"target_sensitivity": 0.9})
    0.4
    """
    r = threshold_rule(rule)
    if r["rule"] == "youden":
        return youden_threshold(y_true, p)
    cand, tpr, _ = _rates_at_each_value(y_true, p)
    ok = np.flatnonzero(tpr >= r["target_sensitivity"] - 1e-12)
    return float(cand[ok.max()])


def operating_point(y_true: Any, p: Any, threshold: float | Any) -> tuple[float, float]:
    """Sensitivity and specificity of the calls ``p >= threshold`` (a threshold per patient is allowed).

    Parameters
    ----------
    y_true
        0/1 labels (1 = non-responder).
    p
        Predicted probabilities.
    threshold
        One threshold, or one per patient (e.g. each fold's own).

    Returns
    -------
    ``(sensitivity, specificity)``.
    """
    y, s = _check(y_true, p)
    call = s >= np.broadcast_to(np.asarray(threshold, dtype=float), s.shape)
    return float(call[y == 1].mean()), float((~call[y == 0]).mean())


def paired_delta_auroc(
    y_true: Any, p_a: Any, p_b: Any, *, n_boot: int = 1000, seed: int | None = 0, ci: float = 0.95
) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the same patients, with a paired percentile-bootstrap CI.

    Each replicate resamples patients within each class, and (given repeats x patients matrices) draws one CV
    repeat, used for both a and b: the pairing removes the patient-sampling noise they share.

    Parameters
    ----------
    y_true
        0/1 labels, one per patient.
    p_a, p_b
        Out-of-fold probabilities, ``(n,)`` or repeats x patients ``(r, n)`` (same patient order; b may have the
        same repeats as a or one row).
    n_boot
        Bootstrap replicates (0: no CI).
    seed
        Seed.
    ci
        Central coverage.

    Returns
    -------
    ``{"delta", "ci_low", "ci_high"}``; the point estimate is the mean over repeats of the per-repeat difference.
    """
    y = np.asarray(y_true, dtype=int).ravel()
    a = np.atleast_2d(np.asarray(p_a, dtype=float))
    b = np.atleast_2d(np.asarray(p_b, dtype=float))
    if b.shape[0] == 1 and a.shape[0] > 1:
        b = np.repeat(b, a.shape[0], axis=0)
    if a.shape != b.shape or a.shape[1] != y.size:
        msg = f"paired_delta_auroc: predictions {a.shape} and {b.shape} do not match {y.size} patients."
        raise DataSchemaError(msg)
    _check(y, a[0])
    delta = float(np.mean(_auroc(np.broadcast_to(y, a.shape), a) - _auroc(np.broadcast_to(y, b.shape), b)))
    lo = hi = float("nan")
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = bootstrap_indices(y, n_boot, rng)
        rep = rng.integers(0, a.shape[0], size=n_boot)[:, None]
        yb = y[idx]
        d = _auroc(yb, a[rep, idx]) - _auroc(yb, b[rep, idx])
        alpha = (1 - ci) / 2 * 100
        lo, hi = (float(v) for v in np.percentile(d, [alpha, 100 - alpha]))
    return {"delta": delta, "ci_low": lo, "ci_high": hi}
