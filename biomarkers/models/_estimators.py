"""Estimators built from a spec dict: every one is an sklearn Pipeline with imputation (and scaling) inside.

Putting imputation, scaling and feature selection inside the Pipeline means they are re-fitted on each
training fold, so nothing learned from held-out patients leaks into a fold's model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import BaseCrossValidator, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers._keys import FAMILY_CLIN, FEATURE_SEP
from biomarkers.models._mechanism import ScoreClassifier, SignedSum, check_weights

logger = logging.getLogger("biomarkers")

MODEL_KINDS: tuple[str, ...] = ("logreg", "random_forest", "lightgbm", "mechanism_score")
BASELINE_KINDS: tuple[str, ...] = ("majority", "single_feature")
CLINICAL_KINDS: tuple[str, ...] = ("clinical",)
ALL_KINDS: tuple[str, ...] = MODEL_KINDS + CLINICAL_KINDS + BASELINE_KINDS
INPUTS: tuple[str, ...] = ("biomarkers", "clinical", "all")
SPEC_KEYS: frozenset[str] = frozenset(
    {"kind", "name", "params", "select_k", "tune", "tune_grid", "feature", "weights", "inputs", "columns"}
)
CLINICAL_PREFIX = f"{FAMILY_CLIN}{FEATURE_SEP}"
_READS_ALL = ("logreg", "random_forest", "lightgbm")  # kinds that read every column they are given
#: Grid of inverse regularisation strengths searched when ``tune: true`` (logreg only).
DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: Settings for LightGBM on tens of rows: its defaults (min_child_samples=20, min_data_in_bin=3) barely
#: split below ~40 rows, so every tree would be a single leaf and the model would predict the prevalence.
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "max_depth": 3,
    "min_child_samples": 3,
    "min_data_in_bin": 1,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "importance_type": "gain",
    "verbose": -1,
    "n_jobs": 1,
    "deterministic": True,
}
RANDOM_FOREST_DEFAULTS: dict[str, Any] = {"n_estimators": 300, "min_samples_leaf": 2, "n_jobs": 1}
LOGREG_DEFAULTS: dict[str, Any] = {"C": 1.0, "l1_ratio": 0.0, "class_weight": None, "max_iter": 5000}
_SKLEARN_GE_18 = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)


def anova_f_safe(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.feature_selection.f_classif`` with constant features scored F = 0, p = 1, and without warnings.

    A drop-in ``score_func`` for :class:`~sklearn.feature_selection.SelectKBest`. Constant features are common in
    small training folds (e.g. a rare cell type absent from every patient). ``f_classif`` warns on them, and
    rounding in its sums of squares can give a constant column a spurious F (of 22,500 constant columns of 24 rows,
    values 0-1000, 19% scored F > 1e-6, some ~1e308, ahead of every real feature). Constant columns (``ptp == 0``)
    get F = 0 and p = 1 here, so they are never selected ahead of a varying feature.

    Parameters
    ----------
    X
        Samples x features (no missing values: it runs after the imputer).
    y
        Class labels.

    Returns
    -------
    F statistics and p-values, one per feature.
    """
    X = np.asarray(X, dtype=float)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.filterwarnings("ignore", message="Features .* are constant", category=UserWarning)
        f, p = f_classif(X, y)
    constant = np.ptp(X, axis=0) == 0 if X.shape[0] else np.ones(X.shape[1], dtype=bool)
    constant |= np.isnan(f)  # 0/0: no variance at all
    return np.where(constant, 0.0, f), np.where(constant, 1.0, p)


class InnerStratifiedKFold(BaseCrossValidator):
    """Stratified K-fold for inner (tuning) loops that lowers K to the smallest class count.

    An outer training fold of ~24 patients may hold only 2-3 non-responders, so a fixed inner K would fail.

    Parameters
    ----------
    n_splits
        Largest number of folds; lowered to the smallest class count (at least 2).
    random_state
        Seed for shuffling.
    """

    def __init__(self, n_splits: int = 3, random_state: int | None = None) -> None:
        self.n_splits = n_splits
        self.random_state = random_state

    def _k(self, y: Any) -> int:
        if y is None:
            return self.n_splits
        counts = np.unique(np.asarray(y), return_counts=True)[1]
        k = int(min(self.n_splits, counts.min()))
        if k < 2:
            msg = (
                f"Cannot tune C by inner CV: the smallest class in a training fold has {counts.min()} member(s) "
                "(need >= 2). Set tune: false for this model or lower cv.n_splits."
            )
            raise DataSchemaError(msg)
        return k

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:  # noqa: ARG002 - sklearn API
        """Return the number of inner folds for labels ``y``."""
        return self._k(y)

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # noqa: ARG002
        """Yield (train, test) indices, stratified on ``y``."""
        skf = StratifiedKFold(n_splits=self._k(y), shuffle=True, random_state=self.random_state)
        yield from skf.split(X, y)


class TunedLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression whose C is chosen by inner stratified CV on log loss, then refitted on all rows.

    A lean stand-in for ``GridSearchCV(LogisticRegression)``: on tens of rows GridSearchCV's bookkeeping costs
    ~10x the fits themselves, which matters inside 25 outer folds x 100 permutations. Log loss rather than AUROC:
    AUROC on ~8-patient inner folds is mostly ties. Ties in loss go to the smallest C (strongest shrinkage).

    Parameters
    ----------
    Cs
        Candidate inverse regularisation strengths.
    l1_ratio
        0 = L2, in (0, 1] = elastic net (saga).
    class_weight
        None or ``"balanced"``.
    max_iter
        Solver iterations.
    inner_splits
        Inner folds (lowered to the smallest class count, see :class:`InnerStratifiedKFold`).
    random_state
        Seed of the inner folds and the solver.
    """

    def __init__(
        self,
        Cs: tuple[float, ...] = DEFAULT_C_GRID,
        l1_ratio: float = 0.0,
        class_weight: str | None = None,
        max_iter: int = 5000,
        inner_splits: int = 3,
        random_state: int | None = None,
    ) -> None:
        self.Cs = Cs
        self.l1_ratio = l1_ratio
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.inner_splits = inner_splits
        self.random_state = random_state

    def _make(self, C: float) -> LogisticRegression:
        params = {"C": C, "l1_ratio": self.l1_ratio, "class_weight": self.class_weight, "max_iter": self.max_iter}
        return _logreg(params, seed=self.random_state)

    def fit(self, X: Any, y: Any) -> TunedLogisticRegression:
        """Choose C by inner CV, then refit on all rows; sets ``C_``, ``cv_log_loss_``, ``coef_``, ``classes_``."""
        X = np.asarray(X, dtype=float)
        y = np.asarray(y)
        Cs = np.asarray(self.Cs, dtype=float)
        loss = np.zeros(Cs.size)
        for tr, te in InnerStratifiedKFold(self.inner_splits, random_state=self.random_state).split(X, y):
            yt = (y[te] == y.max()).astype(float)
            for i, C in enumerate(Cs):
                p = np.clip(self._make(float(C)).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1], 1e-15, 1 - 1e-15)
                loss[i] -= np.sum(yt * np.log(p) + (1 - yt) * np.log(1 - p))
        self.cv_log_loss_ = loss / y.size
        self.C_ = float(Cs[int(np.argmin(loss))])
        self.estimator_ = self._make(self.C_).fit(X, y)
        self.classes_ = self.estimator_.classes_
        self.coef_ = self.estimator_.coef_
        self.intercept_ = self.estimator_.intercept_
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities from the refitted model."""
        return self.estimator_.predict_proba(np.asarray(X, dtype=float))

    def predict(self, X: Any) -> np.ndarray:
        """Class labels from the refitted model."""
        return self.estimator_.predict(np.asarray(X, dtype=float))


def _logreg(params: Mapping[str, Any], *, seed: int | None) -> LogisticRegression:
    p = {**LOGREG_DEFAULTS, **params}
    l1_ratio = float(p.pop("l1_ratio"))
    if l1_ratio > 0:
        p.setdefault("solver", "saga")
    if _SKLEARN_GE_18:
        # sklearn >= 1.8 deprecates `penalty`; l1_ratio alone selects L2 (0) / elastic net (0-1) / L1 (1).
        return LogisticRegression(l1_ratio=l1_ratio, random_state=seed, **p)
    penalty = "l2" if l1_ratio == 0 else "elasticnet"  # pragma: no cover - old sklearn
    extra = {"l1_ratio": l1_ratio} if l1_ratio > 0 else {}  # pragma: no cover
    return LogisticRegression(penalty=penalty, random_state=seed, **extra, **p)  # pragma: no cover


def _check_spec(spec: Mapping[str, Any]) -> str:
    if not isinstance(spec, Mapping) or "kind" not in spec:
        msg = f"A model spec must be a mapping with a 'kind' key (got: {spec!r}). Example: {{'kind': 'logreg'}}."
        raise ConfigError(msg)
    kind = spec["kind"]
    if kind not in ALL_KINDS:
        msg = f"Unknown model kind {kind!r} (have: {', '.join(ALL_KINDS)}). Fix models[].kind."
        raise ConfigError(msg)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        msg = f"Unknown key(s) {unknown} in model spec {dict(spec)!r} (allowed: {sorted(SPEC_KEYS)}). Fix models[]."
        raise ConfigError(msg)
    if spec.get("tune") and kind != "logreg":
        msg = f"tune: true is only supported for kind 'logreg' (got kind {kind!r}). Remove tune from that model."
        raise ConfigError(msg)
    if "feature" in spec and kind != "single_feature":
        msg = f"'feature' only applies to kind 'single_feature' (got kind {kind!r}). Remove it or change the kind."
        raise ConfigError(msg)
    if kind == "single_feature" and not spec.get("feature"):
        msg = "A single_feature baseline needs a 'feature' (a column of X), e.g. {'kind': 'single_feature', ...}."
        raise ConfigError(msg)
    if spec.get("weights") is not None and kind not in ("mechanism_score", "clinical"):
        msg = f"'weights' only applies to kinds mechanism_score and clinical (got kind {kind!r}). Remove it."
        raise ConfigError(msg)
    if spec.get("inputs", "biomarkers") not in INPUTS:
        msg = f"inputs must be one of {', '.join(INPUTS)} (got {spec.get('inputs')!r}). Fix models[].inputs."
        raise ConfigError(msg)
    return str(kind)


def spec_name(spec: Mapping[str, Any]) -> str:
    """Display name of a spec: its ``name``, else ``kind`` (baselines: ``majority``, ``single__<feature>``).

    Parameters
    ----------
    spec
        A model or baseline spec.

    Returns
    -------
    The name used in metric tables and result dicts.

    Examples
    --------
    >>> from biomarkers.models import spec_name
    >>> spec_name({"kind": "single_feature", "feature": "pb__MNP__OSM"})
    'single__pb__MNP__OSM'
    """
    if spec.get("name"):
        return str(spec["name"])
    if spec["kind"] == "single_feature":
        return f"single__{spec['feature']}"
    if spec["kind"] == "clinical":
        return "clinical_plus_biomarkers" if spec.get("weights") else "clinical_only"
    return str(spec["kind"])


def is_clinical(column: Any) -> bool:
    """Whether a feature column is a clinical covariate (``clin__<column>``), not a biomarker."""
    return str(column).startswith(CLINICAL_PREFIX)


def input_columns(spec: Mapping[str, Any], columns: Any) -> list[str] | None:
    """Return the columns of X a spec's estimator reads, or None for all of them.

    Biomarker models (the default ``inputs: biomarkers``) never see clinical covariates, so that a clinical-only
    and a clinical-plus-biomarkers candidate measure what the biomarkers add.
    """
    cols = [str(c) for c in columns]
    inputs = spec.get("inputs", "biomarkers")
    if spec["kind"] == "clinical" or inputs == "clinical":
        return [c for c in cols if is_clinical(c)]
    if inputs == "all" or not any(is_clinical(c) for c in cols):
        return None
    return [c for c in cols if not is_clinical(c)]


Builder = Callable[[Mapping[str, Any], dict[str, Any], int | None, int | None], BaseEstimator]


def _select_k_step(spec: Mapping[str, Any], n_features: int | None) -> list[tuple[str, BaseEstimator]]:
    k = spec.get("select_k")
    if k is None:
        return []
    k = int(k)
    if k < 1:
        msg = f"select_k must be a positive integer or null (got {k}). Fix models[].select_k."
        raise ConfigError(msg)
    if n_features is not None and k >= n_features:
        logger.debug("make_estimator: select_k=%d >= %d features; keeping all features", k, n_features)
        return []
    return [("select", SelectKBest(anova_f_safe, k=k))]


def _build_logreg(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:
    steps = [("impute", _imputer()), *_select_k_step(spec, n), ("scale", StandardScaler())]
    if spec.get("tune"):
        if "C" in params:
            msg = f"params.C={params['C']} conflicts with tune: true (C is chosen by inner CV). Use tune_grid."
            raise ConfigError(msg)
        grid = tuple(float(c) for c in (spec.get("tune_grid") or DEFAULT_C_GRID))
        clf: BaseEstimator = TunedLogisticRegression(Cs=grid, random_state=seed, **params)
    else:
        clf = _logreg(params, seed=seed)
    return Pipeline([*steps, ("clf", clf)])


def _build_random_forest(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:
    from sklearn.ensemble import RandomForestClassifier

    clf = RandomForestClassifier(random_state=seed, **{**RANDOM_FOREST_DEFAULTS, **params})
    return Pipeline([("impute", _imputer()), *_select_k_step(spec, n), ("clf", clf)])


def _build_lightgbm(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:
    from lightgbm import LGBMClassifier

    clf = LGBMClassifier(random_state=seed, **{**LIGHTGBM_DEFAULTS, **params})
    return Pipeline([("impute", _imputer()), *_select_k_step(spec, n), ("clf", clf)])


def _build_majority(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:  # noqa: ARG001
    return Pipeline([("impute", _imputer()), ("clf", DummyClassifier(strategy="prior"))])


def _build_single_feature(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:  # noqa: ARG001
    select = ColumnTransformer([("feature", "passthrough", [spec["feature"]])], remainder="drop")
    return Pipeline([("column", select), ("impute", _imputer()), ("scale", StandardScaler()), ("clf", _logreg(params, seed=seed))])


def _mechanism_steps(weights: Mapping[str, int]) -> Pipeline:
    """Impute, standardise and sum with fixed signs: the score's only fitted steps are median and mean/SD."""
    return Pipeline([("impute", _imputer()), ("scale", StandardScaler()), ("score", SignedSum(tuple(weights.values())))])


def _weights(spec: Mapping[str, Any]) -> dict[str, int]:
    weights = spec.get("weights")
    if not weights:
        msg = (
            f"{spec_name(spec)} has no resolved weights: evaluate_models resolves the default list against X; "
            "pass weights: {feature: 1, ...} to make_estimator."
        )
        raise ConfigError(msg)
    return check_weights(weights)


def _build_mechanism_score(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:  # noqa: ARG001
    weights = _weights(spec)
    select = ColumnTransformer([("feature", _mechanism_steps(weights), list(weights))], remainder="drop")
    return Pipeline([("column", select), ("clf", ScoreClassifier(**params))])


def _build_clinical(spec: Mapping[str, Any], params: dict[str, Any], seed: int | None, n: int | None) -> Pipeline:  # noqa: ARG001
    """Logistic regression on the clinical covariates, plus the mechanism score as one more column (``weights``).

    The biomarkers enter as one prespecified score rather than 40 free features, so that on tens of patients the
    comparison with the clinical-only model measures what the biomarkers add, not how much a bigger model overfits.
    """
    clin = list(spec["columns"])
    parts: list[tuple[str, Any, list[str]]] = [("clin", Pipeline([("impute", _imputer()), ("scale", StandardScaler())]), clin)]
    weights = spec.get("weights")
    if weights:
        w = check_weights(weights)
        parts.append(("mech", Pipeline([*_mechanism_steps(w).steps, ("rescale", StandardScaler())]), list(w)))
    return Pipeline([("column", ColumnTransformer(parts, remainder="drop")), ("clf", _logreg({"C": 1.0, **params}, seed=seed))])


#: kind -> builder. A new method is a builder here (and its kind in the config schema), not another branch.
BUILDERS: dict[str, Builder] = {
    "logreg": _build_logreg,
    "random_forest": _build_random_forest,
    "lightgbm": _build_lightgbm,
    "mechanism_score": _build_mechanism_score,
    "clinical": _build_clinical,
    "majority": _build_majority,
    "single_feature": _build_single_feature,
}


def make_estimator(
    spec: Mapping[str, Any], *, seed: int | None = 0, n_features: int | None = None, columns: Any = None
) -> Pipeline:
    """Build an unfitted sklearn Pipeline (median imputation, scaling, optional selection, classifier) from a spec.

    Parameters
    ----------
    spec
        ``{"kind": ..., "params": {...}, "select_k": k, "tune": bool, "tune_grid": [C, ...], "name": str}``.
        Kinds: ``logreg`` (StandardScaler + LogisticRegression; ``params.l1_ratio`` 0 = L2, in (0, 1] = elastic net
        with saga; ``params.C``; ``params.class_weight: balanced``; ``tune: true`` picks C from ``tune_grid`` by
        inner stratified CV on log loss (:class:`TunedLogisticRegression`), inside whatever outer fold the
        pipeline is fitted on, i.e. nested CV), ``random_forest``
        (300 trees: plenty for tens of patients, min_samples_leaf=2), ``lightgbm`` (settings for tens of rows, see
        ``LIGHTGBM_DEFAULTS``), ``mechanism_score`` with ``weights: {feature: +1 or -1}`` (a fixed-sign sum of
        standardised features, see :mod:`biomarkers.models._mechanism`), ``clinical`` with ``columns`` (the
        ``clin__`` covariates; a logistic regression) and optionally ``weights`` (the mechanism score as one more
        covariate). Baselines: ``majority`` (predicts the training prevalence) and ``single_feature`` with
        ``feature: <column>`` (a 1-feature logistic regression, so its sign and calibration are learned inside the
        training fold). ``params`` override the defaults and go to the classifier. ``select_k`` adds
        ``SelectKBest`` (ANOVA F) after imputation. ``inputs`` (``biomarkers``, the default; ``clinical``; ``all``)
        picks the columns of X a model reads: biomarker models never see ``clin__`` covariates.
    seed
        ``random_state`` of the classifier and of the inner tuning folds.
    n_features
        Number of input columns, if known; ``select_k`` is capped at it (``k >= n_features`` keeps all).
    columns
        The columns of X, if known: with clinical covariates among them, a biomarker model's pipeline starts by
        keeping the biomarker columns (:func:`input_columns`).

    Returns
    -------
    An unfitted Pipeline whose last step is named ``"clf"``.

    Examples
    --------
    >>> from biomarkers.models import make_estimator
    >>> pipe = make_estimator({"kind": "logreg", "select_k": 5}, seed=0)
    >>> [name for name, _ in pipe.steps]
    ['impute', 'select', 'scale', 'clf']
    """
    kind = _check_spec(spec)
    params = dict(spec.get("params") or {})
    keep = input_columns(spec, columns) if columns is not None else None
    if kind == "clinical":
        spec = {**spec, "columns": spec.get("columns") or keep or []}
        if not spec["columns"]:
            msg = "A clinical candidate needs clin__ covariates in X (features.clinical). Add them or drop the candidate."
            raise DataSchemaError(msg)
        return BUILDERS[kind](spec, params, seed, n_features)
    if keep is not None and kind in _READS_ALL:
        pipe = BUILDERS[kind](spec, params, seed, len(keep))
        select = ColumnTransformer([("feature", "passthrough", keep)], remainder="drop")
        return Pipeline([("column", select), *pipe.steps])
    return BUILDERS[kind](spec, params, seed, n_features)


def _imputer() -> SimpleImputer:
    # keep_empty_features: a column that is all-NaN in a training fold stays (as 0) so shapes and names are stable.
    return SimpleImputer(strategy="median", keep_empty_features=True)


def feature_importance(pipeline: Pipeline, *, feature_names: list[str] | None = None) -> pd.Series:
    """Return the importance of each feature a fitted pipeline uses, mapped back to feature names.

    Logistic regression: the coefficient on the standardised feature (signed; > 0 pushes towards non-response).
    Random forest: impurity decrease. LightGBM: total gain. Only features kept by the selection step appear.

    Parameters
    ----------
    pipeline
        A pipeline from :func:`make_estimator` (or :func:`fit_final`), fitted.
    feature_names
        Input column names, if the pipeline was fitted on an array without names.

    Returns
    -------
    Series indexed by feature name, sorted by absolute importance (largest first), named ``importance``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from biomarkers.models import fit_final, feature_importance
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"])
    >>> y = pd.Series((X["b"] > 0).astype(int))
    >>> feature_importance(fit_final({"kind": "logreg"}, X, y, seed=0)).index[0]
    'b'
    """
    clf = pipeline[-1]
    names = np.asarray(pipeline[:-1].get_feature_names_out(feature_names), dtype=object)
    # ColumnTransformer prefixes names with the transformer name ("feature__x"); strip it back.
    if "column" in pipeline.named_steps:
        names = np.array([n.split("__", 1)[1] for n in names], dtype=object)
    if hasattr(clf, "coef_"):
        values = np.asarray(clf.coef_)[0]
    elif hasattr(clf, "feature_importances_"):
        values = np.asarray(clf.feature_importances_, dtype=float)
    else:
        values = np.zeros(len(names))
    imp = pd.Series(values, index=pd.Index(names, name="feature"), name="importance")
    if "mechanism_score" in imp.index:
        # The score's weight, split over the features it sums (slope x sign / sqrt(k), per SD of each feature).
        from biomarkers.models._explain import mechanism_weights

        per = mechanism_weights(pipeline, float(imp["mechanism_score"]))
        imp = pd.concat([imp.drop("mechanism_score"), per.rename("importance")])
        imp.index.name = "feature"
    return imp.iloc[np.argsort(-np.abs(imp.to_numpy()), kind="stable")]
