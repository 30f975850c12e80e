"""Reliability and scientific validity: failures, concurrent runs, untouched inputs, determinism, leakage, security.

Related tests elsewhere: `tests/test_models.py::test_folds_never_split_a_patient` (hypothesis: CV folds never split
a patient, for any cohort size, prevalence and grouping) and `::test_feature_selection_happens_inside_folds`
(selecting features on all patients inflates CV AUROC on noise; the package's in-fold selection does not);
`tests/test_bad_input.py` (every bad input: one-line error, nothing left behind).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_selection import SelectKBest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError, ModelNotFoundError
from biomarkers.config import ExperimentConfig
from biomarkers.models import cross_validate_model, evaluate_models, evaluate_predictions, patient_folds, summarize_oof

MODEL_NAME = "reliability"  # registry.model_name unset: the experiment name
# 12 simulated patients x ~60 cells x 400 genes; three seeded models (one tuned with feature selection), 2 x 3-fold CV.
CONFIG = {
    "schema_version": 1,
    "name": "reliability",
    "data": {"path": "cohort.h5ad"},
    "preprocess": {"min_genes": 20, "min_counts": 50},
    "models": [
        {"kind": "logreg", "select_k": 5, "tune": True},
        {"kind": "random_forest", "params": {"n_estimators": 25}},
        {"kind": "lightgbm", "params": {"n_estimators": 25}},
    ],
    "cv": {"n_splits": 3, "n_repeats": 2},
    "evaluation": {"n_boot": 100, "n_permutations": 5},
    "plots": {"umap": False},
}


def cohort(seed: int = 0):
    return bm.simulate_cohort(n_patients=12, cells_per_patient=60, n_genes=400, seed=seed)


def write_experiment(folder: Path, **changes: object) -> Path:
    """``folder/cohort.h5ad`` (if absent) and ``folder/exp.yaml`` (CONFIG with top-level ``changes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "cohort.h5ad").exists():
        cohort().write_h5ad(folder / "cohort.h5ad")
    (folder / "exp.yaml").write_text(yaml.safe_dump({**CONFIG, **changes}))
    return folder / "exp.yaml"


def env_for(store: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "BIOMARKERS_ARTIFACT_ROOT": str(store / "mlruns"),
    }


def start_run(config: Path, store: Path) -> subprocess.Popen[str]:
    """``biomarkers run CONFIG`` in a fresh process against ``store`` (not waited for)."""
    return subprocess.Popen(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", "run", str(config)],
        cwd=config.parent, env=env_for(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def client_for(store: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{store}/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def parents(client: mlflow.MlflowClient, experiment: str = "reliability") -> list:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def children(client: mlflow.MlflowClient, parent) -> dict[str, object]:
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in runs}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def use_store(monkeypatch: pytest.MonkeyPatch, store: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    monkeypatch.setenv("BIOMARKERS_ARTIFACT_ROOT", str(store / "mlruns"))


# --- failures: a run that fails or is interrupted midway leaves the store as it was ---------------------------


@pytest.fixture(scope="module")
def store_with_champion(tmp_path_factory):
    """An in-process store holding one finished run and its registered champion (logreg only, for speed)."""
    tmp = tmp_path_factory.mktemp("failures")
    cfg_path = write_experiment(tmp, models=[{"kind": "logreg"}], evaluation={"n_boot": 100, "n_permutations": 0})
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, tmp)
        first = bm.run_experiment(bm.load_config(cfg_path))
        assert first.became_champion
        yield tmp, cfg_path, first


def _raise_in_second_child(monkeypatch, exc: type[BaseException]) -> None:
    """Log the parent and the first child normally, then fail inside the second child's logging."""
    import biomarkers.tracking._run as run_mod

    original, calls = run_mod._log_child, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            msg = "injected failure while logging a child run"
            raise exc(msg)
        return original(*args, **kwargs)

    monkeypatch.setattr(run_mod, "_log_child", flaky)


def _raise_after_registration(monkeypatch, exc: type[BaseException]) -> None:
    """Fail after the new model version exists in the registry (while deciding the champion)."""

    def boom(*args, **kwargs):
        msg = "injected failure after registering the model"
        raise exc(msg)

    monkeypatch.setattr("biomarkers.tracking._registry.promote_if_better", boom)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("inject", [_raise_in_second_child, _raise_after_registration], ids=["child", "registry"])
def test_failed_or_interrupted_run_is_failed_and_changes_nothing_else(store_with_champion, monkeypatch, exc, inject):
    tmp, cfg_path, first = store_with_champion
    use_store(monkeypatch, tmp)
    client = client_for(tmp)
    versions = {v.version for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion").version
    known = {
        r.info.run_id: r.info.status
        for r in client.search_runs([client.get_experiment_by_name("reliability").experiment_id])
    }
    inject(monkeypatch, exc)

    with pytest.raises(exc, match="injected failure"):
        bm.run_experiment(bm.load_config(cfg_path))

    assert mlflow.active_run() is None
    new = [p for p in parents(client) if p.info.run_id not in known]
    assert len(new) == 1
    assert new[0].info.status == "FAILED"
    kids = children(client, new[0])
    assert kids, "at least one child run had started"
    assert {r.info.status for r in kids.values()} == {"FAILED"}
    # earlier runs, the registry and the champion alias are untouched
    still = {
        r.info.run_id: r.info.status for r in client.search_runs([new[0].info.experiment_id]) if r.info.run_id in known
    }
    assert still == known
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    assert {v.version for v in client.search_model_versions(f"name='{MODEL_NAME}'")} == versions
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion


# --- two runs at once on one SQLite store ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory):
    """Two `biomarkers run` processes started together on one fresh SQLite store."""
    tmp = tmp_path_factory.mktemp("concurrent")
    cfg_path = write_experiment(tmp)
    before = sha256(tmp / "cohort.h5ad")
    procs = [start_run(cfg_path, tmp), start_run(cfg_path, tmp)]
    results = [finish(p) for p in procs]
    return tmp, before, results


def test_two_runs_at_once_on_one_store_both_complete(concurrent):
    tmp, _, results = concurrent
    for code, err in results:
        assert code == 0, err
    client = client_for(tmp)
    runs = parents(client)
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert set(children(client, r)) >= {"logreg", "random_forest", "lightgbm", "majority"}
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.tags["run_id"] for v in versions} == {r.info.run_id for r in runs}
    # Same config and seed: equal CV AUROC, and a tie does not move the alias from the version registered first.
    assert len({v.tags["nested_cv_auroc"] for v in versions}) == 1
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"


# --- inputs are read, never written ----------------------------------------------------------------------------


def test_input_files_are_never_modified(concurrent, tmp_path, monkeypatch):
    store, before, _ = concurrent
    assert sha256(store / "cohort.h5ad") == before, "`biomarkers run` changed its input file"
    use_store(monkeypatch, store)
    cells = tmp_path / "new.h5ad"
    cohort(seed=3).write_h5ad(cells)
    digest = sha256(cells)
    table = bm.predict(cells, model_uri=f"models:/{MODEL_NAME}@champion", out=tmp_path / "p.csv")
    assert sha256(cells) == digest, "predict changed its h5ad input"
    features = tmp_path / "features.csv"
    table.drop(columns=["p_non_response", "prediction", "feature_coverage"]).to_csv(features, index=False)
    digest = sha256(features)
    again = bm.predict(features, model_uri=f"models:/{MODEL_NAME}@champion", out=tmp_path / "q.csv")
    assert sha256(features) == digest, "predict changed its CSV input"
    np.testing.assert_allclose(again["p_non_response"], table["p_non_response"])


# --- determinism ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """The same config and seed as the two concurrent runs, in a fresh process with a store of its own."""
    store = tmp_path_factory.mktemp("solo")
    code, err = finish(start_run(write_experiment(store), store))
    assert code == 0, err
    return store


def _logged(client: mlflow.MlflowClient, parent, tmp: Path) -> dict[str, object]:
    """Metrics of a parent run and its children, and the bytes of its CV artifacts."""
    out: dict[str, object] = {"parent": parent.data.metrics}
    out.update({name: run.data.metrics for name, run in children(client, parent).items()})
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("cv_predictions.csv", "cv_predictions_by_fold.csv", "features.csv", "metrics.csv"):
        out[name] = Path(client.download_artifacts(parent.info.run_id, name, str(tmp))).read_bytes()
    return out


def test_same_config_and_seed_give_identical_results_in_fresh_processes(solo, concurrent, tmp_path, monkeypatch):
    """Three processes (one alone with its own store, two at once on another): identical metrics and predictions."""
    runs = [(client_for(solo), p) for p in parents(client_for(solo))]
    runs += [(client_for(concurrent[0]), p) for p in parents(client_for(concurrent[0]))]
    assert len(runs) == 3
    logged = [_logged(client, parent, tmp_path / str(i)) for i, (client, parent) in enumerate(runs)]
    reference = logged[0]
    assert "selection_p_value" in reference["parent"]
    assert {"logreg", "random_forest", "lightgbm"} <= set(reference)
    for other in logged[1:]:
        assert set(other) == set(reference)
        for key in reference:
            assert other[key] == reference[key], f"{key} differs between two runs of the same config and seed"
    # and the registered models of the two stores predict new patients identically
    new = cohort(seed=7)
    preds = []
    for store in (solo, concurrent[0]):
        use_store(monkeypatch, store)
        preds.append(bm.predict(new.copy(), model_uri=f"models:/{MODEL_NAME}@champion")["p_non_response"].to_numpy())
    np.testing.assert_array_equal(preds[0], preds[1])


# --- leakage guards -------------------------------------------------------------------------------------------


def test_each_patient_is_held_out_exactly_once_per_repeat_in_logged_folds(solo, tmp_path):
    """Run level: logged per-fold predictions hold each patient once per repeat, in one fold for every model."""
    import anndata as ad

    client = client_for(solo)
    (parent,) = parents(client)
    oof = pd.read_csv(client.download_artifacts(parent.info.run_id, "cv_predictions_by_fold.csv", str(tmp_path)))
    patients = set(ad.read_h5ad(solo / "cohort.h5ad").obs[K.PATIENT])
    assert len(patients) == 12
    assert set(oof["model"]) >= {"logreg", "random_forest", "lightgbm", "majority"}
    for (model, _), d in oof.groupby(["model", "repeat"]):
        assert d[K.PATIENT].is_unique, f"{model}: a patient is in two folds of one repeat"
        assert set(d[K.PATIENT]) == patients
    assert set(oof["repeat"]) == {0, 1}
    assert (oof.groupby([K.PATIENT, "repeat"])["fold"].nunique() == 1).all(), (
        "models were not compared on the same folds"
    )


@pytest.fixture(scope="module")
def sim_features():
    """Patient x feature table of a 40-patient simulated cohort (planted effects) and its true labels."""
    from biomarkers.cohort import prepare_cohort

    cfg = ExperimentConfig.model_validate({**CONFIG, "data": {}})
    adata = bm.simulate_cohort(n_patients=40, cells_per_patient=60, n_genes=400, seed=1)
    c = prepare_cohort(cfg, adata=adata)
    return c.features, c.labels


@pytest.mark.parametrize("shuffle_seed", [0, 1, 2])
def test_label_shuffled_cohort_gives_chance_auroc(sim_features, shuffle_seed):
    """Features from cells, labels permuted across patients: no model may do better than chance.

    Single-feature baselines can fall *below* chance on null data (refitting the feature's direction without the
    held-out patient biases CV AUROC downwards), never above: their CI must not exclude 0.5 from above.
    """
    X, y = sim_features
    specs = [{"kind": "logreg"}, {"kind": "random_forest", "params": {"n_estimators": 50}}]
    kwargs = {"model_specs": specs, "cv_spec": {"n_splits": 4, "n_repeats": 3}, "n_boot": 500, "n_permutations": 0}
    if shuffle_seed == 0:
        real = evaluate_models(X, y, **kwargs)
        assert real.metrics.loc[real.best_model, "auroc_ci_low"] > 0.5, "control: the planted effect is found"
    shuffled = pd.Series(np.random.default_rng(shuffle_seed).permutation(y.to_numpy()), index=y.index)
    null = evaluate_models(X, shuffled, **kwargs)
    for name, row in null.metrics.iterrows():
        assert row["auroc_ci_low"] <= 0.5, f"{name}: AUROC {row['auroc']:.2f} above chance on shuffled labels"
        if row["kind"] == "model":
            assert row["auroc_ci_low"] < 0.5 < row["auroc_ci_high"], f"{name}: AUROC {row['auroc']:.2f}"


class SiteTargetEncoder(TransformerMixin, BaseEstimator):
    """Replace column ``site`` by the mean label of its site among the rows it was fitted on."""

    def fit(self, X, y):
        self.means_ = pd.Series(np.asarray(y, dtype=float), index=X.index).groupby(X["site"].to_numpy()).mean()
        self.prior_ = float(np.mean(y))
        return self

    def transform(self, X):
        return X.assign(site=X["site"].map(self.means_).fillna(self.prior_).astype(float))


def test_planted_target_leak_is_not_exploited_inside_folds():
    """A site-level target encoding is informative only if computed with the held-out patients' own labels.

    Computed on all patients before CV (the leak), it gives a high CV AUROC on labels that are pure noise;
    fitted inside each training fold, as cross_validate_model does for any pipeline, it gives chance.
    """
    rng = np.random.default_rng(5)
    n = 40
    ids = [f"P{i:02d}" for i in range(n)]
    y = pd.Series(rng.permutation(np.arange(n) % 2), index=ids)
    X = pd.DataFrame({"site": np.repeat(np.arange(n // 2), 2), "noise": rng.normal(size=n)}, index=ids)
    folds = patient_folds(y, n_splits=5, n_repeats=3, seed=0)

    def cv_auroc(estimator, data):
        s = summarize_oof(cross_validate_model(estimator, data, y, folds=folds))
        return evaluate_predictions(s["y_true"], s["p"], n_boot=500, seed=0)

    leaky = X.assign(site=SiteTargetEncoder().fit(X, y).transform(X)["site"])
    outside = cv_auroc(make_pipeline(StandardScaler(), LogisticRegression()), leaky)
    assert outside["auroc_ci_low"] > 0.5, "control: the planted leak is exploitable when computed outside the folds"
    inside = cv_auroc(make_pipeline(SiteTargetEncoder(), StandardScaler(), LogisticRegression()), X)
    assert inside["auroc_ci_low"] < 0.5 < inside["auroc_ci_high"]
    assert inside["auroc"] < outside["auroc"] - 0.2


def test_imputation_selection_scaling_and_tuning_are_fitted_on_training_folds_only(monkeypatch):
    """Spy on every fit: each saw exactly the outer training patients (tuning: a subset of them), never a test patient.

    Every feature column encodes its row number (row + noise < 0.5), so the rows each fit saw can be read back
    from its input, also after scaling (undone with the scaler fitted just before).
    """
    rng = np.random.default_rng(0)
    n = 30
    ids = [f"P{i:02d}" for i in range(n)]
    X = pd.DataFrame(
        np.arange(n)[:, None] + rng.uniform(-0.3, 0.3, size=(n, 6)), index=ids, columns=[f"f{j}" for j in range(6)]
    )
    X.iloc[::7, 2] = np.nan  # something to impute (column 0 stays complete: it identifies the rows)
    y = pd.Series(rng.permutation(np.arange(n) % 2), index=ids)
    seen: list[tuple[str, frozenset[int]]] = []
    scaler: list[StandardScaler] = []

    def rows(values, *, scaled: bool) -> frozenset[int]:
        col = np.asarray(values, dtype=float)[:, 0]
        if scaled:
            col = col * scaler[-1].scale_[0] + scaler[-1].mean_[0]
        return frozenset(np.rint(col).astype(int).tolist())

    def spy(cls, *, scaled: bool = False):
        original = cls.fit

        def fit(self, X_, y_=None, **kw):
            seen.append((cls.__name__, rows(X_, scaled=scaled)))
            out = original(self, X_, y_, **kw)
            if isinstance(self, StandardScaler):
                scaler.append(self)
            return out

        monkeypatch.setattr(cls, "fit", fit)

    for cls in (SimpleImputer, SelectKBest, StandardScaler):
        spy(cls)
    spy(LogisticRegression, scaled=True)

    res = evaluate_models(
        X, y, model_specs=[{"kind": "logreg", "select_k": 3, "tune": True}], cv_spec={"n_splits": 5, "n_repeats": 2},
        baselines=[], n_boot=100, n_permutations=0, n_workers=1,  # the spies see fits made in this process
        nested=False,  # the nested CV's inner fits are checked below
    )  # fmt: skip

    jobs = [(set(tr), set(te)) for rep in res.folds for tr, te in rep]
    assert len(jobs) == 10
    for name in ("SimpleImputer", "SelectKBest", "StandardScaler"):
        assert [s for n_, s in seen if n_ == name] == [train for train, _ in jobs], f"{name} was fitted on other rows"
    # logistic regressions: the inner tuning fits and the refit, grouped by the outer fold they follow
    outer = -1
    per_job: list[list[frozenset[int]]] = [[] for _ in jobs]
    for name, s in seen:
        if name == "StandardScaler":
            outer += 1
        elif name == "LogisticRegression":
            per_job[outer].append(s)
    for (train, test), fits in zip(jobs, per_job, strict=True):
        assert len(fits) > 1, "C was tuned by inner CV"
        assert all(s <= train and not s & test for s in fits), "a tuning fit saw a held-out patient"
        assert any(s < train for s in fits), "inner folds are proper subsets of the training fold"
        assert fits[-1] == train, "the tuned model is refitted on the whole training fold"

    # Nested CV: every fit (outer and inner, selection and tuning included) sees rows of one outer training fold.
    seen.clear()
    scaler.clear()
    res = evaluate_models(
        X, y, model_specs=[{"kind": "logreg", "select_k": 3, "tune": True}], cv_spec={"n_splits": 5, "n_repeats": 2},
        baselines=[], n_boot=100, n_permutations=0, n_workers=1,
    )  # fmt: skip
    trains = [train for train, _ in jobs]
    imputer_fits = [s for n_, s in seen if n_ == "SimpleImputer"]
    assert len(imputer_fits) > len(jobs), "the inner CV fitted its own pipelines"
    for s in imputer_fits:
        assert any(s <= train for train in trains), "a nested fit saw a patient outside every outer training fold"


# --- security -------------------------------------------------------------------------------------------------


def test_ui_binds_to_localhost_unless_asked(monkeypatch, tmp_path):
    from biomarkers.cli import app

    use_store(monkeypatch, tmp_path)
    import mlflow

    # `ui` opens an existing store only: create it (by URI: an earlier test may have set mlflow's global one)
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").search_experiments()
    calls = []

    class _Started:  # what start_ui gets back from launching `mlflow ui` (not started here)
        page, backend_store_uri = "http://127.0.0.1", "store"

        def wait(self) -> int:
            return 0

    def launch(cmd, **kwargs):
        calls.append(cmd)
        return _Started()

    monkeypatch.setattr("biomarkers.tracking._store._launch", launch)
    runner = CliRunner()
    assert runner.invoke(app, ["ui"]).exit_code == 0
    assert runner.invoke(app, ["ui", "--host", "0.0.0.0", "--port", "5001"]).exit_code == 0  # asked for
    default, asked = calls
    assert default[default.index("--host") + 1] == "127.0.0.1"
    assert default[default.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert asked[asked.index("--host") + 1] == "0.0.0.0"
    assert asked[asked.index("--port") + 1] == "5001"


def test_models_load_only_through_mlflow_from_the_configured_store(concurrent, solo, monkeypatch, tmp_path):
    """A URI valid in another store is not found; a file path, even of a real MLflow model folder, is refused."""
    other = concurrent[0]  # holds versions 1 and 2; the configured store (solo) only version 1
    other_run = parents(client_for(other))[0].info.run_id
    model_dir = next((solo / "mlruns").rglob("MLmodel")).parent
    use_store(monkeypatch, solo)
    cells = tmp_path / "new.h5ad"
    cohort(seed=3).write_h5ad(cells)
    for uri in (f"runs:/{other_run}/model", f"models:/{MODEL_NAME}/2", "models:/not-registered@champion"):
        with pytest.raises(ModelNotFoundError, match="not found"):
            bm.predict(cells, model_uri=uri, out=tmp_path / "p.csv")
    for uri in (str(model_dir), model_dir.as_uri(), str(model_dir / "python_model.pkl")):
        with pytest.raises(ModelNotFoundError, match="must be models:/"):
            bm.predict(cells, model_uri=uri, out=tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


def test_user_data_is_read_without_unpickling(monkeypatch, tmp_path):
    """h5ad and CSV go through h5py/anndata and pandas' CSV parser; pickle files are refused unopened."""
    small = cohort()
    small.write_h5ad(tmp_path / "c.h5ad")
    bulk = "sample_id,patient_id,response,IL6,OSM\ns1,p1,responder,5.0,3.0\ns2,p2,non_responder,7.0,4.0\n"
    (tmp_path / "b.csv").write_text(bulk)

    def forbidden(*args, **kwargs):
        msg = "user data must not be unpickled"
        raise AssertionError(msg)

    for target in ("pickle.load", "pickle.loads", "pandas.read_pickle", "numpy.load"):
        monkeypatch.setattr(target, forbidden)
    assert bm.read_cohort(tmp_path / "c.h5ad").n_obs == small.n_obs
    assert bm.read_cohort(tmp_path / "b.csv").n_obs == 2
    # A pickle whose loading would create a file: refused by suffix, and not unpickled under another format either.
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Touch(str(marker)))
    (tmp_path / "cohort.pkl").write_bytes(payload)
    with pytest.raises(DataSchemaError, match="never read"):
        bm.read_cohort(tmp_path / "cohort.pkl")
    (tmp_path / "cohort.h5ad").write_bytes(payload)
    with pytest.raises(DataSchemaError, match="Cannot read"):
        bm.read_cohort(tmp_path / "cohort.h5ad")
    assert not marker.exists()


class _Touch:
    """Unpickling this creates a file: a stand-in for arbitrary code in a malicious pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
