"""Patient-level cross-validation: folds that never split a patient, and out-of-fold predictions."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import ThreadpoolController

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers._keys import NON_RESPONDER, PATIENT, RESPONDER
from biomarkers.models._estimators import make_estimator
from biomarkers.stats import DDOF

logger = logging.getLogger("biomarkers")

Folds = list[list[tuple[np.ndarray, np.ndarray]]]
OOF_COLUMNS: tuple[str, ...] = (PATIENT, "repeat", "fold", "y_true", "p")


def as_binary_labels(y: Any) -> np.ndarray:
    """Labels as a 0/1 int array (1 = non-responder); accepts 0/1, bool, or ``responder``/``non_responder``.

    Parameters
    ----------
    y
        Label vector.

    Returns
    -------
    int array of 0/1.
    """
    arr = pd.Series(y).to_numpy()
    if pd.isna(arr).any():
        msg = f"Labels contain {int(pd.isna(arr).sum())} missing value(s). Drop unlabelled patients before modelling."
        raise DataSchemaError(msg)
    if arr.dtype == object or pd.api.types.is_string_dtype(arr):
        mapping = {NON_RESPONDER: 1, RESPONDER: 0}
        bad = sorted({str(v) for v in arr} - set(mapping))
        if bad:
            msg = f"Labels must be 0/1 or {RESPONDER!r}/{NON_RESPONDER!r} (found: {bad[:5]}). Recode the label."
            raise DataSchemaError(msg)
        return np.array([mapping[v] for v in arr], dtype=int)
    values = set(np.unique(arr).tolist())
    if not values <= {0, 1}:  # True/False compare equal to 1/0
        msg = f"Labels must be binary 0/1 with 1 = non_responder (found values: {sorted(values)[:5]}). Recode y."
        raise DataSchemaError(msg)
    return arr.astype(int)


def _check_counts(y: np.ndarray, n_splits: int, what: str) -> None:
    counts = {c: int((y == c).sum()) for c in (0, 1)}
    found = f"{counts[0]} responder / {counts[1]} non-responder {what}"
    if min(counts.values()) == 0:
        msg = f"Cross-validation needs both classes; found {found}. Check the label column and positive_label."
        raise DataSchemaError(msg)
    if min(counts.values()) < n_splits:
        msg = (
            f"Too few {what} per class for {n_splits}-fold CV: found {found} (need >= {n_splits} in each class). "
            f"Lower cv.n_splits to <= {min(counts.values())} or add {what}."
        )
        raise DataSchemaError(msg)


def _group_labels(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return unique groups, the index of each row's group, and each group's label (one label per group)."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=uniq.size)
    n = np.bincount(inverse, minlength=uniq.size)
    mixed = (pos > 0) & (pos < n)
    if mixed.any():
        msg = (
            f"Group(s) {uniq[mixed][:5].tolist()} have samples with different labels; a patient has one response. "
            "Check the groups (patient ids) and labels."
        )
        raise DataSchemaError(msg)
    return uniq, inverse, (pos > 0).astype(int)


def patient_folds(y: Any, *, n_splits: int = 5, n_repeats: int = 5, seed: int | None = 0, groups: Any = None) -> Folds:
    """Repeated stratified K-fold splits over patients; with ``groups``, no group is ever split across folds.

    Parameters
    ----------
    y
        Binary labels (1 = non-responder), one per row.
    n_splits
        Folds per repeat.
    n_repeats
        Number of repeats, each with a different shuffle.
    seed
        Seed; repeat ``r`` is the same whatever ``n_repeats`` is, so the first repeats of a longer run match
        a shorter one.
    groups
        Optional group (patient) id per row, e.g. for bulk cohorts with two samples per patient. Then
        ``StratifiedGroupKFold`` (shuffled, a different seed per repeat) is used.

    Returns
    -------
    ``folds[repeat]`` is a list of ``(train_idx, test_idx)`` positional index arrays.

    Raises
    ------
    DataSchemaError
        If there is only one class, or a class has fewer members (groups) than ``n_splits``.

    Examples
    --------
    >>> from biomarkers.models import patient_folds
    >>> folds = patient_folds([0, 1] * 10, n_splits=5, n_repeats=2, seed=0)
    >>> len(folds), len(folds[0]), sorted(len(te) for _, te in folds[0])
    (2, 5, [4, 4, 4, 4, 4])
    """
    if int(n_splits) < 2 or int(n_repeats) < 1:
        msg = f"cv.n_splits must be >= 2 and cv.n_repeats >= 1 (got {n_splits}, {n_repeats}). Fix the cv section."
        raise ConfigError(msg)
    y_arr = as_binary_labels(y)
    n = y_arr.size
    seq = np.random.SeedSequence(seed)
    repeat_seeds = [int(s.generate_state(1)[0]) for s in seq.spawn(n_repeats)]
    folds: Folds = []
    if groups is None:
        _check_counts(y_arr, n_splits, "patients")
        for rs in repeat_seeds:
            cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=rs)
            folds.append([(tr, te) for tr, te in cv.split(np.zeros(n), y_arr)])
        return folds
    g = pd.Series(groups).to_numpy()
    if g.size != n or pd.isna(g).any():
        msg = f"groups must give one non-missing id per row (got {g.size} ids, {int(pd.isna(g).sum())} missing, {n} rows)."
        raise DataSchemaError(msg)
    _, _, group_y = _group_labels(y_arr, g)
    _check_counts(group_y, n_splits, "groups")
    for rs in repeat_seeds:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=rs)
        folds.append([(tr, te) for tr, te in cv.split(np.zeros(n), y_arr, g)])
    return folds


def check_xy(X: pd.DataFrame, y: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Validate a patients x features table and align labels to it.

    Parameters
    ----------
    X
        Numeric DataFrame, index = patient (or sample) id; NaN allowed (imputed inside the pipeline).
    y
        Labels: a Series aligned by index (reordered to ``X.index``), or an array in row order.

    Returns
    -------
    ``X`` (float) and the labels as a 0/1 array in ``X`` row order.
    """
    if not isinstance(X, pd.DataFrame):
        msg = f"X must be a pandas DataFrame (patients x features), got {type(X).__name__}. Wrap it in pd.DataFrame."
        raise DataSchemaError(msg)
    if X.index.has_duplicates:
        dup = X.index[X.index.duplicated()].unique().tolist()[:5]
        msg = f"X has duplicated row ids {dup}; one row per patient (or sample, with groups). Deduplicate the table."
        raise DataSchemaError(msg)
    non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if non_numeric:
        msg = f"X has non-numeric column(s) {non_numeric[:5]}. Encode or drop them before modelling."
        raise DataSchemaError(msg)
    Xf = X.astype(float)
    if np.isinf(Xf.to_numpy()).any():
        bad = Xf.columns[np.isinf(Xf.to_numpy()).any(axis=0)].tolist()[:5]
        msg = f"X has infinite values in column(s) {bad}. Fix the feature computation (e.g. a log of 0)."
        raise DataSchemaError(msg)
    if isinstance(y, pd.Series):
        missing = X.index.difference(y.index)
        if len(missing):
            msg = f"{len(missing)} row(s) of X have no label (e.g. {missing[:3].tolist()}). Align y to X.index."
            raise DataSchemaError(msg)
        y = y.loc[X.index]
    elif len(y) != len(X):
        msg = f"y has {len(y)} labels but X has {len(X)} rows. Pass y as a Series indexed like X."
        raise DataSchemaError(msg)
    return Xf, as_binary_labels(y)


def align_groups(groups: Any, index: pd.Index) -> np.ndarray | None:
    """Return group ids as an array in the row order of ``index``.

    A Series is aligned by its index; anything else is taken in row order.

    Parameters
    ----------
    groups
        None, a Series indexed like ``X``, or an array-like with one id per row.
    index
        ``X.index``.

    Returns
    -------
    Array of group ids, or None.
    """
    if groups is None:
        return None
    if isinstance(groups, pd.Series):
        missing = index.difference(groups.index)
        if len(missing):
            msg = f"{len(missing)} row(s) of X have no group id (e.g. {missing[:3].tolist()}). Align groups to X.index."
            raise DataSchemaError(msg)
        return groups.loc[index].to_numpy()
    g = np.asarray(groups)
    if g.size != len(index):
        msg = f"groups has {g.size} ids but X has {len(index)} rows. Pass groups as a Series indexed like X."
        raise DataSchemaError(msg)
    return g


def _as_estimator(estimator_or_spec: BaseEstimator | Mapping[str, Any], *, seed: int | None, n_features: int):
    if isinstance(estimator_or_spec, Mapping):
        return make_estimator(estimator_or_spec, seed=seed, n_features=n_features)
    return estimator_or_spec


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # Built once per process (a scan of the loaded libraries costs ~5 ms, as much as a logistic-regression fit);
    # by the first fit, numpy's and scipy's BLAS are loaded (this module imports sklearn's estimators).
    return ThreadpoolController()


def _fit_predict(
    est: BaseEstimator, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray, trees: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit a clone on ``train`` and return P(non-responder) of ``test``, and of the forest's first ``trees`` trees.

    One BLAS thread in every process, so a fit gives the same bits in process, in a joblib worker or on Dask (on tens
    of rows BLAS threads only spin: on a busy 2-core machine a 2-thread BLAS made each logistic-regression fit ~15x
    slower, 87 ms vs 5.6 ms). And joblib's sequential backend: joblib runs Dask tasks inside
    ``parallel_config(backend="dask")``, so a forest's own ``Parallel(n_jobs=1)`` would send each of its trees to
    the cluster as a task (the default experiment took 165 s on Dask instead of 33 s).
    """
    from joblib import parallel_config

    with _blas_controller().limit(limits=1, user_api="blas"), parallel_config(backend="sequential"):
        model = clone(est).fit(X.iloc[train], y[train])
        col = list(model.classes_).index(1)  # cross_validate_model checked both classes are in `train`
        p = model.predict_proba(X.iloc[test])[:, col]
        if trees is None:
            return p, None
        # A seeded forest's first `trees` trees are the trees a `trees`-tree forest with that seed grows (sklearn draws
        # one seed per tree in order, which warm_start relies on), and predict_proba averages trees in order: this is
        # the smaller forest's prediction, bit for bit, without fitting it.
        forest = copy.copy(model[-1])
        forest.estimators_ = forest.estimators_[:trees]
        forest.n_estimators = trees
        return p, forest.predict_proba(model[:-1].transform(X.iloc[test]))[:, col]


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    n_workers: int = 1,
    on_result: Callable[[], None] | None = None,
) -> list[Any]:
    """``[fn(*task) for task in tasks]``, in process (``n_workers=1``) or on joblib workers; results in task order.

    Workers are joblib's default loky processes (model fits hold the GIL on tens of rows, so threads do not
    scale), or whatever backend an enclosing ``joblib.parallel_config`` sets, e.g. ``backend="dask"`` with a
    ``distributed.Client``. One task per batch: a task's cost differs by model (~5 ms for a logistic regression,
    ~300 ms for a 300-tree forest), and joblib's automatic batching, tuned on cheap tasks, would put many costly
    ones in one batch. Every task is seeded by its arguments, so results do not depend on the worker count.

    Parameters
    ----------
    fn
        A module-level function (picklable).
    tasks
        Argument tuples.
    n_workers
        1 runs in this process.
    on_result
        Called after each result (e.g. to advance a progress bar).

    Returns
    -------
    The results, in task order.
    """
    if n_workers == 1:
        results = []
        for task in tasks:
            results.append(fn(*task))
            if on_result is not None:
                on_result()
        return results
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=n_workers, prefer="processes", batch_size=1, return_as="generator")
    results = []
    for result in parallel(delayed(fn)(*task) for task in tasks):
        results.append(result)
        if on_result is not None:
            on_result()
    return results


def describe_workers(n_workers: int) -> str:
    """How :func:`run_tasks` runs ``n_workers`` here: ``"1 worker (in process)"``, ``"2 workers (loky)"``, ...

    Parameters
    ----------
    n_workers
        As passed to :func:`run_tasks`.

    Returns
    -------
    A phrase for a log line.
    """
    if n_workers == 1:
        return "1 worker (in process)"
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend(prefer="processes")
    n = backend.effective_n_jobs(n_workers)  # Dask: the cluster's threads, whatever n_workers is
    return f"{n} workers ({type(backend).__name__.removesuffix('Backend').lower()})"


def _check_folds(folds: Folds, n_rows: int, y: np.ndarray, unit: str) -> None:
    for r, rep in enumerate(folds):
        for f, (tr, te) in enumerate(rep):
            if max(tr.max(initial=-1), te.max(initial=-1)) >= n_rows:
                msg = f"folds index rows beyond X ({n_rows} rows). Build folds with patient_folds(y) for this X."
                raise DataSchemaError(msg)
            n_pos = int(y[tr].sum())
            if n_pos == 0 or n_pos == len(tr):
                msg = (
                    f"Training fold {f} of repeat {r} has {len(tr) - n_pos} responder / {n_pos} non-responder {unit}: "
                    "a model cannot learn from one class. Lower cv.n_splits (or build folds with patient_folds(y))."
                )
                raise DataSchemaError(msg)


def _oof_frame(
    X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None, folds: Folds, preds: Sequence[np.ndarray]
) -> pd.DataFrame:
    """Long OOF table from one prediction array per fold (repeat-major order), sorted by repeat then row of X."""
    parts = []
    jobs = [(r, f, te) for r, rep in enumerate(folds) for f, (_, te) in enumerate(rep)]
    for (r, f, te), p in zip(jobs, preds, strict=True):
        part = {PATIENT: X.index.to_numpy()[te], "repeat": r, "fold": f, "y_true": y[te], "p": p}
        if groups is not None:
            part["group"] = groups[te]
        parts.append(pd.DataFrame(part))
    oof = pd.concat(parts, ignore_index=True)
    order = pd.Series(np.arange(len(X)), index=X.index)
    oof["_row"] = order.loc[oof[PATIENT]].to_numpy()
    return oof.sort_values(["repeat", "_row"], kind="stable").drop(columns="_row").reset_index(drop=True)


def _cross_validate_many(
    estimators: Mapping[str, BaseEstimator],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    folds: Folds,
    groups: np.ndarray | None,
    n_workers: int = 1,
    trees: Mapping[str, tuple[int, int]] | None = None,
    split_X: Mapping[tuple[int, int], pd.DataFrame] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """OOF tables of several estimators on the same folds, all their fits in one :func:`run_tasks` call.

    ``trees[name] = (n, k)`` also returns, for the first ``k`` repeats, the OOF table of the forest's first ``n``
    trees (see :func:`_fit_predict`). ``split_X[(repeat, fold)]`` replaces X for that split (features whose
    label-free reference was fitted on the split's training rows only). ``X``, ``y`` and ``groups`` are checked
    and aligned already.
    """
    _check_folds(folds, len(X), y, "patients" if groups is None else "samples")
    trees = dict(trees or {})
    split_X = split_X or {}
    splits = [(r, tr, te, split_X.get((r, f), X)) for r, rep in enumerate(folds) for f, (tr, te) in enumerate(rep)]
    tasks = [
        (est, Xs, y, tr, te, trees[name][0] if name in trees and r < trees[name][1] else None)
        for name, est in estimators.items()
        for r, tr, te, Xs in splits
    ]
    results = iter(run_tasks(_fit_predict, tasks, n_workers=n_workers))
    oof, oof_trees = {}, {}
    for name in estimators:
        preds = [next(results) for _ in splits]
        oof[name] = _oof_frame(X, y, groups, folds, [p for p, _ in preds])
        if name in trees:
            k = trees[name][1]
            first = sum(len(rep) for rep in folds[:k])  # preds are repeat-major
            oof_trees[name] = _oof_frame(X, y, groups, folds[:k], [q for _, q in preds[:first]])
    return oof, oof_trees


def cross_validate_model(
    estimator_or_spec: BaseEstimator | Mapping[str, Any],
    X: pd.DataFrame,
    y: Any,
    *,
    folds: Folds,
    seed: int | None = 0,
    groups: Any = None,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Out-of-fold predicted probabilities of non-response, one row per patient per repeat.

    A fresh clone of the estimator is fitted on each training fold (imputation, scaling and selection included),
    and predicts its held-out patients only.

    Parameters
    ----------
    estimator_or_spec
        An unfitted sklearn classifier/pipeline, or a spec for :func:`make_estimator`.
    X
        Patients x features (index = patient id).
    y
        Binary labels aligned to ``X`` (1 = non-responder).
    folds
        From :func:`patient_folds`; use the same folds for every model and baseline.
    seed
        Estimator seed, when a spec is given.
    groups
        Optional group id per row; added as a ``group`` column.
    n_jobs
        Worker processes for the fits (see :func:`run_tasks`; an enclosing ``joblib.parallel_config`` may choose
        another backend, e.g. Dask). The result does not depend on it.

    Returns
    -------
    DataFrame with columns ``patient_id`` (``X.index``), ``repeat``, ``fold``, ``y_true``, ``p`` (and ``group``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from biomarkers.models import cross_validate_model, patient_folds
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(20, 3)), columns=["a", "b", "c"])
    >>> y = pd.Series([0, 1] * 10)
    >>> oof = cross_validate_model({"kind": "logreg"}, X, y, folds=patient_folds(y, n_repeats=2))
    >>> oof.shape, list(oof.columns)
    ((40, 5), ['patient_id', 'repeat', 'fold', 'y_true', 'p'])
    """
    Xf, y_arr = check_xy(X, y)
    est = _as_estimator(estimator_or_spec, seed=seed, n_features=Xf.shape[1])
    g = align_groups(groups, Xf.index)
    oof, _ = _cross_validate_many({"model": est}, Xf, y_arr, folds=folds, groups=g, n_workers=n_jobs)
    return oof["model"]


def summarize_oof(oof: pd.DataFrame) -> pd.DataFrame:
    """Per-patient out-of-fold probability: the mean over repeats (each repeat's model never saw the patient).

    With a ``group`` column (several samples per patient), samples are averaged into their patient too, so that
    metrics and bootstrap CIs count patients, not samples.

    Parameters
    ----------
    oof
        From :func:`cross_validate_model`.

    Returns
    -------
    DataFrame indexed by ``patient_id`` (the group id when there are groups; first-seen order) with ``y_true``,
    ``p`` (mean over repeats and samples), ``p_sd`` (SD of the averaged values), ``n_repeats`` and ``n_samples``.

    Examples
    --------
    >>> import pandas as pd
    >>> from biomarkers.models import summarize_oof
    >>> oof = pd.DataFrame({"patient_id": ["a", "b", "a", "b"], "repeat": [0, 0, 1, 1], "fold": [0, 1, 1, 0],
    ...                     "y_true": [1, 0, 1, 0], "p": [0.8, 0.2, 0.6, 0.4]})
    >>> summarize_oof(oof)["p"].round(2).tolist()
    [0.7, 0.3]
    """
    key = "group" if "group" in oof.columns else PATIENT
    grouped = oof.groupby(key, sort=False)
    out = pd.DataFrame(
        {
            "y_true": grouped["y_true"].first(),
            "p": grouped["p"].mean(),
            "p_sd": grouped["p"].std(ddof=DDOF),
            "n_repeats": grouped["repeat"].nunique(),
            "n_samples": grouped[PATIENT].nunique(),
        }
    )
    out.index.name = PATIENT
    return out


def _inner_predict(
    est: BaseEstimator, X: pd.DataFrame, y: np.ndarray, inner: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Out-of-fold probabilities of one candidate over an outer training set's inner folds (one task)."""
    return np.concatenate([_fit_predict(est, X, y, tr, te)[0] for tr, te in inner])
