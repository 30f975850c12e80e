"""Choosing among candidates honestly: nested CV of the choose-then-fit procedure, and its operating threshold.

The procedure a run registers is: cross-validate every candidate (models, the clinical model, baselines) and keep
the one with the highest CV AUROC, refitted on all patients. Reporting that winner's own CV AUROC is optimistic
(the winner's curse), so the procedure itself is cross-validated: in each outer training fold, every candidate is
cross-validated again on the training patients only (the *inner* CV: one repeat of K folds, with the cheaper
:data:`~biomarkers.models._permutation.SCREEN_PARAMS` settings), the best one is taken, and its outer-fold
predictions are what the nested AUROC scores. The operating threshold is chosen the same way, on the inner
out-of-fold predictions of the chosen candidate, and applied to the outer fold's patients: its sensitivity and
specificity are honest. The inner CV is a cheaper version of the rule the final selection applies (5 x 5-fold,
full settings), so the nested estimate, if anything, undersells the registered procedure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers._errors import DataSchemaError
from biomarkers._keys import PATIENT
from biomarkers.models._cv import Folds, _group_labels, patient_folds, summarize_oof
from biomarkers.models._metrics import choose_threshold, operating_point
from biomarkers.stats import auroc, calibration_slope_intercept

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Ties in CV AUROC go to the candidate with fewer fitted parameters.
SIMPLICITY: dict[str, int] = {
    "majority": 0,
    "single_feature": 1,
    "mechanism_score": 2,
    "clinical": 3,
    "logreg": 4,
    "lightgbm": 5,
    "random_forest": 6,
}


def pick_best(aurocs: Mapping[str, float], specs: Mapping[str, Mapping[str, Any]]) -> str:
    """Return the candidate with the highest AUROC; ties go to the simplest kind, then to the first listed.

    Parameters
    ----------
    aurocs
        Candidate name -> CV AUROC (NaN never wins).
    specs
        Candidate name -> spec (for the kind), in candidate order.

    Returns
    -------
    The chosen name.
    """
    order = {name: i for i, name in enumerate(specs)}

    def key(name: str) -> tuple[float, int, int]:
        a = aurocs[name]
        return (-(a if a == a else -np.inf), SIMPLICITY.get(str(specs[name]["kind"]), 9), order[name])

    return min(aurocs, key=lambda n: key(n))


def cohort_folds(cohorts: Any, y: np.ndarray) -> Folds:
    """Leave-one-cohort-out splits (one repeat): each cohort is held out once, the others train.

    Parameters
    ----------
    cohorts
        Cohort name per row.
    y
        0/1 labels per row.

    Returns
    -------
    ``[[(train, test), ...]]``, one split per cohort, in sorted cohort order.
    """
    c = pd.Series(cohorts).astype(str).to_numpy()
    names = sorted(set(c))
    if len(names) < 2:
        msg = (
            f"cv.strategy leave_one_cohort_out needs at least 2 cohorts in data.cohort_col; found {len(names)} "
            f"({', '.join(names)}). Add cohorts or use cv.strategy: stratified."
        )
        raise DataSchemaError(msg)
    folds = []
    for name in names:
        te = np.flatnonzero(c == name)
        tr = np.flatnonzero(c != name)
        n_pos = int(y[tr].sum())
        if n_pos == 0 or n_pos == tr.size:
            msg = (
                f"Leaving out cohort {name!r} leaves the other cohorts with one class ({tr.size - n_pos} responder / "
                f"{n_pos} non-responder): no model can be trained. Check the labels of the other cohorts."
            )
            raise DataSchemaError(msg)
        folds.append((tr, te))
    return [folds]


def inner_folds(
    y: np.ndarray, groups: np.ndarray | None, train: np.ndarray, *, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One repeat of stratified K-fold over the outer training rows, as positions into X.

    K is lowered to the smallest class count among the training patients (at least 2).

    Parameters
    ----------
    y
        Labels of all rows.
    groups
        Patient per row (or None).
    train
        Outer training positions.
    n_splits
        Largest K.
    seed
        Seed of this outer split's inner folds.

    Returns
    -------
    ``(inner_train, inner_test)`` position arrays into X.
    """
    yt = y[train]
    gt = None if groups is None else groups[train]
    per_class = np.bincount(_group_labels(yt, gt)[2] if gt is not None else yt, minlength=2)
    k = int(min(n_splits, per_class.min()))
    if k < 2:
        msg = (
            f"An outer training fold has {per_class.min()} patient(s) of one class: too few to choose among "
            "candidates by inner CV. Lower cv.n_splits or add patients."
        )
        raise DataSchemaError(msg)
    rep = patient_folds(yt, n_splits=k, n_repeats=1, seed=seed, groups=gt)[0]
    return [(train[itr], train[ite]) for itr, ite in rep]


def _patients(frame: pd.DataFrame) -> pd.DataFrame:
    return summarize_oof(frame)


@dataclass
class NestedSelection:
    """The choose-then-fit procedure, cross-validated.

    Attributes
    ----------
    oof
        Long OOF table of the procedure (``patient_id, repeat, fold, y_true, p``, ``group`` with groups), plus the
        ``candidate`` chosen in that outer fold and its ``threshold``.
    choices
        One row per outer split: ``repeat, fold, candidate, inner_auroc, threshold``.
    sensitivity, specificity
        Of the calls ``p >= the fold's threshold`` on the outer patients (mean over repeats).
    calibration_slope, calibration_intercept
        Of the procedure's out-of-fold probabilities (mean over repeats).
    p_repeats
        Repeats x patients matrix of the procedure's probabilities (patient order of ``patients``).
    patients
        Patient-level table ``y_true, p`` (mean over repeats).
    """

    oof: pd.DataFrame
    choices: pd.DataFrame
    sensitivity: float
    specificity: float
    calibration_slope: float
    calibration_intercept: float
    p_repeats: np.ndarray
    patients: pd.DataFrame

    @property
    def counts(self) -> pd.Series:
        """How many outer splits chose each candidate, most first."""
        return self.choices["candidate"].value_counts()


def nested_selection(
    *,
    oof: Mapping[str, pd.DataFrame],
    inner: Mapping[tuple[int, int, str], np.ndarray],
    inner_plan: Mapping[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]],
    specs: Mapping[str, Mapping[str, Any]],
    y: np.ndarray,
    groups: np.ndarray | None,
    index: pd.Index,
    folds: Folds,
    threshold: Any,
) -> NestedSelection:
    """Assemble the nested CV from the outer OOF tables and the inner CV predictions.

    Parameters
    ----------
    oof
        Candidate -> outer OOF table (:func:`~biomarkers.models.cross_validate_model` layout).
    inner
        ``(repeat, fold, candidate)`` -> inner out-of-fold probabilities, one per inner-test row, in the order of
        the concatenated inner test positions of ``inner_plan[(repeat, fold)]``.
    inner_plan
        ``(repeat, fold)`` -> the inner folds (positions into X).
    specs
        Candidate specs, in candidate order (for ties).
    y, groups, index
        Labels, patient per row (or None) and ``X.index``.
    folds
        The outer folds.
    threshold
        ``evaluation.threshold`` rule (see :func:`~biomarkers.models._metrics.threshold_rule`).

    Returns
    -------
    A :class:`NestedSelection`.
    """
    rows, parts = [], []
    ids = index.to_numpy()
    for r, rep in enumerate(folds):
        for f, (_tr, _te) in enumerate(rep):
            pos = np.concatenate([te for _, te in inner_plan[(r, f)]])
            frame = pd.DataFrame({PATIENT: ids[pos], "repeat": 0, "y_true": y[pos]})
            if groups is not None:
                frame["group"] = groups[pos]
            scores, inner_p = {}, {}
            for name in specs:
                patients = _patients(frame.assign(p=inner[(r, f, name)]))
                inner_p[name] = patients
                scores[name] = float(auroc(patients["y_true"].to_numpy(), patients["p"].to_numpy()))
            best = pick_best(scores, specs)
            t = choose_threshold(inner_p[best]["y_true"], inner_p[best]["p"], threshold)
            rows.append({"repeat": r, "fold": f, "candidate": best, "inner_auroc": scores[best], "threshold": t})
            chosen = oof[best]
            parts.append(chosen[(chosen["repeat"] == r) & (chosen["fold"] == f)].assign(candidate=best, threshold=t))
    choices = pd.DataFrame(rows)
    nested = pd.concat(parts, ignore_index=True)
    order = pd.Series(np.arange(len(index)), index=index)
    nested["_row"] = order.loc[nested[PATIENT]].to_numpy()
    nested = nested.sort_values(["repeat", "_row"], kind="stable").drop(columns="_row").reset_index(drop=True)

    patients = summarize_oof(nested)
    sens, spec, slopes, intercepts, reps = [], [], [], [], []
    for _, d in nested.groupby("repeat"):
        per = summarize_oof(d).loc[patients.index]
        # A patient's samples are in one outer fold, so they share its threshold.
        key = "group" if "group" in d.columns else PATIENT
        t = d.groupby(key, sort=False)["threshold"].first().loc[per.index]
        s1, s0 = operating_point(per["y_true"], per["p"], t.to_numpy())
        sens.append(s1)
        spec.append(s0)
        slope, intercept = calibration_slope_intercept(per["y_true"], per["p"])
        slopes.append(slope)
        intercepts.append(intercept)
        reps.append(per["p"].to_numpy())
    return NestedSelection(
        oof=nested,
        choices=choices,
        sensitivity=float(np.mean(sens)),
        specificity=float(np.mean(spec)),
        calibration_slope=float(np.mean(slopes)),
        calibration_intercept=float(np.mean(intercepts)),
        p_repeats=np.vstack(reps),
        patients=patients,
    )


def repeat_matrix(oof: pd.DataFrame, order: Sequence[Any]) -> np.ndarray:
    """Repeats x patients matrix of a long OOF table's probabilities, patients in ``order``."""
    return np.vstack([summarize_oof(d).loc[list(order), "p"].to_numpy() for _, d in oof.groupby("repeat")])
