"""A real SQLite MLflow store per test: runs, metrics, artifacts, registry and the champion alias."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import biomarkers as bm
from biomarkers import _keys as K

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FAST = [
    "data.simulate.n_patients=16",
    "data.simulate.cells_per_patient=150",
    "data.simulate.n_genes=600",
    "cv.n_splits=3",
    "cv.n_repeats=1",
    "evaluation.n_boot=200",
    "evaluation.n_permutations=5",
    "models.1.params.n_estimators=50",
    "plots.umap=false",
]


def fast_config(*extra: str):
    return bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=[*FAST, *extra])


@pytest.fixture(scope="module")
def store(module_store):
    return module_store


@pytest.fixture(scope="module")
def finished_run(store):
    return bm.run_experiment(fast_config("plots.umap=true", "plots.umap_max_cells=500"))


def test_run_logs_parent_children_metrics_and_registers_champion(finished_run):
    res = finished_run
    client = mlflow.MlflowClient()
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "best_cv_auroc" in parent.data.metrics
    assert parent.data.params["cv.n_splits"] == "3"
    for tag in ("git_sha", "data_digest", "package_versions"):
        assert tag in parent.data.tags
    assert parent.inputs.dataset_inputs, "the feature table is logged with mlflow.log_input"
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    assert {r.info.run_name for r in children} == set(res.evaluation.metrics.index)
    for r in children:
        for m in ("cv_auroc", "cv_auroc_ci_low", "cv_auroc_ci_high", "cv_auprc", "cv_balanced_accuracy", "cv_brier"):
            assert m in r.data.metrics
        assert r.data.metrics["cv_auroc_ci_low"] <= r.data.metrics["cv_auroc"] <= r.data.metrics["cv_auroc_ci_high"]
    arts = {a.path for a in client.list_artifacts(res.parent_run_id)} | {
        a.path for a in client.list_artifacts(res.parent_run_id, "plots")
    }
    for name in ("config.resolved.yaml", "features.csv", "cv_predictions.csv", "plots/roc_pr.png", "plots/calibration.png",
                 "plots/umap_cell_type_aqp9.png", "plots/patient_signature_heatmap.png", "plots/decision_curve.png",
                 "nested_cv_choices.csv", "nested_cv_predictions.csv", "decision_curve.csv", "report.html"):  # fmt: skip
        assert name in arts
    # The selected procedure, honestly evaluated: what a clinical reviewer asks for, on the parent run.
    m = parent.data.metrics
    for key in ("nested_cv_auroc", "selection_p_value", "calibration_slope", "calibration_intercept", "threshold",
                "oof_sensitivity", "oof_specificity", "delta_auroc_vs_best_baseline", "delta_auroc_vs_clinical"):  # fmt: skip
        assert key in m, key
    for key in ("nested_cv_auroc", "delta_auroc_vs_best_baseline", "delta_auroc_vs_clinical"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
    ev = res.evaluation
    assert m["nested_cv_auroc"] == pytest.approx(ev.nested_auroc)
    assert m["threshold"] == pytest.approx(ev.threshold)
    assert parent.data.tags["selected_model"] == ev.best_model
    assert {"mechanism_score", "clinical_only", "clinical_plus_biomarkers"} <= set(ev.metrics.index)
    mv = client.get_model_version_by_alias("anti-tnf-nonresponse", "champion")
    assert str(mv.version) == res.model_version == res.champion_version
    assert res.model_uri == f"models:/anti-tnf-nonresponse/{mv.version}"


def test_champion_moves_only_when_beaten(finished_run):
    client = mlflow.MlflowClient()
    name = "anti-tnf-nonresponse"
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    client.set_model_version_tag(name, champion, "nested_cv_auroc", "0.99")  # pretend the champion was excellent
    second = bm.run_experiment(fast_config())
    assert not second.became_champion
    assert str(client.get_model_version_by_alias(name, "champion").version) == champion
    client.set_model_version_tag(name, champion, "nested_cv_auroc", "0.01")
    third = bm.run_experiment(fast_config())
    assert third.became_champion
    assert str(client.get_model_version_by_alias(name, "champion").version) == third.model_version


def test_failed_run_is_marked_failed_and_registers_nothing(finished_run, monkeypatch):
    import biomarkers.tracking._run as run_mod

    client = mlflow.MlflowClient()
    before = {v.version for v in client.search_model_versions("name='anti-tnf-nonresponse'")}
    champion = str(client.get_model_version_by_alias("anti-tnf-nonresponse", "champion").version)
    n_failed = int((mlflow.search_runs(search_all_experiments=True)["status"] == "FAILED").sum())

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "promote_if_better", boom, raising=False)
    monkeypatch.setattr("biomarkers.tracking._registry.promote_if_better", boom)
    with pytest.raises(KeyboardInterrupt):
        bm.run_experiment(fast_config())
    runs = mlflow.search_runs(search_all_experiments=True)
    assert int((runs["status"] == "FAILED").sum()) > n_failed
    parents = runs[runs["tags.mlflow.parentRunId"].isna()].sort_values("start_time")
    last = parents.iloc[-1]
    assert last["status"] == "FAILED"
    children = runs[runs["tags.mlflow.parentRunId"] == last["run_id"]]
    assert len(children) > 0
    assert set(children["status"]) == {"FAILED"}
    after = {v.version for v in client.search_model_versions("name='anti-tnf-nonresponse'")}
    assert after == before
    assert str(client.get_model_version_by_alias("anti-tnf-nonresponse", "champion").version) == champion
    assert mlflow.active_run() is None


def test_predict_from_cells_and_from_features(finished_run, tmp_path):
    new = bm.simulate_cohort(n_patients=8, cells_per_patient=150, n_genes=600, seed=5)
    path = tmp_path / "new.h5ad"
    new.write_h5ad(path)
    out = tmp_path / "preds.csv"
    table = bm.predict(path, model_uri="models:/anti-tnf-nonresponse@champion", out=out)
    assert list(table.columns[:3]) == ["patient_id", "p_non_response", "prediction"]
    assert table.columns[-1] == "feature_coverage"
    assert len(table) == 8
    assert table["p_non_response"].between(0, 1).all()
    assert set(table["prediction"]) <= {K.RESPONDER, K.NON_RESPONDER}
    assert pd.read_csv(out).shape == table.shape
    feats = table.drop(columns=["p_non_response", "prediction", "feature_coverage"])
    again = bm.predict(feats, model_uri="models:/anti-tnf-nonresponse@champion")
    np.testing.assert_allclose(again["p_non_response"], table["p_non_response"])


def test_predict_in_memory_cells_with_a_custom_patient_column(finished_run):
    new = bm.simulate_cohort(n_patients=6, cells_per_patient=150, n_genes=600, seed=9)
    new.obs["donor"] = new.obs[K.PATIENT].astype(str)
    del new.obs[K.PATIENT]
    table = bm.predict(new, model_uri="models:/anti-tnf-nonresponse@champion", patient_col="donor")
    assert len(table) == 6


def test_predict_does_not_depend_on_column_order(finished_run, tmp_path):
    cols = finished_run.cohort.features.columns
    feats = finished_run.cohort.features.reset_index()
    a = bm.predict(feats, model_uri="models:/anti-tnf-nonresponse@champion")
    b = bm.predict(feats[[K.PATIENT, *cols[::-1]]], model_uri="models:/anti-tnf-nonresponse@champion")
    np.testing.assert_allclose(a["p_non_response"], b["p_non_response"])


def test_registered_model_reproduces_in_a_fresh_process(finished_run, tmp_path, store):
    feats = finished_run.cohort.features
    feats.to_parquet(tmp_path / "f.parquet")  # exact floats (a CSV round trip can change the last bit)
    here = mlflow.pyfunc.load_model("models:/anti-tnf-nonresponse@champion").predict(feats)["p_non_response"].to_numpy()
    code = (
        "import mlflow, pandas as pd, sys\n"
        f"mlflow.set_tracking_uri({store!r})\n"
        f"f = pd.read_parquet({str(tmp_path / 'f.parquet')!r})\n"
        "p = mlflow.pyfunc.load_model('models:/anti-tnf-nonresponse@champion').predict(f)['p_non_response']\n"
        "print(','.join(repr(float(v)) for v in p))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    there = np.array([float(v) for v in out.stdout.strip().splitlines()[-1].split(",")])
    np.testing.assert_array_equal(here, there)


def test_compare_lists_runs_best_first(finished_run):
    df = bm.compare_runs(experiment="anti-tnf-default")
    assert len(df) >= len(finished_run.evaluation.metrics)
    assert set(finished_run.child_runs.values()) <= set(df["run_id"])
    assert df["cv_auroc"].dropna().is_monotonic_decreasing
