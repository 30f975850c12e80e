"""Label-permutation tests: of one model's CV AUROC, and of the whole selection among candidates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from biomarkers.models._cv import (
    _fit_predict,
    _group_labels,
    align_groups,
    check_xy,
    cross_validate_model,
    patient_folds,
    run_tasks,
    summarize_oof,
)
from biomarkers.stats import auroc as _auroc

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.base import BaseEstimator

#: Cheaper settings for the permutation test in :func:`evaluate_models` (observed and null both use them, so the
#: test stays exact for the procedure tested). A 300-tree forest costs ~0.2 s per fit on 40 patients, mostly
#: per-tree overhead (~1 ms a tree), and the selection test fits every candidate in 100 permutations x 5 folds and
#: the nested CV in 25 outer x 5 inner folds; 25 trees (and 50 boosting rounds) rank 8 held-out patients nearly
#: the same at a twelfth (a quarter) of the cost. Being noisier, the screen slightly undersells the forest in the
#: inner selection; the final selection uses the full settings.
PERMUTATION_PARAMS: dict[str, dict[str, Any]] = {"random_forest": {"n_estimators": 25}, "lightgbm": {"n_estimators": 50}}
#: The same cheaper settings screen candidates in the nested CV's inner loops (see :mod:`biomarkers.models._select`).
SCREEN_PARAMS = PERMUTATION_PARAMS
#: Besag & Clifford (1991, Biometrika 78:301) sequential stopping: once this many permutations reach the observed
#: statistic, more cannot make the p-value small, and the test stops with p = h / (permutations run).
STOP_AFTER = 10


@dataclass
class PermutationResult:
    """Outcome of :func:`permutation_test`.

    Attributes
    ----------
    p_value
        ``(1 + #(null >= observed)) / (1 + n_permutations)``.
    observed
        CV AUROC with the true labels (same CV scheme as the null).
    null
        CV AUROC of each label permutation.
    n_repeats
        CV repeats per run.
    spec
        The spec tested (None if an estimator object was passed).
    """

    p_value: float
    observed: float
    null: np.ndarray
    n_repeats: int
    spec: dict[str, Any] | None = None
    statistic: str = "cv_auroc"
    stopped_early: bool = False
    n_planned: int | None = None

    @property
    def n_permutations(self) -> int:
        """Number of permutations run."""
        return int(self.null.size)


def _cv_auroc(oof: pd.DataFrame) -> float:
    s = summarize_oof(oof)
    return float(_auroc(s["y_true"].to_numpy(), s["p"].to_numpy()))


def _permuted_labels(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if groups is None:
        return rng.permutation(y)
    # Permute whole groups' labels, so a patient's samples keep sharing one (permuted) label.
    _, inverse, group_y = _group_labels(y, groups)
    return rng.permutation(group_y)[inverse]


def _one_permutation(
    spec: Any, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None, n_splits: int, n_repeats: int, seed: int
) -> float:
    rng = np.random.default_rng(seed)
    y_perm = _permuted_labels(y, groups, rng)
    folds = patient_folds(y_perm, n_splits=n_splits, n_repeats=n_repeats, seed=seed, groups=groups)
    return _cv_auroc(cross_validate_model(spec, X, y_perm, folds=folds, seed=seed, groups=groups))


def permutation_test(
    estimator_or_spec: BaseEstimator | Mapping[str, Any],
    X: pd.DataFrame,
    y: Any,
    *,
    n_splits: int = 5,
    n_repeats: int = 1,
    n_permutations: int = 100,
    seed: int | None = 0,
    groups: Any = None,
    n_jobs: int = 1,
    observed: float | None = None,
) -> PermutationResult:
    """Label-permutation test of a model's CV AUROC (Ojala & Garriga 2010, JMLR 11:1833).

    Each permutation shuffles the labels (whole groups' labels when ``groups`` is given), draws new stratified
    folds and re-runs the whole CV, so feature selection and tuning are repeated too. The statistic is the AUROC of
    the repeat-averaged OOF predictions. ``p = (1 + #(null >= observed)) / (1 + n_permutations)``, so the smallest
    possible p is ``1 / (1 + n_permutations)``.

    Parameters
    ----------
    estimator_or_spec
        A spec for :func:`make_estimator`, or an unfitted estimator.
    X
        Patients x features.
    y
        Binary labels aligned to ``X``.
    n_splits
        Folds per CV run.
    n_repeats
        CV repeats per run (observed and null use the same scheme). 1 keeps the test affordable.
    n_permutations
        Number of permutations.
    seed
        Seed; permutation ``i`` uses a seed spawned from it (for its labels, folds and estimator), so results do not
        depend on ``n_jobs`` or the backend.
    groups
        Optional group (patient) id per row.
    n_jobs
        Worker processes for the permutations (see :func:`~biomarkers.models._cv.run_tasks`; an enclosing
        ``joblib.parallel_config`` may choose another backend, e.g. Dask). Every estimator uses one thread.
    observed
        The observed statistic if already computed with the same scheme and seed (skips one CV run).

    Returns
    -------
    A :class:`PermutationResult`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from biomarkers.models import permutation_test
    >>> rng = np.random.default_rng(0)
    >>> y = pd.Series([0, 1] * 15)
    >>> X = pd.DataFrame({"a": y + rng.normal(scale=0.5, size=30), "b": rng.normal(size=30)})
    >>> res = permutation_test({"kind": "logreg"}, X, y, n_splits=3, n_permutations=19, seed=0)
    >>> res.p_value
    0.05
    """
    Xf, y_arr = check_xy(X, y)
    g = align_groups(groups, Xf.index)
    if observed is None:
        folds = patient_folds(y_arr, n_splits=n_splits, n_repeats=n_repeats, seed=seed, groups=g)
        observed = _cv_auroc(cross_validate_model(estimator_or_spec, Xf, y_arr, folds=folds, seed=seed, groups=g))
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n_permutations)]
    args = (estimator_or_spec, Xf, y_arr, g, n_splits, n_repeats)
    from biomarkers.compute._progress import Progress

    progress = Progress(total=n_permutations, show=None, unit="perm", desc="permutations")
    try:
        null = run_tasks(_one_permutation, [(*args, s) for s in seeds], n_workers=n_jobs, on_result=progress.advance)
    finally:
        progress.close()
    null_arr = np.asarray(null, dtype=float)
    p = (1 + int((null_arr >= observed - 1e-12).sum())) / (1 + n_permutations)
    spec = dict(estimator_or_spec) if isinstance(estimator_or_spec, Mapping) else None
    return PermutationResult(p_value=float(p), observed=float(observed), null=null_arr, n_repeats=n_repeats, spec=spec)


def _permutation_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``spec`` with the cheaper :data:`PERMUTATION_PARAMS` (never more trees than it asks for); changed or not."""
    params = dict(spec.get("params") or {})
    fast = {
        key: value
        for key, value in PERMUTATION_PARAMS.get(str(spec["kind"]), {}).items()
        if key not in params or params[key] > value
    }
    if not fast:
        return dict(spec), False
    return {**spec, "params": {**params, **fast}}, True


def _permute_within(y: np.ndarray, groups: np.ndarray | None, strata: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if strata is None:
        return _permuted_labels(y, groups, rng)
    out = y.copy()
    for s in np.unique(strata):  # within each cohort: its prevalence, and the LOCO folds' class balance, stay
        rows = np.flatnonzero(strata == s)
        out[rows] = _permuted_labels(y[rows], None if groups is None else groups[rows], rng)
    return out


def _max_cv_auroc(
    estimators: dict[str, Any],
    Xs: list[pd.DataFrame],
    y: np.ndarray,
    groups: np.ndarray | None,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> float:
    """Max over candidates of the pooled 1-repeat CV AUROC (patient level)."""
    import pandas as pd

    best = -np.inf
    ids = Xs[0].index.to_numpy()
    for est in estimators.values():
        parts = []
        for (tr, te), X in zip(folds, Xs, strict=True):
            p, _ = _fit_predict(est, X, y, tr, te)
            part = {"patient_id": ids[te], "repeat": 0, "y_true": y[te], "p": p}
            if groups is not None:
                part["group"] = groups[te]
            parts.append(pd.DataFrame(part))
        best = max(best, _cv_auroc(pd.concat(parts, ignore_index=True)))
    return float(best)


def _one_selection_permutation(
    estimators: dict[str, Any],
    Xs: Any,
    y: np.ndarray,
    groups: np.ndarray | None,
    strata: np.ndarray | None,
    n_splits: int,
    fixed: list[tuple[np.ndarray, np.ndarray]] | None,
    seed: int,
) -> float:
    rng = np.random.default_rng(seed)
    y_perm = _permute_within(y, groups, strata, rng)
    if fixed is None:
        folds = patient_folds(y_perm, n_splits=n_splits, n_repeats=1, seed=seed, groups=groups)[0]
        Xs = [Xs[0]] * len(folds)
    else:
        folds = fixed
    return _max_cv_auroc(estimators, Xs, y_perm, groups, folds)


def selection_permutation_test(
    estimators: Mapping[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    observed: float,
    n_splits: int = 5,
    n_permutations: int = 100,
    seed: int | None = 0,
    groups: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
    split_X: list[pd.DataFrame] | None = None,
    n_jobs: int = 1,
    stop_after: int | None = STOP_AFTER,
) -> PermutationResult:
    """Permutation test of the selection: each permutation reruns every candidate and keeps the best one's AUROC.

    The statistic is the maximum over candidates of a 1 x K-fold CV AUROC (patient level) with the cheaper
    :data:`SCREEN_PARAMS` settings: cheaper than the headline 5 x 5-fold nested AUROC, and computed identically on
    the true labels (``observed``) and on each permutation, so the test is exact for the choose-the-best procedure:
    under the null, the best of several candidates is no more likely to beat its permutations than one candidate.
    Labels are permuted by patient (whole groups), within each stratum (cohort) when ``strata`` is given; with
    fixed ``folds`` (leave-one-cohort-out) the folds stay and only the labels move, else each permutation draws its
    own stratified folds. Sequential stopping (Besag-Clifford): after ``stop_after`` permutations reach the observed
    statistic the test stops, ``p = stop_after / permutations run``; otherwise ``p = (1 + #(null >= observed)) /
    (1 + n_permutations)``.

    Parameters
    ----------
    estimators
        Candidate name -> unfitted estimator (screening settings).
    X
        Patients x features.
    y
        0/1 labels in X's row order.
    observed
        The statistic on the true labels (same folds scheme, same settings).
    n_splits
        K of the per-permutation folds.
    n_permutations
        Most permutations.
    seed
        Seed; permutation ``i`` uses a seed spawned from it, so results do not depend on ``n_jobs``.
    groups, strata
        Patient and cohort per row (or None).
    folds, split_X
        Fixed folds (one repeat) and one X per fold (leave-one-cohort-out with a per-split scoring reference).
    n_jobs
        Worker processes (see :func:`~biomarkers.models._cv.run_tasks`).
    stop_after
        Besag-Clifford ``h``; None runs every permutation.

    Returns
    -------
    A :class:`PermutationResult` with ``statistic="max_candidate_cv_auroc"``.
    """
    from biomarkers.compute._progress import Progress

    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n_permutations)]
    Xs = split_X if split_X is not None else [X]
    args = (dict(estimators), Xs, y, groups, strata, n_splits, folds)
    batch = max(10, 4 * n_jobs)
    null: list[float] = []
    stopped = False
    progress = Progress(total=n_permutations, show=None, unit="perm", desc="selection permutations")
    try:
        for start in range(0, n_permutations, batch):
            chunk = [(*args, s) for s in seeds[start : start + batch]]
            null.extend(run_tasks(_one_selection_permutation, chunk, n_workers=n_jobs, on_result=progress.advance))
            hits = int((np.asarray(null) >= observed - 1e-12).sum())
            if stop_after is not None and hits >= stop_after and len(null) < n_permutations:
                stopped = True
                break
    finally:
        progress.close()
    null_arr = np.asarray(null, dtype=float)
    hits = int((null_arr >= observed - 1e-12).sum())
    p = hits / null_arr.size if stopped else (1 + hits) / (1 + null_arr.size)
    return PermutationResult(
        p_value=float(p), observed=float(observed), null=null_arr, n_repeats=1, spec=None,
        statistic="max_candidate_cv_auroc", stopped_early=stopped, n_planned=n_permutations,
    )  # fmt: skip
