"""Candidates for small n, chosen honestly: mechanism score, clinical models, nested CV, selection-aware test, LOCO."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.models import (
    choose_threshold,
    cohort_folds,
    evaluate_models,
    make_estimator,
    operating_point,
    paired_delta_auroc,
    pick_best,
)
from biomarkers.models._mechanism import check_weights, resolve_weights

SPECS = [{"kind": "logreg", "params": {"C": 0.1}}, {"kind": "mechanism_score", "weights": {"a": 1, "b": -1}}]
FAST = {"cv_spec": {"n_splits": 3, "n_repeats": 2}, "n_boot": 200, "seed": 0}


def _table(n: int = 40, *, signal: float = 1.5, seed: int = 0, clinical: bool = False) -> tuple[pd.DataFrame, pd.Series]:
    """``a`` up and ``b`` down in non-responders (by ``signal`` SDs), ``c`` and ``d`` noise; optional clin__ covariate."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    y = pd.Series(rng.permutation(np.arange(n) % 2), index=ids)
    X = pd.DataFrame(rng.normal(size=(n, 4)), index=ids, columns=["a", "b", "c", "d"])
    X["a"] += signal * y
    X["b"] -= signal * y
    if clinical:
        X["clin__severity"] = 0.8 * y + rng.normal(size=n)
    return X, y


# --- the mechanism score -------------------------------------------------------------------------------------------
def test_mechanism_score_ranks_by_the_fixed_sign_sum_of_training_standardised_features():
    X, y = _table(seed=1)
    train, test = np.arange(30), np.arange(30, 40)
    pipe = make_estimator({"kind": "mechanism_score", "weights": {"a": 1, "b": -1}}, seed=0).fit(X.iloc[train], y.iloc[train])
    p = pipe.predict_proba(X.iloc[test])[:, 1]
    mu, sd = X.iloc[train][["a", "b"]].mean(), X.iloc[train][["a", "b"]].std(ddof=0)
    score = ((X.iloc[test]["a"] - mu["a"]) / sd["a"] - (X.iloc[test]["b"] - mu["b"]) / sd["b"]).to_numpy()
    assert np.array_equal(np.argsort(p), np.argsort(score))  # the only fitted steps: mean and SD (and a monotone map)
    assert roc_auc_score(y.iloc[test], p) == pytest.approx(roc_auc_score(y.iloc[test], score))


def test_mechanism_weights_are_signs_and_defaults_drop_absent_features():
    with pytest.raises(ConfigError, match=r"\+1 or -1"):
        check_weights({"a": 0.5})
    with pytest.raises(ConfigError, match="non-empty"):
        check_weights({})
    present, missing = resolve_weights(None, ["aqp9_macrophage_fraction", "pb__MNP__OSM", "x"])
    assert present == {"aqp9_macrophage_fraction": 1, "pb__MNP__OSM": 1}
    assert "sig__stroma__OSM_RESPONSE" in missing


def test_mechanism_score_with_a_missing_feature_or_no_default_feature_is_refused():
    X, y = _table()
    with pytest.raises(DataSchemaError, match="not in X: zz"):
        evaluate_models(X, y, model_specs=[{"kind": "mechanism_score", "weights": {"a": 1, "zz": 1}}], n_permutations=0, **FAST)
    with pytest.raises(DataSchemaError, match="None of the default mechanism_score features"):
        evaluate_models(X, y, model_specs=[{"kind": "mechanism_score"}], n_permutations=0, **FAST)


# --- clinical candidates ------------------------------------------------------------------------------------------
def test_clinical_candidates_are_added_and_biomarker_models_never_read_clinical_columns():
    X, y = _table(signal=0.0, seed=2)
    X["clin__leak"] = y + np.random.default_rng(0).normal(scale=0.05, size=len(y))  # a covariate that is the label
    res = evaluate_models(X, y, model_specs=SPECS, baselines=[], n_permutations=0, **FAST)
    m = res.metrics
    assert {"clinical_only", "clinical_plus_biomarkers"} <= set(m.index)
    assert m.loc["clinical_only", "kind"] == "clinical"
    assert m.loc["clinical_plus_biomarkers", "kind"] == "model"
    assert m.loc["clinical_only", "auroc"] > 0.95
    assert m.loc["logreg", "auroc"] < 0.8  # it would be ~1 if it saw clin__leak
    assert res.best_model in {"clinical_only", "clinical_plus_biomarkers"}
    assert "vs_clinical" in res.deltas
    assert "incremental" in res.deltas
    if res.best_model == "clinical_only":
        assert "clinical-only model won" in res.champion_block


def test_clinical_plus_biomarkers_shows_the_incremental_value_of_the_biomarkers():
    X, y = _table(n=60, signal=2.0, seed=3, clinical=True)
    res = evaluate_models(X, y, model_specs=SPECS, n_permutations=0, **FAST)
    inc = res.deltas["incremental"]
    assert (inc["model"], inc["against"]) == ("clinical_plus_biomarkers", "clinical_only")
    assert inc["delta"] > 0.1
    assert inc["ci_low"] > 0


# --- nested CV, threshold, calibration ---------------------------------------------------------------------------
def test_nested_cv_evaluates_the_choice_and_chooses_the_threshold_inside_each_fold():
    X, y = _table(signal=1.2, seed=4)
    res = evaluate_models(X, y, model_specs=SPECS, n_permutations=0, threshold_rule_={"target_sensitivity": 0.8}, **FAST)
    nest = res.nested
    assert len(nest.choices) == 6  # one choice per outer split
    assert set(nest.choices["candidate"]) <= set(res.specs)
    assert nest.choices["threshold"].nunique() > 1  # each fold's own threshold
    # the nested OOF rows are the chosen candidate's outer predictions, split by split
    for row in nest.choices.itertuples():
        got = nest.oof[(nest.oof["repeat"] == row.repeat) & (nest.oof["fold"] == row.fold)]
        want = res.oof[row.candidate]
        want = want[(want["repeat"] == row.repeat) & (want["fold"] == row.fold)]
        assert np.array_equal(got["p"].to_numpy(), want["p"].to_numpy())
    assert 0 <= nest.sensitivity <= 1
    assert 0 <= nest.specificity <= 1
    assert np.isfinite([nest.calibration_slope, nest.calibration_intercept]).all()
    assert res.nested_auroc <= res.metrics["auroc"].max() + 0.05
    # predict's threshold: the same rule on the selected candidate's OOF predictions over all patients
    p = res.predictions
    assert res.threshold == choose_threshold(p["y_true"], p[res.best_model], {"target_sensitivity": 0.8})
    assert operating_point(p["y_true"], p[res.best_model], res.threshold)[0] >= 0.8
    assert {"net_benefit_model", "net_benefit_treat_all"} <= set(res.decision_curve)


def test_target_sensitivity_threshold_and_bad_rules():
    y, p = [0, 0, 1, 1, 1], [0.1, 0.5, 0.4, 0.6, 0.9]
    assert choose_threshold(y, p, {"target_sensitivity": 0.9}) == 0.4
    assert choose_threshold(y, p, {"target_sensitivity": 0.6}) == 0.6
    assert operating_point(y, p, 0.6) == pytest.approx((2 / 3, 1.0))
    with pytest.raises(ConfigError, match="target_sensitivity"):
        choose_threshold(y, p, {"target_sensitivity": 1.5})


def test_ties_go_to_the_simplest_candidate():
    specs = {"random_forest": {"kind": "random_forest"}, "single__a": {"kind": "single_feature", "feature": "a"}}
    assert pick_best({"random_forest": 0.8, "single__a": 0.8}, specs) == "single__a"
    assert pick_best({"random_forest": 0.81, "single__a": 0.8}, specs) == "random_forest"


def test_paired_delta_is_zero_for_identical_predictions_and_matches_the_difference():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    a, b = y + rng.normal(size=40), rng.normal(size=40)
    same = paired_delta_auroc(y, a, a, n_boot=200)
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    d = paired_delta_auroc(y, a, b, n_boot=500)
    assert d["delta"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert d["ci_low"] < d["delta"] < d["ci_high"]


# --- the selection-aware permutation test ------------------------------------------------------------------------
def test_selection_test_is_small_on_signal_and_stops_early_on_null():
    X, y = _table(signal=2.0, seed=5)
    strong = evaluate_models(X, y, model_specs=SPECS, n_permutations=19, **FAST)
    assert strong.permutation.statistic == "max_candidate_cv_auroc"
    assert strong.permutation.p_value == pytest.approx(1 / 20)
    Xn, yn = _table(signal=0.0, seed=6)
    null = evaluate_models(Xn, yn, model_specs=SPECS, n_permutations=200, **FAST)
    assert null.permutation.p_value > 0.05
    assert null.permutation.stopped_early  # Besag-Clifford
    assert null.permutation.n_permutations < 200
    assert null.nested_metrics["auroc_ci_low"] <= 0.5


def test_selection_results_do_not_depend_on_the_worker_count():
    X, y = _table(signal=1.0, seed=7, clinical=True)
    kw = {"model_specs": [*SPECS, {"kind": "random_forest", "params": {"n_estimators": 60}}], "n_permutations": 10, **FAST}
    one, two = evaluate_models(X, y, n_workers=1, **kw), evaluate_models(X, y, n_workers=2, **kw)
    pd.testing.assert_frame_equal(one.metrics, two.metrics, check_exact=True)
    pd.testing.assert_frame_equal(one.nested.oof, two.nested.oof, check_exact=True)
    np.testing.assert_array_equal(one.permutation.null, two.permutation.null)
    assert (one.deltas, one.threshold) == (two.deltas, two.threshold)


def test_a_cohort_too_small_for_an_inner_cv_runs_without_nesting_and_says_so(caplog):
    X, y = _table(n=8, seed=8)
    y[:] = [1, 0, 0, 0, 0, 0, 1, 0]
    kw = {"model_specs": SPECS, "cv_spec": {"n_splits": 2, "n_repeats": 1}, "n_permutations": 0}
    with caplog.at_level(logging.WARNING, logger="biomarkers"):
        res = evaluate_models(X, y, **kw)
    assert res.nested is None
    assert "too few to choose among candidates" in res.nested_skipped
    assert any("nested CV not run" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataSchemaError, match="too few to choose among candidates"):
        evaluate_models(X, y, nested=True, **kw)


# --- several cohorts --------------------------------------------------------------------------------------------
def _cohorts(y: pd.Series) -> pd.Series:
    return pd.Series(np.array(["GSE-1 (Ileum)", "cohort_B", "C"])[np.arange(len(y)) % 3], index=y.index)


def test_leave_one_cohort_out_holds_out_each_cohort_and_reports_per_cohort_aurocs(caplog):
    X, y = _table(n=48, signal=1.5, seed=9)
    cohorts = _cohorts(y)
    seen: list[set[str]] = []

    def split_features(train):
        seen.append(set(cohorts.iloc[train]))
        return X

    with caplog.at_level(logging.INFO, logger="biomarkers"):
        res = evaluate_models(
            X, y, model_specs=SPECS, cv_spec={"strategy": "leave_one_cohort_out", "n_splits": 3}, cohorts=cohorts,
            split_features=split_features, n_permutations=9, n_boot=200,
        )  # fmt: skip
    assert (res.cv["strategy"], res.cv["n_repeats"]) == ("leave_one_cohort_out", 1)
    assert len(res.folds[0]) == 3
    for tr, te in res.folds[0]:
        assert cohorts.iloc[te].nunique() == 1
        assert not set(cohorts.iloc[te]) & set(cohorts.iloc[tr])
    assert sorted(map(len, seen)) == [2, 2, 2]  # features rebuilt from the two training cohorts of each split
    t = res.cohort_metrics
    assert set(t["cohort"]) == set(cohorts)
    assert {"logreg", "nested"} <= set(t["model"])
    assert t["auroc"].between(0, 1).all()
    assert (t["auroc_ci_low"] <= t["auroc"]).all()
    assert res.permutation.n_permutations == 9


def test_cohort_folds_need_two_cohorts_and_strategy_needs_cohorts():
    y = np.array([0, 1] * 5)
    with pytest.raises(DataSchemaError, match="at least 2 cohorts"):
        cohort_folds(["A"] * 10, y)
    X, ys = _table()
    with pytest.raises(ConfigError, match=r"data\.cohort_col"):
        evaluate_models(X, ys, model_specs=SPECS, cv_spec={"strategy": "leave_one_cohort_out"}, n_permutations=0)
    with pytest.raises(ConfigError, match=r"cv\.strategy"):
        evaluate_models(X, ys, model_specs=SPECS, cv_spec={"strategy": "bootstrap"}, n_permutations=0)
