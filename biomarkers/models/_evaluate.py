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

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers._keys import AQP9_FRACTION, FAMILY_PB, FEATURE_SEP
from biomarkers.models._cv import (
    Folds,
    _cross_validate_many,
    align_groups,
    check_xy,
    describe_workers,
    patient_folds,
    summarize_oof,
)
from biomarkers.models._estimators import BASELINE_KINDS, _check_spec, make_estimator, spec_name
from biomarkers.models._metrics import METRICS, evaluate_predictions, point_metrics, youden_threshold
from biomarkers.models._permutation import PermutationResult, _cv_auroc, _permutation_spec, permutation_test

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sklearn.pipeline import Pipeline

logger = logging.getLogger("biomarkers")

#: Single features compared against every model when present in X (the study's two candidate biomarkers).
DEFAULT_SINGLE_FEATURES: tuple[str, ...] = (AQP9_FRACTION, f"{FAMILY_PB}{FEATURE_SEP}MNP{FEATURE_SEP}OSM")
CV_DEFAULTS: dict[str, Any] = {"n_splits": 5, "n_repeats": 5, "permutation_repeats": 1}


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_models` computed.

    Attributes
    ----------
    metrics
        One row per model and baseline (index ``model``): ``kind`` (``model``/``baseline``), each metric as the
        mean over CV repeats with ``_ci_low``/``_ci_high`` (bootstrap over patients and repeats, coverage ``ci``),
        ``auroc_repeat_mean``/``auroc_repeat_sd``
        (AUROC of each repeat's pooled OOF predictions), ``n``, ``n_positive``. Models first, best AUROC first.
    oof
        Per model: long OOF table from :func:`cross_validate_model` (``patient_id, repeat, fold, y_true, p``).
    predictions
        Patients x models: the per-patient OOF probability averaged over repeats, plus ``y_true``.
    per_repeat
        Long table ``model, repeat, auroc, auprc, balanced_accuracy, brier`` (pooled within each repeat).
    best_model
        Name of the model (not baseline) with the highest CV AUROC.
    specs
        Name -> spec of every model and baseline.
    threshold
        Decision threshold of the best model: Youden's J on its OOF predictions.
    permutation
        Permutation test of the best model, or None if ``n_permutations=0``.
    folds
        The folds every model and baseline was evaluated on.
    cv
        Resolved CV settings (``n_splits``, ``n_repeats``, ``permutation_repeats``, ``seed``, ``grouped``).
    seconds
        Wall time.
    ci
        Central coverage of the bootstrap CIs in ``metrics`` (e.g. 0.95).
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

    @property
    def best_spec(self) -> dict[str, Any]:
        """Spec of the best model (pass to :func:`fit_final`)."""
        return self.specs[self.best_model]

    @property
    def permutation_p(self) -> float:
        """Permutation p-value of the best model (NaN if not run)."""
        return float("nan") if self.permutation is None else self.permutation.p_value


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
    return {key: int(cv_spec.get(key) or default) for key, default in CV_DEFAULTS.items()}


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


def evaluate_models(
    X: pd.DataFrame,
    y: Any,
    *,
    model_specs: Sequence[Mapping[str, Any]],
    cv_spec: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    groups: Any = None,
    baselines: Sequence[Any] | None = None,
    n_boot: int = 1000,
    n_permutations: int = 100,
    threshold: float = 0.5,
    n_workers: int = 2,
    ci: float = 0.95,
    n_jobs: int | None = None,
) -> EvaluationResult:
    """Cross-validate every model and baseline on the same patient folds and compare them.

    Parameters
    ----------
    X
        Patients x features (index = patient id; with ``groups``, one row per sample).
    y
        Binary labels aligned to ``X`` (1 = non-responder).
    model_specs
        Specs for :func:`make_estimator` (kinds ``logreg``, ``random_forest``, ``lightgbm``).
    cv_spec
        ``n_splits`` (5), ``n_repeats`` (5), ``permutation_repeats`` (CV repeats inside each permutation, 1);
        other keys (e.g. ``scheme``) are ignored: grouping follows ``groups``.
    seed
        Seed for folds, estimators, bootstrap and permutations.
    groups
        Optional patient id per row (bulk cohorts with several samples per patient).
    baselines
        Baseline specs or strings (``"majority"``, ``"single_feature:<column>"``). None: ``majority`` plus a
        single-feature baseline for each of ``DEFAULT_SINGLE_FEATURES`` present in ``X``.
    n_boot
        Bootstrap resamples for the CIs.
    n_permutations
        Permutations for the best model's test (0 skips it).
    threshold
        Threshold for balanced accuracy in the metrics table.
    n_workers
        Worker processes (the config's ``compute.n_workers``) for every CV fit (models x repeats x folds, in one
        pool) and for the permutations; 1 runs in this process. Inside ``joblib.parallel_config(backend="dask")``
        (with a ``distributed.Client``) the fits run on the Dask cluster instead. Every fit and permutation is
        seeded by its own task, with one BLAS thread, so metrics, OOF predictions, bootstrap CIs and the
        permutation null are identical for any worker count and backend.
    ci
        Central coverage of the bootstrap CIs (the config's ``evaluation.ci``): 0.9 gives the 5th/95th percentiles.
    n_jobs
        Deprecated alias of ``n_workers``.

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
    >>> res.metrics.index.tolist(), res.best_model
    (['logreg', 'single__aqp9_macrophage_fraction', 'majority'], 'logreg')
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
        if _check_spec(spec) in BASELINE_KINDS:
            msg = f"{spec['kind']!r} is a baseline kind; pass it in baselines, not model_specs."
            raise ConfigError(msg)
    if not 0 < ci < 1:
        msg = f"ci must be a coverage between 0 and 1 (exclusive), got {ci!r}. Use e.g. 0.95 (evaluation.ci)."
        raise ConfigError(msg)
    cv = _cv_settings(cv_spec)
    g = align_groups(groups, Xf.index)
    folds = patient_folds(y_arr, n_splits=cv["n_splits"], n_repeats=cv["n_repeats"], seed=seed, groups=g)
    models = _named(model_specs)
    bases = _named(_baseline_specs(baselines, Xf.columns))
    clash = sorted(set(models) & set(bases))
    if clash:
        msg = f"Model name(s) {clash} clash with baseline names. Give those models a different name: in the spec."
        raise ConfigError(msg)

    specs = {**models, **bases}
    k = min(cv["permutation_repeats"], cv["n_repeats"])
    # The permutation test may use a smaller forest (PERMUTATION_PARAMS): its observed run is then read off the
    # first trees of the main CV's forests, so each fold is fitted once for every statistic.
    estimators = {name: make_estimator(spec, seed=seed, n_features=Xf.shape[1]) for name, spec in specs.items()}
    trees = {name: (m, k) for name, spec in models.items() if (m := _tree_prefix(spec, estimators[name]))}
    t = time.perf_counter()
    oof, oof_trees = _cross_validate_many(
        estimators, Xf, y_arr, folds=folds, groups=g, n_workers=n_workers, trees=trees
    )
    logger.info(
        "evaluate_models: %d CV fits (%d models and baselines x %d repeats x %d folds) on %s (%.1f s)",
        len(specs) * sum(len(rep) for rep in folds),
        len(specs),
        cv["n_repeats"],
        cv["n_splits"],
        describe_workers(n_workers),
        time.perf_counter() - t,
    )
    rows, repeat_rows, summaries = [], [], {}
    for kind, named in (("model", models), ("baseline", bases)):
        for name in named:
            t = time.perf_counter()
            summaries[name] = summarize_oof(oof[name])
            order = summaries[name].index
            p_repeats = np.vstack([summarize_oof(d).loc[order, "p"].to_numpy() for _, d in oof[name].groupby("repeat")])
            m = evaluate_predictions(
                summaries[name]["y_true"], summaries[name]["p"], n_boot=n_boot, seed=seed, threshold=threshold,
                ci=ci, p_repeats=p_repeats,
            )  # fmt: skip
            per_rep = [
                # by patient: a patient's samples are averaged first, as everywhere else
                {"model": name, "repeat": r, **point_metrics(*summarize_oof(d)[["y_true", "p"]].T.to_numpy(), threshold=threshold)}
                for r, d in oof[name].groupby("repeat")
            ]
            repeat_rows.extend(per_rep)
            aurocs = np.array([r["auroc"] for r in per_rep])
            rows.append(
                {"model": name, "kind": kind, **m, "auroc_repeat_mean": aurocs.mean(), "auroc_repeat_sd": aurocs.std()}
            )
            logger.debug("evaluate_models: %s AUROC %.3f (%.1f s)", name, m["auroc"], time.perf_counter() - t)

    metrics = pd.DataFrame(rows).set_index("model")
    metric_cols = [c for name in METRICS for c in (name, f"{name}_ci_low", f"{name}_ci_high")]
    metrics = metrics[["kind", *metric_cols, "auroc_repeat_mean", "auroc_repeat_sd", "n", "n_positive", "threshold"]]
    metrics["_m"] = metrics["kind"] == "model"
    metrics = metrics.sort_values(["_m", "auroc"], ascending=False, kind="stable").drop(columns="_m")
    best = str(metrics.index[0])

    predictions = pd.DataFrame({name: s["p"] for name, s in summaries.items()})
    predictions.insert(0, "y_true", summaries[best]["y_true"])
    threshold_best = youden_threshold(summaries[best]["y_true"], summaries[best]["p"])

    perm = None
    if n_permutations > 0:
        perm_spec, changed = _permutation_spec(models[best])
        # The first k repeats of the main CV are exactly the permutation scheme's observed run (same seeds), unless
        # the permutation uses cheaper settings: then the first trees of the same forests, or (other changes)
        # permutation_test recomputes it with those settings.
        if not changed:
            observed = _cv_auroc(oof[best][oof[best]["repeat"] < k])
        else:
            observed = _cv_auroc(oof_trees[best]) if best in oof_trees else None
        perm = permutation_test(
            perm_spec,
            Xf,
            y_arr,
            n_splits=cv["n_splits"],
            n_repeats=k,
            n_permutations=n_permutations,
            seed=seed,
            groups=g,
            n_jobs=n_workers,
            observed=observed,
        )
    seconds = time.perf_counter() - t0
    b = metrics.loc[best]
    logger.info(
        "evaluate_models: %d model(s) + %d baseline(s) on %d patients x %d features, %d x %d-fold CV; best %s "
        "AUROC %.2f [%.2f, %.2f] (%g%% CI), permutation p=%s, Youden threshold %.3f (%.1f s)",
        len(models),
        len(bases),
        len(Xf),
        Xf.shape[1],
        cv["n_repeats"],
        cv["n_splits"],
        best,
        b["auroc"],
        b["auroc_ci_low"],
        b["auroc_ci_high"],
        ci * 100,
        "n/a" if perm is None else f"{perm.p_value:.3g} ({perm.n_permutations} perms)",
        threshold_best,
        seconds,
    )
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
    pipe = make_estimator(spec, seed=seed, n_features=Xf.shape[1])
    with threadpool_limits(limits=1, user_api="blas"):  # tiny matrices: BLAS threads only add overhead
        pipe.fit(Xf, y_arr)
    logger.info("fit_final: %s fitted on %d patients x %d features", spec_name(spec), len(Xf), Xf.shape[1])
    return pipe
