"""Compare models and baselines on the same patient folds; final refit."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from biomarkers import _keys as K
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers._keys import AQP9_FRACTION, FAMILY_PB, FEATURE_SEP
from biomarkers.models._cv import (
    Folds,
    _cross_validate_many,
    _fit_predict,
    _inner_predict,
    align_groups,
    check_xy,
    describe_workers,
    patient_folds,
    run_tasks,
    summarize_oof,
)
from biomarkers.models._estimators import (
    BASELINE_KINDS,
    CLINICAL_KINDS,
    _check_spec,
    is_clinical,
    make_estimator,
    spec_name,
)
from biomarkers.models._mechanism import resolve_weights
from biomarkers.models._metrics import (
    METRICS,
    choose_threshold,
    evaluate_predictions,
    paired_delta_auroc,
    point_metrics,
    threshold_rule,
)
from biomarkers.models._permutation import PermutationResult, _cv_auroc, _permutation_spec, selection_permutation_test
from biomarkers.models._select import (
    NestedSelection,
    cohort_folds,
    inner_folds,
    nested_selection,
    pick_best,
    repeat_matrix,
)
from biomarkers.stats import net_benefit

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from sklearn.pipeline import Pipeline

logger = logging.getLogger("biomarkers")

#: Single features compared against every model when present in X (the study's two candidate biomarkers).
DEFAULT_SINGLE_FEATURES: tuple[str, ...] = (AQP9_FRACTION, f"{FAMILY_PB}{FEATURE_SEP}MNP{FEATURE_SEP}OSM")
CV_DEFAULTS: dict[str, Any] = {"n_splits": 5, "n_repeats": 5}
CV_STRATEGIES: tuple[str, ...] = ("stratified", "leave_one_cohort_out")
#: Roles: a ``model`` may become champion; the ``clinical``-only model and the ``baseline`` majority may be selected
#: (and are then registered and tagged) but never promoted. A single feature that wins is a one-feature model.
ROLES: dict[str, str] = {"model": "model", "clinical": "clinical", "baseline": "baseline"}
NEVER_CHAMPION_KINDS: tuple[str, ...] = ("majority", "clinical")
#: Threshold probabilities of the decision curve.
DECISION_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_models` computed.

    Attributes
    ----------
    metrics
        One row per candidate (index ``model``): ``kind`` (``model``/``clinical``/``baseline``), each metric as the
        mean over CV repeats with ``_ci_low``/``_ci_high`` (bootstrap over patients, stratified by class, and
        repeats, coverage ``ci``), ``auroc_repeat_mean``/``auroc_repeat_sd`` (AUROC of each repeat's pooled OOF
        predictions), ``n``, ``n_positive``. Models first, then the clinical model, then baselines; best AUROC first.
    oof
        Per candidate: long OOF table from :func:`cross_validate_model` (``patient_id, repeat, fold, y_true, p``).
    predictions
        Patients x candidates: the per-patient OOF probability averaged over repeats, plus ``y_true``.
    per_repeat
        Long table ``model, repeat, auroc, auprc, balanced_accuracy, brier`` (pooled within each repeat).
    best_model
        The selected candidate: highest CV AUROC over all candidates, baselines and the clinical model included
        (ties go to the simplest). This is what the run registers, refitted on all patients.
    specs
        Name -> spec of every candidate.
    threshold
        The selected candidate's operating threshold, chosen by ``threshold_rule`` on its out-of-fold predictions
        over all patients (used by ``predict``); its honest sensitivity / specificity come from ``nested``.
    permutation
        The selection-aware permutation test (statistic: best candidate's 1 x K-fold AUROC), or None.
    folds
        The outer folds every candidate was evaluated on.
    cv
        Resolved CV settings (``n_splits``, ``n_repeats``, ``strategy``, ``inner_splits``, ``seed``, ``grouped``).
    seconds
        Wall time.
    ci
        Central coverage of the bootstrap CIs (e.g. 0.95).
    nested
        The nested CV of the choose-then-fit procedure (None when it was not run).
    nested_skipped
        Why the nested CV was not run (a training fold too small for an inner CV), else None.
    nested_metrics
        :func:`evaluate_predictions` of the nested OOF predictions (``auroc`` is the headline ``nested_cv_auroc``).
    deltas
        ``vs_best_baseline``, ``vs_clinical`` (nested procedure minus that candidate) and ``incremental`` (clinical
        plus biomarkers minus clinical only): ``{"delta", "ci_low", "ci_high", "against"}``, paired bootstrap.
    decision_curve
        Net benefit of the nested predictions, of treating all, and of none, per threshold probability.
    cohort_metrics
        Leave-one-cohort-out: one row per candidate (and ``nested``) and held-out cohort: ``auroc`` with CI, ``n``.
    threshold_rule
        The rule (``{"rule": "youden"}`` or ``{"rule": "target_sensitivity", ...}``).
    """

    metrics: pd.DataFrame
    oof: dict[str, pd.DataFrame]
    predictions: pd.DataFrame
    per_repeat: pd.DataFrame
    best_model: str
    specs: dict[str, dict[str, Any]]
    threshold: float
    permutation: PermutationResult | None
    folds: Folds = field(repr=False)
    cv: dict[str, Any] = field(default_factory=dict)
    seconds: float = float("nan")
    ci: float = 0.95
    nested: NestedSelection | None = field(default=None, repr=False)
    nested_metrics: dict[str, float] = field(default_factory=dict)
    nested_skipped: str | None = None
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)
    decision_curve: pd.DataFrame | None = field(default=None, repr=False)
    cohort_metrics: pd.DataFrame | None = None
    threshold_rule: dict[str, Any] = field(default_factory=lambda: {"rule": "youden"})

    @property
    def best_spec(self) -> dict[str, Any]:
        """Spec of the selected candidate (pass to :func:`fit_final`)."""
        return self.specs[self.best_model]

    @property
    def permutation_p(self) -> float:
        """Selection-aware permutation p-value (NaN if not run)."""
        return float("nan") if self.permutation is None else self.permutation.p_value

    @property
    def role(self) -> str:
        """Role of the selected candidate (``model``, ``clinical`` or ``baseline``)."""
        return str(self.metrics.loc[self.best_model, "kind"])

    @property
    def champion_block(self) -> str | None:
        """Why the selected candidate may not become champion (majority or clinical-only), else None."""
        kind = self.specs[self.best_model]["kind"]
        if kind == "majority":
            return "the majority baseline won: no candidate ranks patients better than the prevalence"
        if kind == "clinical" and not self.specs[self.best_model].get("weights"):
            return "the clinical-only model won: the biomarkers add nothing measurable beyond the clinical covariates"
        return None

    @property
    def nested_auroc(self) -> float:
        """The nested CV AUROC of the choose-then-fit procedure (NaN without nesting)."""
        return float(self.nested_metrics.get("auroc", float("nan")))


def _baseline_specs(baselines: Sequence[Any] | None, columns: pd.Index) -> list[dict[str, Any]]:
    if baselines is None:
        feats = [f for f in DEFAULT_SINGLE_FEATURES if f in columns]
        return [{"kind": "majority"}] + [{"kind": "single_feature", "feature": f} for f in feats]
    specs: list[dict[str, Any]] = []
    for b in baselines:
        if isinstance(b, str):
            kind, _, feat = b.partition(":")
            spec: dict[str, Any] = {"kind": kind.strip()}
            if feat:
                spec["feature"] = feat.strip()
        else:
            spec = dict(b)
        if _check_spec(spec) not in BASELINE_KINDS:
            msg = f"Baseline {b!r} is not a baseline kind (have: {', '.join(BASELINE_KINDS)}). Fix baselines."
            raise ConfigError(msg)
        if spec["kind"] == "single_feature" and spec["feature"] not in columns:
            msg = f"Baseline feature {spec['feature']!r} is not a column of X ({len(columns)} columns). Fix baselines."
            raise DataSchemaError(msg)
        specs.append(spec)
    return specs


def _named(specs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, i = spec_name(spec), 2
        while name in out:
            name, i = f"{spec_name(spec)}_{i}", i + 1
        out[name] = dict(spec)
    return out


def _cv_settings(cv_spec: Any) -> dict[str, Any]:
    if cv_spec is None:
        cv_spec = {}
    elif hasattr(cv_spec, "model_dump"):
        cv_spec = cv_spec.model_dump()
    out: dict[str, Any] = {key: int(cv_spec.get(key) or default) for key, default in CV_DEFAULTS.items()}
    out["strategy"] = str(cv_spec.get("strategy") or "stratified")
    if out["strategy"] not in CV_STRATEGIES:
        msg = f"cv.strategy must be one of {', '.join(CV_STRATEGIES)} (got {out['strategy']!r}). Fix the cv section."
        raise ConfigError(msg)
    out["inner_splits"] = int(cv_spec.get("inner_splits") or out["n_splits"])
    return out


def _resolve_mechanism(spec: dict[str, Any], columns: pd.Index) -> dict[str, Any]:
    """Fix a mechanism score's weights to the features X has (the default list loses absent ones, logged)."""
    biomarkers = [c for c in columns if not is_clinical(c)]
    weights, missing = resolve_weights(spec.get("weights"), biomarkers)
    if spec.get("weights") is not None and missing:
        msg = (
            f"mechanism_score weights name feature(s) not in X: {', '.join(missing[:5])} ({len(biomarkers)} "
            "biomarker features). Fix models[].weights (feature names as in features.csv)."
        )
        raise DataSchemaError(msg)
    if not weights:
        msg = (
            f"None of the default mechanism_score features ({', '.join(missing[:4])}, ...) is among the "
            f"{len(biomarkers)} features. Give the score explicit weights: {{feature: 1 or -1}}."
        )
        raise DataSchemaError(msg)
    if missing:
        logger.warning("mechanism_score: default feature(s) %s not in this cohort; scored without them", ", ".join(missing))
    return {**spec, "weights": weights}


def _candidates(
    model_specs: Sequence[Mapping[str, Any]],
    baselines: Sequence[Any] | None,
    clinical: Sequence[Mapping[str, Any]] | None,
    columns: pd.Index,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every candidate, named, with its role; the clinical candidates are added when X has ``clin__`` columns."""
    models = [_resolve_mechanism(dict(m), columns) if m["kind"] == "mechanism_score" else dict(m) for m in model_specs]
    has_clinical = any(is_clinical(c) for c in columns)
    if clinical is None:
        clinical = []
        if has_clinical:
            clinical = [{"kind": "clinical"}]
            mech = next((m for m in models if m["kind"] == "mechanism_score"), None)
            try:
                weights = mech["weights"] if mech else _resolve_mechanism({"kind": "mechanism_score"}, columns)["weights"]
            except DataSchemaError:
                weights = None
                logger.warning("clinical_plus_biomarkers: no mechanism-score feature in X; only clinical_only is run")
            if weights:
                clinical.append({"kind": "clinical", "weights": weights})
    elif clinical and not has_clinical:
        msg = "Clinical candidates need clin__ covariates in X; none found. Set features.clinical or drop them."
        raise DataSchemaError(msg)
    roles: dict[str, str] = {}
    named_models = _named(models)
    named_clin = _named([dict(c) for c in clinical])
    bases = _named(_baseline_specs(baselines, columns))
    specs: dict[str, dict[str, Any]] = {}
    for group, role in ((named_models, "model"), (named_clin, None), (bases, "baseline")):
        for name, spec in group.items():
            if name in specs:
                msg = f"Candidate name {name!r} is used twice (models, clinical, baselines). Give a model another name:."
                raise ConfigError(msg)
            specs[name] = spec
            # The clinical model with the mechanism score uses the biomarkers: it may become champion.
            roles[name] = role or ("model" if spec.get("weights") else "clinical")
    return specs, roles


def _tree_prefix(spec: Mapping[str, Any], estimator: Pipeline) -> int | None:
    """Trees of the permutation test's forest if it is ``estimator``'s forest with fewer trees, else None."""
    perm_spec, changed = _permutation_spec(spec)
    params, perm_params = dict(spec.get("params") or {}), dict(perm_spec.get("params") or {})
    m = perm_params.pop("n_estimators", None)
    params.pop("n_estimators", None)
    if not changed or spec["kind"] != "random_forest" or m is None:
        return None
    if {**spec, "params": params} != {**perm_spec, "params": perm_params}:
        return None
    return int(m) if int(m) < estimator[-1].n_estimators else None


def _split_tables(
    split_features: Callable[[np.ndarray], pd.DataFrame] | None, X: pd.DataFrame, folds: Folds
) -> dict[tuple[int, int], pd.DataFrame]:
    """X per outer split, when features are rebuilt from each split's training rows (one build per training set)."""
    if split_features is None:
        return {}
    cache: dict[bytes, pd.DataFrame] = {}
    out = {}
    for r, rep in enumerate(folds):
        for f, (tr, _) in enumerate(rep):
            key = np.sort(tr).tobytes()
            if key not in cache:
                table = split_features(tr)
                if not table.index.equals(X.index) or list(table.columns) != list(X.columns):
                    msg = "split_features must return a table with X's index and columns, in the same order."
                    raise DataSchemaError(msg)
                cache[key] = table.astype(float)
            out[(r, f)] = cache[key]
    return out


def _observed_selection_statistic(
    specs: Mapping[str, Mapping[str, Any]],
    screens: Mapping[str, Any],
    oof: Mapping[str, pd.DataFrame],
    oof_trees: Mapping[str, pd.DataFrame],
    X: pd.DataFrame,
    y: np.ndarray,
    g: np.ndarray | None,
    folds: Folds,
    split_X: Mapping[tuple[int, int], pd.DataFrame],
) -> float:
    """Return the permutation statistic on the true labels: best first-repeat AUROC, screening settings.

    Read off the main CV where the screening settings are the candidate's own (or its forest's first trees);
    recomputed on the first repeat's folds otherwise.
    """
    best = -np.inf
    for name, spec in specs.items():
        if not _permutation_spec(spec)[1]:
            value = _cv_auroc(oof[name][oof[name]["repeat"] == 0])
        elif name in oof_trees:
            value = _cv_auroc(oof_trees[name])
        else:
            parts = []
            for f, (tr, te) in enumerate(folds[0]):
                p, _ = _fit_predict(screens[name], split_X.get((0, f), X), y, tr, te)
                part = {K.PATIENT: X.index.to_numpy()[te], "repeat": 0, "y_true": y[te], "p": p}
                if g is not None:
                    part["group"] = g[te]
                parts.append(pd.DataFrame(part))
            value = _cv_auroc(pd.concat(parts, ignore_index=True))
        best = max(best, value)
    return float(best)


def _cohort_metrics(
    oof: Mapping[str, pd.DataFrame], cohorts: pd.Series, *, n_boot: int, seed: int | None, ci: float
) -> pd.DataFrame:
    """AUROC with CI of each candidate's held-out predictions, per held-out cohort (leave-one-cohort-out)."""
    rows = []
    for name, frame in oof.items():
        per = summarize_oof(frame)
        c = cohorts.loc[per.index].astype(str)
        for cohort in sorted(set(c)):
            part = per[c.to_numpy() == cohort]
            n1 = int(part["y_true"].sum())
            row = {"model": name, "cohort": cohort, "n": len(part), "n_positive": n1}
            if 0 < n1 < len(part):
                m = evaluate_predictions(part["y_true"], part["p"], n_boot=n_boot, seed=seed, ci=ci)
                row.update(auroc=m["auroc"], auroc_ci_low=m["auroc_ci_low"], auroc_ci_high=m["auroc_ci_high"])
            else:
                logger.warning("cohort %s has one class (%d of %d non-responders): no AUROC", cohort, n1, len(part))
                row.update(auroc=np.nan, auroc_ci_low=np.nan, auroc_ci_high=np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


def _split_plan(
    y: np.ndarray, g: np.ndarray | None, c: np.ndarray | None, cv: dict[str, Any], *, seed: int | None, nested: bool
) -> tuple[Folds, dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]]]:
    """Outer folds (stratified or leave-one-cohort-out) and each outer split's inner folds (nested CV)."""
    if cv["strategy"] == "leave_one_cohort_out":
        if c is None:
            msg = "cv.strategy leave_one_cohort_out needs a cohort per patient: set data.cohort_col."
            raise ConfigError(msg)
        folds = cohort_folds(c, y)
        cv["n_repeats"] = 1
    else:
        folds = patient_folds(y, n_splits=cv["n_splits"], n_repeats=cv["n_repeats"], seed=seed, groups=g)
    plan: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    if nested:
        split_seeds = iter(np.random.SeedSequence(seed).spawn(sum(len(rep) for rep in folds)))
        for r, rep in enumerate(folds):
            for f, (tr, _) in enumerate(rep):
                s = int(next(split_seeds).generate_state(1)[0])
                plan[(r, f)] = inner_folds(y, g, tr, n_splits=cv["inner_splits"], seed=s)
    return folds, plan


def check_cv(
    y: Any, cv_spec: Any, *, seed: int | None = 0, groups: Any = None, cohorts: Any = None, index: pd.Index | None = None
) -> None:
    """Raise the error :func:`evaluate_models` would raise on these labels' folds, without fitting anything.

    ``run`` calls it before the tracking store is touched, so a cohort too small for the CV leaves no database,
    experiment or run behind. (A cohort too small for the nested CV's inner folds runs without it, with a warning.)

    Parameters
    ----------
    y
        Labels (a Series indexed like X, or an array).
    cv_spec
        The ``cv`` settings.
    seed, groups, cohorts, index
        As for :func:`evaluate_models` (``index``: X's index, to align Series).
    """
    from biomarkers.models._cv import as_binary_labels

    idx = index if index is not None else (y.index if isinstance(y, pd.Series) else pd.RangeIndex(len(y)))
    y_arr = as_binary_labels(y.loc[idx] if isinstance(y, pd.Series) else y)
    _split_plan(y_arr, align_groups(groups, idx), align_groups(cohorts, idx), _cv_settings(cv_spec), seed=seed, nested=False)


def evaluate_models(
    X: pd.DataFrame,
    y: Any,
    *,
    model_specs: Sequence[Mapping[str, Any]],
    cv_spec: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    groups: Any = None,
    baselines: Sequence[Any] | None = None,
    clinical: Sequence[Mapping[str, Any]] | None = None,
    n_boot: int = 1000,
    n_permutations: int = 100,
    threshold: float = 0.5,
    threshold_rule_: Any = "youden",
    n_workers: int = 2,
    ci: float = 0.95,
    n_jobs: int | None = None,
    cohorts: Any = None,
    split_features: Callable[[np.ndarray], pd.DataFrame] | None = None,
    nested: bool | None = None,
) -> EvaluationResult:
    """Cross-validate every candidate on the same patient folds, choose among them, and evaluate the choice.

    Candidates are the models, the clinical models (when X has ``clin__`` covariates) and the baselines. The one
    with the best CV AUROC is selected (:attr:`EvaluationResult.best_model`); the whole choose-then-fit procedure
    is evaluated by nested CV (:mod:`biomarkers.models._select`), tested by a selection-aware permutation test
    (:func:`~biomarkers.models._permutation.selection_permutation_test`), and compared with the best baseline and
    the clinical model by paired bootstrap.

    Parameters
    ----------
    X
        Patients x features (index = patient id; with ``groups``, one row per sample). Columns ``clin__*`` are
        clinical covariates: biomarker models never read them.
    y
        Binary labels aligned to ``X`` (1 = non-responder).
    model_specs
        Specs for :func:`make_estimator` (kinds ``logreg``, ``random_forest``, ``lightgbm``, ``mechanism_score``;
        a mechanism score without ``weights`` gets :data:`~biomarkers.models._mechanism.DEFAULT_MECHANISM_WEIGHTS`).
    cv_spec
        ``n_splits`` (5), ``n_repeats`` (5), ``strategy`` (``stratified`` or ``leave_one_cohort_out``, which
        needs ``cohorts`` and runs one repeat), ``inner_splits`` (K of the nested inner CV, default ``n_splits``).
    seed
        Seed for folds, estimators, bootstrap and permutations.
    groups
        Optional patient id per row (bulk cohorts with several samples per patient).
    baselines
        Baseline specs or strings (``"majority"``, ``"single_feature:<column>"``). None: ``majority`` plus a
        single-feature baseline for each of ``DEFAULT_SINGLE_FEATURES`` present in ``X``.
    clinical
        Clinical candidate specs (kind ``clinical``). None: with ``clin__`` columns in X, ``clinical_only`` and
        ``clinical_plus_biomarkers`` (the covariates plus the mechanism score); ``[]``: none.
    n_boot
        Bootstrap resamples for the CIs.
    n_permutations
        Most permutations of the selection-aware test (0 skips it); stops early (Besag-Clifford).
    threshold
        Threshold for balanced accuracy in the metrics table.
    threshold_rule_
        ``evaluation.threshold``: ``"youden"`` or ``{"target_sensitivity": s}``. Chosen inside each outer
        training fold for the honest sensitivity / specificity, and on all patients' OOF predictions for ``predict``.
    n_workers
        Worker processes (the config's ``compute.n_workers``) for every fit and permutation; 1 runs in this process.
        Inside ``joblib.parallel_config(backend="dask")`` the fits run on the Dask cluster. Results are identical
        for any worker count and backend.
    ci
        Central coverage of the bootstrap CIs (the config's ``evaluation.ci``).
    n_jobs
        Deprecated alias of ``n_workers``.
    cohorts
        Cohort per row (``data.cohort_col``), for ``leave_one_cohort_out`` (labels are then permuted within cohorts).
    split_features
        ``f(train_positions) -> table like X``: features rebuilt with everything label-free fitted on the split's
        training rows only (the single-cell scoring reference under leave-one-cohort-out).
    nested
        Run the nested CV (the headline estimate). None (default): whenever every outer training fold holds an
        inner CV (at least 2 patients per class); otherwise the run goes on without it, with a warning and
        ``nested_skipped`` saying why (the selected model's own CV AUROC is then the only, optimistic, estimate).
        True: refuse such a cohort. False: skip (quick looks).

    Returns
    -------
    An :class:`EvaluationResult`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from biomarkers.models import evaluate_models
    >>> rng = np.random.default_rng(0)
    >>> y = pd.Series([0, 1] * 15, index=[f"P{i:02d}" for i in range(30)])
    >>> X = pd.DataFrame({"aqp9_macrophage_fraction": y + rng.normal(size=30), "b": rng.normal(size=30)}, index=y.index)
    >>> res = evaluate_models(X, y, model_specs=[{"kind": "logreg"}], cv_spec={"n_splits": 3, "n_repeats": 2},
    ...                       n_boot=100, n_permutations=9)
    >>> res.metrics.index.tolist(), res.best_model in res.specs
    (['logreg', 'single__aqp9_macrophage_fraction', 'majority'], True)
    """
    t0 = time.perf_counter()
    if n_jobs is not None:
        warnings.warn("evaluate_models(n_jobs=...) is deprecated; use n_workers=...", DeprecationWarning, stacklevel=2)
        n_workers = n_jobs
    if int(n_workers) < 1:
        msg = f"n_workers must be >= 1 (got {n_workers}). Fix compute.n_workers."
        raise ConfigError(msg)
    Xf, y_arr = check_xy(X, y)
    if not model_specs:
        msg = "No models to evaluate: model_specs is empty. Add at least one entry under models:."
        raise ConfigError(msg)
    for spec in model_specs:
        if _check_spec(spec) in BASELINE_KINDS + CLINICAL_KINDS:
            msg = f"{spec['kind']!r} is a baseline or clinical kind; pass it in baselines / clinical, not model_specs."
            raise ConfigError(msg)
    if not 0 < ci < 1:
        msg = f"ci must be a coverage between 0 and 1 (exclusive), got {ci!r}. Use e.g. 0.95 (evaluation.ci)."
        raise ConfigError(msg)
    rule = threshold_rule(threshold_rule_)
    cv = _cv_settings(cv_spec)
    g = align_groups(groups, Xf.index)
    c_arr = align_groups(cohorts, Xf.index)
    nested_skipped = None
    try:
        folds, plan = _split_plan(y_arr, g, c_arr, cv, seed=seed, nested=nested is not False)
    except DataSchemaError as e:
        if nested is not None or "inner CV" not in str(e):
            raise
        folds, plan = _split_plan(y_arr, g, c_arr, cv, seed=seed, nested=False)
        nested_skipped = str(e)
        logger.warning("nested CV not run (%s): the selected model's CV AUROC is optimistic by the choice", e)
    nested = bool(plan)
    specs, roles = _candidates(model_specs, baselines, clinical, Xf.columns)
    split_X = _split_tables(split_features, Xf, folds)

    # The permutation test and the inner CV use cheaper settings (SCREEN_PARAMS): for a forest, its first trees,
    # read off the main CV's forests for the observed statistic, so each outer fold is fitted once.
    cols = Xf.columns
    estimators = {n: make_estimator(sp, seed=seed, n_features=Xf.shape[1], columns=cols) for n, sp in specs.items()}
    screens = {n: make_estimator(_permutation_spec(sp)[0], seed=seed, n_features=Xf.shape[1], columns=cols) for n, sp in specs.items()}
    trees = {n: (m, 1) for n, sp in specs.items() if (m := _tree_prefix(sp, estimators[n]))}
    t = time.perf_counter()
    oof, oof_trees = _cross_validate_many(
        estimators, Xf, y_arr, folds=folds, groups=g, n_workers=n_workers, trees=trees, split_X=split_X
    )
    n_fits = len(specs) * sum(len(rep) for rep in folds)
    nest: NestedSelection | None = None
    if nested:
        keys = [(r, f, name) for (r, f) in plan for name in specs]
        tasks = [(screens[name], split_X.get((r, f), Xf), y_arr, plan[(r, f)]) for r, f, name in keys]
        inner = dict(zip(keys, run_tasks(_inner_predict, tasks, n_workers=n_workers), strict=True))
        n_fits += sum(len(v) for v in plan.values()) * len(specs)
        nest = nested_selection(
            oof=oof, inner=inner, inner_plan=plan, specs=specs, y=y_arr, groups=g, index=Xf.index, folds=folds,
            threshold=rule,
        )  # fmt: skip
    logger.info(
        "evaluate_models: %d fits (%d candidates x %d repeats x %d folds%s) on %s (%.1f s)",
        n_fits, len(specs), cv["n_repeats"], len(folds[0]), ", nested" if nested else "", describe_workers(n_workers),
        time.perf_counter() - t,
    )  # fmt: skip

    rows, repeat_rows, summaries = [], [], {}
    for name in specs:
        summaries[name] = summarize_oof(oof[name])
        order = summaries[name].index
        m = evaluate_predictions(
            summaries[name]["y_true"], summaries[name]["p"], n_boot=n_boot, seed=seed, threshold=threshold,
            ci=ci, p_repeats=repeat_matrix(oof[name], order),
        )  # fmt: skip
        per_rep = [
            # by patient: a patient's samples are averaged first, as everywhere else
            {"model": name, "repeat": r, **point_metrics(*summarize_oof(d)[["y_true", "p"]].T.to_numpy(), threshold=threshold)}
            for r, d in oof[name].groupby("repeat")
        ]
        repeat_rows.extend(per_rep)
        aurocs = np.array([r["auroc"] for r in per_rep])
        rows.append({"model": name, "kind": roles[name], **m, "auroc_repeat_mean": aurocs.mean(), "auroc_repeat_sd": aurocs.std()})

    metrics = pd.DataFrame(rows).set_index("model")
    metric_cols = [c for name in METRICS for c in (name, f"{name}_ci_low", f"{name}_ci_high")]
    metrics = metrics[["kind", *metric_cols, "auroc_repeat_mean", "auroc_repeat_sd", "n", "n_positive", "threshold"]]
    metrics["_r"] = metrics["kind"].map({"model": 0, "clinical": 1, "baseline": 2})
    metrics = metrics.sort_values(["_r", "auroc"], ascending=[True, False], kind="stable").drop(columns="_r")
    best = pick_best(metrics["auroc"].to_dict(), specs)

    predictions = pd.DataFrame({name: s["p"] for name, s in summaries.items()})
    predictions.insert(0, "y_true", summaries[best]["y_true"])
    threshold_best = choose_threshold(summaries[best]["y_true"], summaries[best]["p"], rule)
    patients = summaries[best].index

    nested_metrics: dict[str, float] = {}
    deltas: dict[str, dict[str, Any]] = {}
    curve = None
    if nest is not None:
        yp = nest.patients["y_true"]
        nested_metrics = evaluate_predictions(
            yp, nest.patients["p"], n_boot=n_boot, seed=seed, threshold=threshold, ci=ci, p_repeats=nest.p_repeats
        )
        order = nest.patients.index
        against = {}
        base_rows = metrics[metrics["kind"] == "baseline"]
        if len(base_rows):
            against["vs_best_baseline"] = str(base_rows["auroc"].idxmax())
        clin_only = [n for n in specs if roles[n] == "clinical"]
        if clin_only:
            against["vs_clinical"] = clin_only[0]
        for key, other in against.items():
            d = paired_delta_auroc(yp, nest.p_repeats, repeat_matrix(oof[other], order), n_boot=n_boot, seed=seed, ci=ci)
            deltas[key] = {**d, "against": other}
        plus = [n for n in specs if specs[n]["kind"] == "clinical" and specs[n].get("weights")]
        if clin_only and plus:
            d = paired_delta_auroc(
                yp, repeat_matrix(oof[plus[0]], order), repeat_matrix(oof[clin_only[0]], order), n_boot=n_boot,
                seed=seed, ci=ci,
            )  # fmt: skip
            deltas["incremental"] = {**d, "against": clin_only[0], "model": plus[0]}
        nb = net_benefit(yp, nest.patients["p"], DECISION_THRESHOLDS)
        prevalence = float(yp.mean())
        curve = pd.DataFrame(
            {
                "threshold": DECISION_THRESHOLDS,
                "net_benefit_model": nb,
                "net_benefit_treat_all": prevalence - (1 - prevalence) * DECISION_THRESHOLDS / (1 - DECISION_THRESHOLDS),
                "net_benefit_treat_none": 0.0,
            }
        )

    perm = None
    if n_permutations > 0:
        observed = _observed_selection_statistic(specs, screens, oof, oof_trees, Xf, y_arr, g, folds, split_X)
        loco = cv["strategy"] == "leave_one_cohort_out"
        perm = selection_permutation_test(
            screens, Xf, y_arr, observed=observed, n_splits=cv["n_splits"], n_permutations=n_permutations, seed=seed,
            groups=g, strata=c_arr if loco else None, folds=folds[0] if loco else None,
            split_X=[split_X[(0, f)] for f in range(len(folds[0]))] if (loco and split_X) else None, n_jobs=n_workers,
        )  # fmt: skip

    cohort_table = None
    if c_arr is not None and cv["strategy"] == "leave_one_cohort_out":
        series = pd.Series(c_arr, index=Xf.index)
        if g is not None:  # per patient: a patient's samples share a cohort
            series = pd.Series(c_arr, index=g).groupby(level=0).first()
        frames = {**oof, **({"nested": nest.oof} if nest is not None else {})}
        cohort_table = _cohort_metrics(frames, series, n_boot=n_boot, seed=seed, ci=ci)

    seconds = time.perf_counter() - t0
    b = metrics.loc[best]
    logger.info(
        "evaluate_models: %d candidates on %d patients x %d features, %s %d x %d-fold CV; selected %s (CV AUROC %.2f), "
        "nested CV AUROC %.2f, selection p=%s, threshold %.3f (%s) (%.1f s)",
        len(specs), len(patients), Xf.shape[1], cv["strategy"], cv["n_repeats"], len(folds[0]), best, b["auroc"],
        nested_metrics.get("auroc", float("nan")), "n/a" if perm is None else f"{perm.p_value:.3g} ({perm.n_permutations} perms)",
        threshold_best, rule["rule"], seconds,
    )  # fmt: skip
    return EvaluationResult(
        metrics=metrics,
        oof=oof,
        predictions=predictions,
        per_repeat=pd.DataFrame(repeat_rows),
        best_model=best,
        specs=specs,
        threshold=threshold_best,
        permutation=perm,
        folds=folds,
        cv={**cv, "seed": seed, "grouped": g is not None},
        seconds=seconds,
        ci=ci,
        nested=nest,
        nested_metrics=nested_metrics,
        deltas=deltas,
        decision_curve=curve,
        cohort_metrics=cohort_table,
        threshold_rule=rule,
        nested_skipped=nested_skipped,
    )


def fit_final(spec: Mapping[str, Any], X: pd.DataFrame, y: Any, *, seed: int | None = 0) -> Pipeline:
    """Refit a spec on all patients: the model to package and apply to new patients.

    Its expected performance is the CV estimate from :func:`evaluate_models`, not anything measured on ``X``.

    Parameters
    ----------
    spec
        A spec for :func:`make_estimator` (typically ``result.best_spec``).
    X
        Patients x features.
    y
        Binary labels aligned to ``X``.
    seed
        Estimator seed.

    Returns
    -------
    The fitted Pipeline (``predict_proba(X)[:, 1]`` = probability of non-response).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from biomarkers.models import fit_final
    >>> X = pd.DataFrame({"a": np.arange(10.0)})
    >>> fit_final({"kind": "logreg"}, X, pd.Series([0] * 5 + [1] * 5), seed=0).predict(X).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    """
    Xf, y_arr = check_xy(X, y)
    if len(np.unique(y_arr)) < 2:
        msg = f"fit_final needs both classes; all {len(y_arr)} labels are {int(y_arr[0])}. Check the labels."
        raise DataSchemaError(msg)
    # The same columns as in CV: a biomarker model's refit must not read the clinical covariates either.
    pipe = make_estimator(spec, seed=seed, n_features=Xf.shape[1], columns=Xf.columns)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny matrices: BLAS threads only add overhead
        pipe.fit(Xf, y_arr)
    logger.info("fit_final: %s fitted on %d patients x %d features", spec_name(spec), len(Xf), Xf.shape[1])
    return pipe
