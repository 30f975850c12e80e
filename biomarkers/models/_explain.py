"""Per-patient explanations: each feature's signed contribution to the log-odds of non-response.

Contributions add up: ``base + sum(contributions) = logit(p)`` for every patient, where ``base`` is the model's
log-odds for an average training patient (its intercept). How they are computed depends on the model:

- logistic regression and the single-feature baseline: coefficient x standardised value (after the fold's
  imputation, selection and scaling);
- the mechanism score: the logistic map's slope x sign x standardised value / sqrt(k), per feature of the score;
- the clinical models: as logistic regression, with the mechanism score's share split over its features;
- LightGBM: its own TreeSHAP (``pred_contrib``), already in log-odds;
- random forest: TreeSHAP from ``shap`` (the ``explain`` extra) on the probability scale, rescaled per patient
  so that the contributions add up to the log-odds difference (a forest averages probabilities, so it has no
  exact log-odds decomposition);
- the majority baseline: no feature contributes.

Features z-scored within a cohort are explained on that scale: the contributions are of the values the model saw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers._errors import MissingDependencyError
from biomarkers.models._mechanism import ScoreClassifier, SignedSum

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def _strip(name: str, columns: Any) -> str:
    """Return the input column an output name stands for (a ColumnTransformer may prefix it: ``feature__x``)."""
    if name in columns:
        return name
    rest = name.split("__", 1)[-1]
    if rest in columns:
        return rest
    msg = f"Cannot map the model's input {name!r} back to a feature column."
    raise ValueError(msg)


def _linear_parts(pipe: Pipeline, X: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Contributions and base of a pipeline ending in a linear classifier on the transformed columns."""
    clf = pipe[-1]
    coef = np.asarray(clf.coef_, dtype=float)[0]
    intercept = float(np.asarray(clf.intercept_, dtype=float)[0])
    pre = pipe[:-1]
    Z = np.asarray(pre.transform(X), dtype=float)
    names = [str(n) for n in pre.get_feature_names_out(list(X.columns))]
    out = pd.DataFrame(0.0, index=X.index, columns=X.columns)
    base = np.full(len(X), intercept)
    for j, name in enumerate(names):
        if name.endswith("mechanism_score"):
            contrib, offset = _mechanism_share(pipe, X, coef[j])
            out[contrib.columns] += contrib.to_numpy()
            base += offset
        else:
            out[_strip(name, X.columns)] += coef[j] * Z[:, j]
    return out, base


def _find_mechanism(pipe: Pipeline) -> tuple[Any, list[str], Any]:
    """Return the mechanism sub-pipeline (impute, scale, SignedSum[, rescale]) and its input columns."""
    column = pipe.named_steps["column"]
    for name, sub, cols in column.transformers_:
        if name in ("feature", "mech") and hasattr(sub, "named_steps") and isinstance(sub.named_steps.get("score"), SignedSum):
            return sub, list(cols), name
    msg = "No mechanism score in this pipeline."
    raise ValueError(msg)


def _mechanism_share(pipe: Pipeline, X: pd.DataFrame, slope: float) -> tuple[pd.DataFrame, float]:
    """Split ``slope x score`` over the score's features: each gets ``slope x sign x z / sqrt(k)``."""
    sub, cols, _ = _find_mechanism(pipe)
    z = np.asarray(sub[:2].transform(X[cols]), dtype=float)  # impute, scale
    signs = np.asarray(sub.named_steps["score"].signs, dtype=float)
    share = z * signs / np.sqrt(signs.size)
    offset = 0.0
    if "rescale" in sub.named_steps:  # the clinical model standardises the score once more
        r = sub.named_steps["rescale"]
        share = share / r.scale_[0]
        offset = -slope * r.mean_[0] / r.scale_[0]
    return pd.DataFrame(slope * share, index=X.index, columns=cols), offset


def mechanism_weights(pipe: Pipeline, slope: float) -> pd.Series:
    """Return the log-odds per SD of each feature of a pipeline's mechanism score, given the score's coefficient.

    Parameters
    ----------
    pipe
        A fitted pipeline with a mechanism score (kinds ``mechanism_score``, ``clinical`` with ``weights``).
    slope
        The classifier's coefficient on the score.

    Returns
    -------
    Series indexed by the score's features.
    """
    sub, cols, _ = _find_mechanism(pipe)
    signs = np.asarray(sub.named_steps["score"].signs, dtype=float)
    w = slope * signs / np.sqrt(signs.size)
    if "rescale" in sub.named_steps:
        w = w / sub.named_steps["rescale"].scale_[0]
    return pd.Series(w, index=cols)


def contributions(pipe: Pipeline, X: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Each feature's contribution to each patient's log-odds of non-response, and the base log-odds.

    Parameters
    ----------
    pipe
        A fitted pipeline from :func:`~biomarkers.models.make_estimator` / :func:`~biomarkers.models.fit_final`.
    X
        Patients x the model's features (the columns it was fitted on).

    Returns
    -------
    ``(contributions, base)``: patients x features (0 for features the model does not use) and the base log-odds
    per patient; ``base + contributions.sum(axis=1)`` equals ``logit(predict_proba(X)[:, 1])``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from biomarkers.models import fit_final
    >>> from biomarkers.models._explain import contributions
    >>> X = pd.DataFrame({"a": np.arange(10.0), "b": np.r_[np.zeros(5), np.ones(5)]})
    >>> pipe = fit_final({"kind": "logreg"}, X, pd.Series([0] * 5 + [1] * 5))
    >>> c, base = contributions(pipe, X)
    >>> p = pipe.predict_proba(X)[:, 1]
    >>> bool(np.allclose(base + c.sum(axis=1), np.log(p / (1 - p))))
    True
    """
    clf = pipe[-1]
    if isinstance(clf, ScoreClassifier):
        slope = float(clf.coef_[0, 0])
        contrib, _ = _mechanism_share(pipe, X, slope)
        out = pd.DataFrame(0.0, index=X.index, columns=X.columns)
        out[contrib.columns] = contrib.to_numpy()
        return out, pd.Series(float(clf.intercept_[0]), index=X.index)
    if hasattr(clf, "coef_"):
        out, base = _linear_parts(pipe, X)
        return out, pd.Series(base, index=X.index)
    p = pipe.predict_proba(X)[:, list(clf.classes_).index(1)]
    out = pd.DataFrame(0.0, index=X.index, columns=X.columns)
    if not hasattr(clf, "n_features_in_") or type(clf).__name__ == "DummyClassifier":
        return out, pd.Series(_logit(p), index=X.index)
    pre = pipe[:-1]
    Z = pre.transform(X)
    names = [_strip(str(n), X.columns) for n in pre.get_feature_names_out(list(X.columns))]
    if type(clf).__name__ == "LGBMClassifier":
        raw = np.asarray(clf.predict(np.asarray(Z, dtype=float), pred_contrib=True), dtype=float)
        out[names] = raw[:, :-1]
        return out, pd.Series(raw[:, -1], index=X.index)
    try:
        import shap
    except ImportError as e:
        msg = "Explaining a random forest needs shap: pip install 'biomarkers[explain]'."
        raise MissingDependencyError(msg) from e
    explainer = shap.TreeExplainer(clf)
    values = explainer.shap_values(np.asarray(Z, dtype=float), check_additivity=False)
    values = np.asarray(values[1] if isinstance(values, list) else values[..., 1] if np.ndim(values) == 3 else values)
    expected = np.atleast_1d(explainer.expected_value)
    base_p = float(expected[1] if expected.size > 1 else expected[0])
    # Rescale probability-scale SHAP values so they add up to the log-odds difference from the base.
    gap_p = p - base_p
    gap_logit = _logit(p) - _logit(np.array([base_p]))[0]
    slope = np.where(np.abs(gap_p) > 1e-9, gap_logit / np.where(np.abs(gap_p) > 1e-9, gap_p, 1.0), 1 / (base_p * (1 - base_p)))
    out[names] = values * slope[:, None]
    return out, pd.Series(_logit(np.array([base_p]))[0], index=X.index)


def top_features(contrib: pd.DataFrame, *, k: int = 3) -> pd.Series:
    """``"feature (+0.42); feature (-0.17); ..."``: each patient's ``k`` largest absolute contributions."""
    rows = {}
    for pid, row in contrib.iterrows():
        top = row[row.abs() > 0].abs().sort_values(ascending=False).index[:k]
        rows[pid] = "; ".join(f"{f} ({row[f]:+.2f})" for f in top)
    return pd.Series(rows, name="top_features").reindex(contrib.index)
