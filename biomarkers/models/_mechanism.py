"""A prespecified mechanism score: a fixed-sign sum of standardised, pre-registered features.

With 20-100 patients, a model that learns one weight per feature spends most of its data on noise. The
mechanism score learns no weights: the features and their signs are fixed before the data are seen (from
Martin et al. 2019 Cell for the AQP9+ inflammatory macrophages, West et al. 2017 Nat Med for the
oncostatin M / gp130-STAT3 axis), so its ranking of patients is fixed up to the standardisation. The only steps
fitted on a training fold are the median imputation and the standardisation (mean and SD of each feature);
a 1-D logistic regression then maps the score to a probability. That map is monotone, so it changes no AUROC;
it makes the probabilities (Brier score, threshold, calibration) meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.linear_model import LogisticRegression

from biomarkers._errors import ConfigError
from biomarkers._keys import AQP9_FRACTION, FAMILY_PB, FAMILY_PBZ, FAMILY_SIG, FEATURE_SEP


def _f(*parts: str) -> str:
    return FEATURE_SEP.join(parts)


#: Default weights: AQP9+ macrophage abundance, OSM expressed by mononuclear phagocytes, and the OSM / IL-6
#: (gp130-STAT3) response of the cells that carry OSMR (stroma, epithelium) and of MNPs. All point towards
#: non-response. Features a cohort lacks are dropped (logged); see :func:`resolve_weights`.
DEFAULT_MECHANISM_WEIGHTS: dict[str, int] = {
    AQP9_FRACTION: 1,
    _f(FAMILY_PB, "MNP", "OSM"): 1,
    _f(FAMILY_SIG, "MNP", "OSM_RESPONSE"): 1,
    _f(FAMILY_SIG, "stroma", "OSM_RESPONSE"): 1,
    _f(FAMILY_SIG, "stroma", "IL6_JAK_STAT3"): 1,
    _f(FAMILY_SIG, "epithelium", "OSM_RESPONSE"): 1,
}


#: The same mechanisms as bulk-compatible features (``pbz__<set>``: the set's genes z-scored within the cohort),
#: for bulk cohorts and single-cell models built on the bulk bridge.
DEFAULT_BULK_MECHANISM_WEIGHTS: dict[str, int] = {
    _f(FAMILY_PBZ, "AQP9_INFLAMMATORY_MACROPHAGE"): 1,
    _f(FAMILY_PBZ, "OSM_RESPONSE"): 1,
    _f(FAMILY_PBZ, "IL6_JAK_STAT3"): 1,
}


def check_weights(weights: Mapping[str, Any]) -> dict[str, int]:
    """Validate a weight mapping: feature -> +1 or -1.

    Parameters
    ----------
    weights
        Feature name -> sign.

    Returns
    -------
    The weights as ints.
    """
    if not isinstance(weights, Mapping) or not weights:
        msg = f"mechanism_score weights must be a non-empty mapping feature: +1 or -1 (got {weights!r}). Fix models[]."
        raise ConfigError(msg)
    bad = {k: v for k, v in weights.items() if v not in (1, -1) or isinstance(v, bool)}
    if bad:
        msg = f"mechanism_score weights must be +1 or -1 (got {bad}); the score learns no weights. Fix models[].weights."
        raise ConfigError(msg)
    return {str(k): int(v) for k, v in weights.items()}


def resolve_weights(weights: Mapping[str, int] | None, columns: Any) -> tuple[dict[str, int], list[str]]:
    """Return the weights of the features present in ``columns``, and the names of those absent.

    Parameters
    ----------
    weights
        Weights (None: :data:`DEFAULT_MECHANISM_WEIGHTS`, or :data:`DEFAULT_BULK_MECHANISM_WEIGHTS` when more of
        those are present).
    columns
        Candidate feature names.

    Returns
    -------
    ``(present weights, missing names)``.
    """
    cols = {str(c) for c in columns}
    if weights is None:
        # The single-cell list, or the bulk one when the features are the bulk bridge's (more of them present).
        lists = (DEFAULT_MECHANISM_WEIGHTS, DEFAULT_BULK_MECHANISM_WEIGHTS)
        weights = max(lists, key=lambda w: sum(k in cols for k in w))
    w = check_weights(weights)
    return {k: v for k, v in w.items() if k in cols}, [k for k in w if k not in cols]


class SignedSum(TransformerMixin, BaseEstimator):
    """``X @ signs / sqrt(k)``: the sum of already-standardised columns with fixed signs (one output column).

    Parameters
    ----------
    signs
        +1 / -1 per input column, in column order.
    """

    def __init__(self, signs: tuple[int, ...] = ()) -> None:
        self.signs = signs

    def fit(self, X: Any, y: Any = None) -> SignedSum:  # noqa: ARG002 - sklearn API
        """Nothing to learn; checks the width."""
        X = np.asarray(X, dtype=float)
        if X.shape[1] != len(self.signs):
            msg = f"SignedSum got {X.shape[1]} columns for {len(self.signs)} signs."
            raise ValueError(msg)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Return the score as a column."""
        s = np.asarray(self.signs, dtype=float)
        return (np.asarray(X, dtype=float) @ s / np.sqrt(s.size))[:, None]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:  # noqa: ARG002 - sklearn API
        """One output: ``mechanism_score``."""
        return np.array(["mechanism_score"], dtype=object)


class ScoreClassifier(ClassifierMixin, BaseEstimator):
    """Probability from one score column by a 1-D logistic regression (monotone: the ranking is the score's).

    Parameters
    ----------
    C
        Inverse regularisation of the slope and intercept (weak: 1e4).
    """

    def __init__(self, C: float = 1e4) -> None:
        self.C = C

    def fit(self, X: Any, y: Any) -> ScoreClassifier:
        """Fit the logistic map of the score; sets ``classes_`` and ``coef_``."""
        X = np.asarray(X, dtype=float)
        self.lr_ = LogisticRegression(C=self.C, max_iter=1000).fit(X, y)
        if self.lr_.coef_[0, 0] < 0:
            # The sign is prespecified: a fold where the score runs the wrong way gets a flat map, not a flipped one.
            self.lr_.coef_[:] = 0.0
            prior = float(np.mean(np.asarray(y) == self.lr_.classes_[1]))
            self.lr_.intercept_[:] = np.log(prior / (1 - prior))
        self.classes_ = self.lr_.classes_
        self.coef_ = self.lr_.coef_
        self.intercept_ = self.lr_.intercept_
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities."""
        return self.lr_.predict_proba(np.asarray(X, dtype=float))

    def predict(self, X: Any) -> np.ndarray:
        """Class labels."""
        return self.lr_.predict(np.asarray(X, dtype=float))
