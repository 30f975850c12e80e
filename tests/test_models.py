"""Tests for biomarkers.models: patient-level CV, estimators, baselines, metrics with CIs, permutation test."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, balanced_accuracy_score, brier_score_loss, roc_auc_score

from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.models import (
    cross_validate_model,
    evaluate_models,
    evaluate_predictions,
    feature_importance,
    fit_final,
    make_estimator,
    patient_folds,
    permutation_test,
    summarize_oof,
    youden_threshold,
)
from biomarkers.models._estimators import anova_f_safe
from biomarkers.models._permutation import _permutation_spec

RF_FAST = {"kind": "random_forest", "params": {"n_estimators": 50}}


def _cohort(n: int = 30, p: int = 5, *, signal: float = 0.0, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Balanced toy cohort; column ``f0`` carries ``signal`` (mean shift in SD units) for non-responders."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    y = pd.Series(np.arange(n) % 2, index=ids, name="y")
    X = pd.DataFrame(rng.normal(size=(n, p)), index=ids, columns=[f"f{i}" for i in range(p)])
    X["f0"] += signal * y
    return X, y


def _cv_auroc_ci(spec: dict, X: pd.DataFrame, y: pd.Series, *, n_repeats: int = 2, seed: int = 0) -> dict:
    folds = patient_folds(y, n_splits=5, n_repeats=n_repeats, seed=seed)
    s = summarize_oof(cross_validate_model(spec, X, y, folds=folds, seed=seed))
    return evaluate_predictions(s["y_true"], s["p"], n_boot=500, seed=seed)


# --- folds ---------------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(
    n_patients=st.integers(4, 40),
    prevalence=st.floats(0.1, 0.9),
    two_samples=st.floats(0.0, 1.0),
    n_splits=st.integers(2, 5),
    use_groups=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_folds_never_split_a_patient(n_patients, prevalence, two_samples, n_splits, use_groups, seed):
    rng = np.random.default_rng(seed)
    patient_y = (rng.random(n_patients) < prevalence).astype(int)
    reps = 1 + (rng.random(n_patients) < two_samples) if use_groups else np.ones(n_patients, dtype=int)
    groups = np.repeat(np.arange(n_patients), reps)
    y = np.repeat(patient_y, reps)
    counts = np.bincount(patient_y, minlength=2)
    kwargs = {"n_splits": n_splits, "n_repeats": 2, "seed": seed, "groups": groups if use_groups else None}
    if counts.min() < n_splits:
        with pytest.raises(DataSchemaError, match=r"n_splits|both classes"):
            patient_folds(y, **kwargs)
        return
    folds = patient_folds(y, **kwargs)
    assert len(folds) == 2
    for rep in folds:
        assert len(rep) == n_splits
        tests = np.concatenate([te for _, te in rep])
        assert np.array_equal(np.sort(tests), np.arange(y.size))  # every row held out exactly once
        for tr, te in rep:
            assert not set(tr) & set(te)
            assert not set(groups[tr]) & set(groups[te])  # no patient on both sides of a split
        if not use_groups:  # plain stratified K-fold: class counts per fold differ by at most one
            for c in (0, 1):
                per_fold = [int((y[te] == c).sum()) for _, te in rep]
                assert max(per_fold) - min(per_fold) <= 1


def test_folds_are_stratified_and_repeats_differ():
    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    folds = patient_folds(y, n_splits=5, n_repeats=3, seed=1)
    for rep in folds:
        assert [int(y[te].sum()) for _, te in rep] == [2] * 5
    assert not np.array_equal(folds[0][0][1], folds[1][0][1])
    # the first repeat does not depend on how many repeats are drawn (the permutation test relies on this)
    first = patient_folds(y, n_splits=5, n_repeats=1, seed=1)[0]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, folds[0], strict=True))


def test_too_few_per_class_raises():
    y = [0] * 10 + [1] * 3
    with pytest.raises(DataSchemaError, match=r"3 non-responder.*need >= 5.*n_splits"):
        patient_folds(y, n_splits=5)
    with pytest.raises(DataSchemaError, match="both classes"):
        patient_folds([0] * 10, n_splits=2)
    with pytest.raises(DataSchemaError, match="different labels"):
        patient_folds([0, 1, 0, 1], n_splits=2, groups=["a", "a", "b", "b"])
    with pytest.raises(ConfigError, match="n_splits"):
        patient_folds(y, n_splits=1)


def test_grouped_cv_keeps_samples_of_a_patient_together():
    X, y = _cohort(24, 3, signal=1.0)
    X2 = pd.concat([X, X + 0.01]).set_axis([f"S{i}" for i in range(48)])
    y2 = pd.Series(np.r_[y.to_numpy(), y.to_numpy()], index=X2.index)
    groups = pd.Series(np.r_[y.index, y.index], index=X2.index)
    folds = patient_folds(y2, n_splits=4, n_repeats=2, groups=groups)
    oof = cross_validate_model({"kind": "logreg"}, X2, y2, folds=folds, groups=groups)
    assert (oof.groupby(["repeat", "group"])["fold"].nunique() == 1).all()
    summary = summarize_oof(oof)  # one row per patient: metrics and CIs count patients, not samples
    assert len(summary) == 24
    assert (summary["n_samples"] == 2).all()
    res = evaluate_models(
        X2,
        y2,
        model_specs=[{"kind": "logreg"}],
        cv_spec={"n_splits": 4, "n_repeats": 2},
        groups=groups,
        baselines=["majority", "single_feature:f1"],
        n_boot=100,
        n_permutations=4,
    )
    assert res.metrics.loc["logreg", "n"] == 24
    assert res.predictions.shape == (24, 4)
    assert res.cv["grouped"]


# --- metrics -------------------------------------------------------------------------------------------------


def test_metrics_match_sklearn_and_cis_bracket():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1).round(1)  # rounding makes ties
    m = evaluate_predictions(y, p, n_boot=500, seed=0, threshold=0.5)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    for name in ("auroc", "auprc", "balanced_accuracy", "brier"):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
        assert m[f"{name}_ci_low"] < m[f"{name}_ci_high"]
    assert evaluate_predictions(y, p, n_boot=200, seed=5) == evaluate_predictions(y, p, n_boot=200, seed=5)


def test_bootstrap_with_rare_class_and_single_class_error():
    y = np.r_[np.zeros(11, int), 1]
    m = evaluate_predictions(y, np.linspace(0, 1, 12), n_boot=200)
    assert np.isfinite(m["auroc_ci_low"])
    with pytest.raises(DataSchemaError, match="both classes"):
        evaluate_predictions(np.zeros(5), np.zeros(5))


def test_youden_threshold():
    assert youden_threshold([0, 0, 1, 1, 0, 1], [0.1, 0.2, 0.3, 0.8, 0.25, 0.9]) == 0.3


# --- models --------------------------------------------------------------------------------------------------


def test_null_data_cv_auroc_ci_contains_half():
    X, y = _cohort(30, 5, signal=0.0, seed=11)
    m = _cv_auroc_ci({"kind": "logreg"}, X, y)
    assert m["auroc_ci_low"] < 0.5 < m["auroc_ci_high"]


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "logreg"},
        {"kind": "logreg", "tune": True},
        {"kind": "logreg", "params": {"l1_ratio": 0.5, "class_weight": "balanced"}},
        RF_FAST,
        {"kind": "lightgbm", "select_k": 3},
    ],
)
def test_strong_signal_high_auroc(spec):
    X, y = _cohort(30, 5, signal=3.0, seed=2)
    m = _cv_auroc_ci(spec, X, y, n_repeats=1)
    assert m["auroc"] > 0.9
    assert m["auroc_ci_low"] > 0.6


def test_feature_selection_happens_inside_folds():
    """Selecting features on all patients first (the leaky way) inflates CV AUROC on pure noise; in-pipeline does not."""
    X, y = _cohort(30, 500, signal=0.0, seed=4)
    honest = _cv_auroc_ci({"kind": "logreg", "select_k": 10}, X, y)
    assert honest["auroc_ci_low"] < 0.5 < honest["auroc_ci_high"]
    f, _ = anova_f_safe(X.to_numpy(), y.to_numpy())
    top = X.columns[np.argsort(-f)[:10]]  # uses the held-out patients' labels: the leak
    leaky = _cv_auroc_ci({"kind": "logreg"}, X[top], y)
    assert leaky["auroc"] > 0.85
    assert leaky["auroc_ci_low"] > 0.5


def _anova_hand_written(X, y):
    """The one-way ANOVA F that anova_f_safe replaced by sklearn's f_classif, kept as the reference."""
    from scipy import stats

    classes = np.unique(y)
    n, k = X.shape[0], classes.size
    grand = X.mean(axis=0)
    ss_between, ss_within = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for c in classes:
        Xc = X[y == c]
        ss_between += Xc.shape[0] * (Xc.mean(axis=0) - grand) ** 2
        ss_within += ((Xc - Xc.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ss_between / (k - 1)) / (ss_within / (n - k))
    f = np.nan_to_num(np.where(ss_within > 0, f, np.where(ss_between > 0, np.inf, 0.0)), nan=0.0)
    p = np.where(np.isfinite(f), stats.f.sf(np.where(np.isfinite(f), f, 0.0), k - 1, n - k), 0.0)
    return f, p


def test_anova_f_safe_is_f_classif_with_constant_features_at_zero():
    import warnings

    from sklearn.feature_selection import SelectKBest, f_classif

    X, y = _cohort(24, 40, signal=1.0, seed=7)
    X, y = X.to_numpy(), y.to_numpy()
    X[:, 3] = 0.7  # constant: f_classif says NaN (and warns)
    X[:, 5] = 123.456  # constant: f_classif's sum-of-squares formula gives a spurious F
    X[:, 7] = y  # separated, no within-class variance: F = inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings from constant features
        f, p = anova_f_safe(X, y)
    ref_f, ref_p = _anova_hand_written(X, y)
    usual = np.ones(X.shape[1], dtype=bool)
    usual[[3, 5, 7]] = False
    np.testing.assert_allclose(f[usual], ref_f[usual], rtol=1e-8)
    np.testing.assert_allclose(p[usual], ref_p[usual], rtol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(f[usual], f_classif(X, y)[0][usual], rtol=1e-12)
    # Constant columns: 0 here; the hand-written version's rounding gave them a spurious F too (88 and 22).
    assert (f[[3, 5]] == 0).all()
    assert (p[[3, 5]] == 1).all()
    assert ref_f[[3, 5]].min() > 1
    assert np.isinf(f[7])
    assert p[7] == 0
    chosen = SelectKBest(anova_f_safe, k=5).fit(X, y).get_support(indices=True)
    assert 7 in chosen
    assert not {3, 5} & set(chosen)


def test_lightgbm_splits_on_30_rows():
    X, y = _cohort(30, 5, signal=1.5, seed=5)
    pipe = fit_final({"kind": "lightgbm"}, X, y, seed=0)
    trees = pipe.named_steps["clf"].booster_.dump_model()["tree_info"]
    assert max(t["num_leaves"] for t in trees) > 1
    assert feature_importance(pipe).index[0] == "f0"


@pytest.mark.parametrize("spec", [RF_FAST, {"kind": "lightgbm"}, {"kind": "logreg", "select_k": 2, "tune": True}])
def test_same_seed_same_oof(spec):
    X, y = _cohort(30, 6, signal=1.0, seed=6)
    X.iloc[::7, 1] = np.nan  # imputation inside the pipeline
    folds = patient_folds(y, n_splits=5, n_repeats=2, seed=3)
    a = cross_validate_model(spec, X, y, folds=folds, seed=3)
    b = cross_validate_model(spec, X, y, folds=folds, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["patient_id", "repeat", "fold", "y_true", "p"]
    assert a["p"].between(0, 1).all()
    assert set(a["patient_id"]) == set(X.index)


def test_feature_importance_names_after_selection():
    X, y = _cohort(30, 8, signal=3.0, seed=7)
    imp = feature_importance(fit_final({"kind": "logreg", "select_k": 3}, X, y, seed=0))
    assert len(imp) == 3
    assert imp.index[0] == "f0"
    assert imp["f0"] > 0  # positive coefficient: higher f0 -> non-responder
    rf = feature_importance(fit_final(RF_FAST, X, y, seed=0))
    assert rf.index[0] == "f0"
    assert set(rf.index) == set(X.columns)
    single = feature_importance(fit_final({"kind": "single_feature", "feature": "f3"}, X, y, seed=0))
    assert single.index.tolist() == ["f3"]


@pytest.mark.parametrize(
    "spec", [{"kind": "logreg", "tune": True, "select_k": 2}, RF_FAST, {"kind": "lightgbm"}, {"kind": "majority"}]
)
def test_fitted_pipelines_pickle_and_predict_by_name(spec):
    X, y = _cohort(30, 4, signal=2.0, seed=14)
    pipe = pickle.loads(pickle.dumps(fit_final(spec, X, y, seed=0)))
    p = pipe.predict_proba(X.iloc[:5])[:, 1]
    assert np.allclose(p, fit_final(spec, X, y, seed=0).predict_proba(X.iloc[:5])[:, 1])
    with pytest.raises(ValueError, match="feature names"):
        pipe.predict_proba(X.iloc[:5, ::-1].rename(columns=lambda c: c + "_x"))


def test_tuned_logreg_picks_c_from_grid():
    X, y = _cohort(30, 4, signal=2.0, seed=13)
    pipe = fit_final({"kind": "logreg", "tune": True, "tune_grid": [0.01, 1.0, 100.0]}, X, y, seed=0)
    clf = pipe.named_steps["clf"]
    assert clf.C_ in {0.01, 1.0, 100.0}
    assert clf.cv_log_loss_.shape == (3,)
    assert feature_importance(pipe).index[0] == "f0"


def test_permutation_uses_cheaper_forest_with_same_settings_for_observed():
    spec, changed = _permutation_spec({"kind": "random_forest"})
    assert changed
    assert spec["params"]["n_estimators"] == 25
    small = {"kind": "random_forest", "params": {"n_estimators": 20}}
    assert _permutation_spec(small) == (small, False)  # never more trees than asked for
    assert _permutation_spec({"kind": "logreg"}) == ({"kind": "logreg"}, False)


def test_bad_specs_and_inputs_raise():
    with pytest.raises(ConfigError, match="Unknown model kind"):
        make_estimator({"kind": "svm"}, seed=0)
    with pytest.raises(ConfigError, match="Unknown key"):
        make_estimator({"kind": "logreg", "C": 1.0}, seed=0)
    with pytest.raises(ConfigError, match="tune"):
        make_estimator({"kind": "lightgbm", "tune": True}, seed=0)
    with pytest.raises(ConfigError, match="conflicts with tune"):
        make_estimator({"kind": "logreg", "tune": True, "params": {"C": 1.0}}, seed=0)
    X, y = _cohort(20, 2)
    with pytest.raises(DataSchemaError, match="no label"):
        cross_validate_model({"kind": "logreg"}, X, y.iloc[:-1], folds=patient_folds(y))
    with pytest.raises(DataSchemaError, match="non-numeric"):
        cross_validate_model({"kind": "logreg"}, X.assign(s="a"), y, folds=patient_folds(y))


# --- baselines, evaluate_models, permutation test ------------------------------------------------------------


def test_evaluate_models_baselines_on_same_folds():
    X, y = _cohort(30, 4, signal=2.0, seed=8)
    X = X.rename(columns={"f0": "aqp9_macrophage_fraction", "f1": "pb__MNP__OSM"})
    X["aqp9_macrophage_fraction"] *= -1  # the single-feature baseline must learn the direction inside the fold
    res = evaluate_models(
        X,
        y,
        model_specs=[{"kind": "logreg"}, RF_FAST],
        cv_spec={"n_splits": 5, "n_repeats": 2},
        seed=0,
        n_boot=200,
        n_permutations=9,
    )
    names = ["logreg", "random_forest", "single__aqp9_macrophage_fraction", "single__pb__MNP__OSM", "majority"]
    assert set(res.metrics.index) == set(names)
    assert res.metrics.loc["majority", "kind"] == "baseline"
    assert res.metrics.loc["logreg", "kind"] == "model"
    keys = {name: set(map(tuple, oof[["patient_id", "repeat", "fold"]].to_numpy())) for name, oof in res.oof.items()}
    assert all(k == keys["logreg"] for k in keys.values())
    assert res.metrics.loc["single__aqp9_macrophage_fraction", "auroc"] > 0.75
    # the majority baseline predicts the training-fold prevalence of non-responders
    maj = res.oof["majority"]
    y_arr = y.to_numpy()
    for (r, f), d in maj.groupby(["repeat", "fold"]):
        train = res.folds[r][f][0]
        assert np.allclose(d["p"], y_arr[train].mean())
    # selection is over every candidate, baselines included: the highest CV AUROC wins
    assert res.metrics.loc[res.best_model, "auroc"] == res.metrics["auroc"].max()
    assert res.predictions.shape == (30, 6)
    assert 0 < res.threshold < 1
    assert res.permutation is not None
    assert res.permutation.n_permutations == 9
    assert set(res.per_repeat["repeat"]) == {0, 1}


def test_permutation_p_small_on_signal_large_on_null():
    X, y = _cohort(30, 3, signal=3.0, seed=9)
    strong = permutation_test({"kind": "logreg"}, X, y, n_splits=3, n_permutations=19, seed=0)
    assert strong.p_value == pytest.approx(1 / 20)
    assert strong.observed > 0.9
    Xn, yn = _cohort(30, 3, signal=0.0, seed=10)
    null = permutation_test({"kind": "logreg"}, Xn, yn, n_splits=3, n_permutations=19, seed=0)
    assert null.p_value > 0.2


def test_permutation_keeps_group_labels_consistent():
    X, y = _cohort(20, 3, signal=3.0, seed=12)
    X2 = pd.concat([X, X + 0.01]).set_axis([f"S{i}" for i in range(40)])
    y2 = pd.Series(np.r_[y.to_numpy(), y.to_numpy()], index=X2.index)
    groups = pd.Series(np.r_[y.index, y.index], index=X2.index)
    res = permutation_test({"kind": "logreg"}, X2, y2, n_splits=4, n_permutations=9, seed=0, groups=groups)
    assert res.p_value == pytest.approx(0.1)


def test_per_repeat_metrics_count_patients_not_samples():
    # 20 patients with 1-4 samples each: every metric, per repeat too, is computed by patient.
    rng = np.random.default_rng(3)
    n_samples = rng.integers(1, 5, size=20)
    groups = np.repeat([f"P{i:02d}" for i in range(20)], n_samples)
    y_pat = np.array([0, 1] * 10)
    y = pd.Series(np.repeat(y_pat, n_samples), index=[f"S{i:03d}" for i in range(groups.size)])
    X = pd.DataFrame({"a": y.to_numpy() + rng.normal(0, 1.2, y.size), "b": rng.normal(size=y.size)}, index=y.index)
    res = evaluate_models(X, y, model_specs=[{"kind": "logreg"}], cv_spec={"n_splits": 3, "n_repeats": 3},
                          groups=pd.Series(groups, index=y.index), n_boot=100, n_permutations=0)  # fmt: skip
    row = res.metrics.loc["logreg"]
    assert row["n"] == 20
    assert row["auroc"] == pytest.approx(row["auroc_repeat_mean"])


# --- workers: the same results in process, on 2 loky workers and on Dask ------------------------------------------
PARALLEL_SPECS = [
    {"kind": "logreg"},
    {"kind": "random_forest", "params": {"n_estimators": 150}},  # the permutation test uses its first 25 trees
    {"kind": "lightgbm", "params": {"n_estimators": 30}},
]


def _evaluate_small(n_workers: int):
    X, y = _cohort(20, 10, signal=1.0, seed=21)
    return evaluate_models(X, y, model_specs=PARALLEL_SPECS, cv_spec={"n_splits": 3, "n_repeats": 2}, seed=4,
                           n_boot=200, n_permutations=10, n_workers=n_workers)  # fmt: skip


def _assert_same_evaluation(a, b) -> None:
    for name in ("metrics", "per_repeat", "predictions"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    assert a.oof.keys() == b.oof.keys()
    for name in a.oof:
        pd.testing.assert_frame_equal(a.oof[name], b.oof[name], check_exact=True)
    np.testing.assert_array_equal(a.permutation.null, b.permutation.null)
    assert (a.permutation.observed, a.permutation.p_value) == (b.permutation.observed, b.permutation.p_value)
    assert (a.best_model, a.threshold) == (b.best_model, b.threshold)


@pytest.fixture(scope="module")
def one_worker():
    return _evaluate_small(1)


def test_same_results_on_one_and_two_workers(one_worker, caplog):
    with caplog.at_level(logging.INFO, logger="biomarkers"):
        two = _evaluate_small(2)
    _assert_same_evaluation(one_worker, two)
    # 4 candidates x 6 outer splits, plus the nested inner CV: 4 candidates x 6 splits x 3 inner folds
    assert any("96 fits (4 candidates x 2 repeats x 3 folds, nested)" in r.getMessage() and "on 2 workers (loky)" in r.getMessage() for r in caplog.records)
    assert one_worker.permutation.null.size == 10
    assert np.unique(one_worker.permutation.null).size > 1  # each permutation draws its own labels and folds


def test_same_results_on_dask(one_worker):
    pytest.importorskip("distributed")
    import joblib

    from biomarkers.compute import dask_client

    with dask_client("local", n_workers=2), joblib.parallel_config(backend="dask"):
        dask = _evaluate_small(2)
    _assert_same_evaluation(one_worker, dask)


def test_permutation_observed_from_the_first_trees_of_the_cv_forests():
    # evaluate_models reads the permutation's observed AUROC (25 trees) off its 150-tree CV forests without
    # refitting; it must equal permutation_test's own run of the 25-tree forest, bit for bit.
    X, y = _cohort(24, 6, signal=1.5, seed=5)
    spec = {"kind": "random_forest", "params": {"n_estimators": 150, "max_depth": 3}}
    res = evaluate_models(X, y, model_specs=[spec], baselines=[], cv_spec={"n_splits": 3, "n_repeats": 2}, seed=5,
                          n_boot=100, n_permutations=2, n_workers=1)  # fmt: skip
    fresh = permutation_test(_permutation_spec(spec)[0], X, y, n_splits=3, n_permutations=2, seed=5)
    assert res.permutation.observed == fresh.observed


def test_permutation_progress_bar_on_a_tty(monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    X, y = _cohort(20, 3, signal=1.0, seed=2)
    permutation_test({"kind": "logreg"}, X, y, n_splits=3, n_permutations=5, seed=0)
    assert "permutations" in capsys.readouterr().err


def test_evaluate_models_n_jobs_is_a_deprecated_alias():
    X, y = _cohort(20, 3, signal=1.0, seed=2)
    with pytest.warns(DeprecationWarning, match="n_workers"):
        evaluate_models(X, y, model_specs=[{"kind": "logreg"}], cv_spec={"n_splits": 3, "n_repeats": 1}, n_boot=100,
                        n_permutations=0, n_jobs=1)  # fmt: skip
