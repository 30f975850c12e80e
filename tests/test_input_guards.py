"""Former silent no-ops and unclear failures: each now raises one clear line, or works.

The CLI path (one ``error:`` line, exit 2, nothing left behind) is exercised by ``test_bad_input.py``; these
tests are in process.
"""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import yaml

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers._errors import BiomarkersError, DataSchemaError, MissingDependencyError
from biomarkers.models import cross_validate_model, evaluate_models

if TYPE_CHECKING:
    from pathlib import Path


def _toy(n: int = 40, *, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    y = pd.Series(np.arange(n) % 2, index=ids)
    X = pd.DataFrame(rng.normal(size=(n, 3)), index=ids, columns=["aqp9_macrophage_fraction", "b", "c"])
    X["aqp9_macrophage_fraction"] += 0.8 * y
    return X, y


# --- 1. misspelled baselines.single_features ----------------------------------------------------------------


def _stub_run(monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> dict:
    """Call ``_evaluate_and_log`` on a toy cohort with the store and evaluate_models stubbed; return the kwargs."""
    import biomarkers.models as models
    from biomarkers.tracking import _run

    seen: dict = {}

    def no_store(name: str) -> str:
        seen["store_touched"] = True
        return "0"

    class StopError(Exception):
        pass

    def fake_evaluate(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise StopError

    monkeypatch.setattr(_run, "_experiment_id", no_store)
    monkeypatch.setattr(models, "evaluate_models", fake_evaluate)
    cfg = bm.load_config("experiments/anti_tnf_default.yaml", overrides=["cv.n_splits=2", *overrides])
    X, y = _toy(12)
    cohort = SimpleNamespace(features=X, labels=y, groups=None)
    with pytest.raises((StopError, DataSchemaError)) as info:
        _run._evaluate_and_log(cfg, cohort, umap=None, t0=0.0)
    seen["error"] = info.value
    return seen


def test_misspelled_single_feature_raises_before_the_store(monkeypatch):
    seen = _stub_run(monkeypatch, ["baselines.single_features=[aqp9_macrophage_fractoin]"])
    err = seen["error"]
    assert isinstance(err, DataSchemaError)
    msg = str(err)
    assert "'aqp9_macrophage_fractoin' is not a feature column" in msg
    assert "did you mean 'aqp9_macrophage_fraction'" in msg
    assert "available (3): aqp9_macrophage_fraction, b, c" in msg
    assert "\n" not in msg
    assert "store_touched" not in seen, "the MLflow store was touched before the baseline check"


def test_known_single_feature_and_absent_default_are_used_or_logged(monkeypatch, caplog):
    caplog.set_level("INFO", logger="biomarkers")
    seen = _stub_run(monkeypatch, ["baselines.single_features=[b, pb__MNP__OSM]"])
    assert seen["baselines"] == ["majority", "single_feature:b"]
    assert "'pb__MNP__OSM' is not among the 3 features; skipped" in caplog.text


# --- 2. evaluation.ci ---------------------------------------------------------------------------------------


def test_ci_level_sets_the_interval_width():
    X, y = _toy()
    kw = {"model_specs": [{"kind": "logreg"}], "cv_spec": {"n_splits": 3, "n_repeats": 2}, "n_boot": 400,
          "n_permutations": 0, "baselines": ["majority"]}  # fmt: skip
    wide = evaluate_models(X, y, ci=0.95, **kw)
    narrow = evaluate_models(X, y, ci=0.8, **kw)
    assert (wide.ci, narrow.ci) == (0.95, 0.8)
    w, n = wide.metrics.loc["logreg"], narrow.metrics.loc["logreg"]
    assert w["auroc"] == n["auroc"]
    assert n["auroc_ci_high"] - n["auroc_ci_low"] < w["auroc_ci_high"] - w["auroc_ci_low"]
    assert w["auroc_ci_low"] <= n["auroc_ci_low"] <= n["auroc_ci_high"] <= w["auroc_ci_high"]


def test_run_experiment_passes_evaluation_ci(monkeypatch):
    seen = _stub_run(monkeypatch, ["evaluation.ci=0.9", "baselines.single_features=[]"])
    assert seen["ci"] == 0.9


def test_summary_title_shows_the_ci_level(monkeypatch, capsys):
    from biomarkers.cli._run import _print_summary

    X, y = _toy()
    ev = evaluate_models(X, y, model_specs=[{"kind": "logreg"}], cv_spec={"n_splits": 3, "n_repeats": 1}, n_boot=100,
                         n_permutations=0, baselines=["majority"], ci=0.9)  # fmt: skip
    res = SimpleNamespace(evaluation=ev, cohort=SimpleNamespace(features=X, groups=None, kind="single_cell"),
                          experiment_name="exp", parent_run_id="r", model_uri=None, seconds=1.0, timings={})  # fmt: skip
    _print_summary(res)
    out = capsys.readouterr().out
    assert "90% bootstrap CIs" in out
    assert "95%" not in out


# --- 3. discover with raw positive_label / label_map ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"label_col": "resp_raw", "positive_label": "NR", "negative_label": "R"},
        {"label_col": "resp_raw", "label_map": {"NR": "non_responder", "R": "responder"}},
    ],
    ids=["positive_label", "label_map"],
)
def test_discover_from_config_labels_every_patient(tmp_path, monkeypatch, data):
    from biomarkers.discovery import _entry, patient_labels

    ad = bm.simulate_cohort(n_patients=8, cells_per_patient=150, n_genes=800, seed=0)
    ad.obs["resp_raw"] = ad.obs[K.RESPONSE].astype(str).map({K.NON_RESPONDER: "NR", K.RESPONDER: "R"})
    ad.obs = ad.obs.drop(columns=[K.RESPONSE])
    ad.write_h5ad(tmp_path / "nr.h5ad")
    # In memory: the fake discover below reads the processed cells' labels (streaming hands it pseudobulk sums).
    cfg = {"name": "x", "data": {"path": "nr.h5ad", **data}, "compute": {"stream": False}}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(cfg))
    seen = {}
    monkeypatch.setattr(_entry, "discover", lambda cells, **kw: seen.update(cells=cells, **kw))

    _entry.run_discovery(tmp_path / "x.yaml", out_dir=tmp_path / "out", method="ttest", track=False)

    meta = seen["cells"].obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].first().astype(str).to_frame()
    labels = patient_labels(meta, positive=seen["positive"], negative=seen["negative"])
    assert len(labels) == 8
    assert labels.sum() == (ad.obs.groupby(K.PATIENT, observed=True)["resp_raw"].first() == "NR").sum() > 0


# --- 4. missing optional dependencies --------------------------------------------------------------------------


def test_missing_pydeseq2_names_the_extra(monkeypatch, tmp_path):
    from biomarkers.discovery import run_discovery
    from biomarkers.discovery._inference import fast_inference

    monkeypatch.setitem(sys.modules, "pydeseq2", None)  # import pydeseq2 -> ImportError
    for call in (lambda: run_discovery(tmp_path / "x.yaml", method="deseq2"), fast_inference):
        with pytest.raises(MissingDependencyError) as info:
            call()
        assert isinstance(info.value, BiomarkersError)  # the CLI prints it as one line, exit 2
        assert "pip install 'biomarkers[discover]'" in str(info.value)
        assert "No module named 'pydeseq2'" in str(info.value)
        assert "\n" not in str(info.value)


def test_missing_distributed_names_the_extra(monkeypatch):
    from biomarkers.compute import dask_client

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'biomarkers\[dask\]'"), dask_client("local"):
        pass


# --- 5. allow_non_integer carries through to the features ------------------------------------------------------


def test_allow_non_integer_reads_and_builds_features(tmp_path):
    ad = bm.simulate_cohort(n_patients=4, cells_per_patient=100, n_genes=600, seed=0)
    ad.X = ad.X.astype(np.float32) * 1.01
    for key in list(ad.layers):
        del ad.layers[key]
    ad.write_h5ad(tmp_path / "nonint.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = bm.read_cohort(tmp_path / "nonint.h5ad", allow_non_integer=True)
    assert a.uns[K.BM]["io"]["params"]["allow_non_integer"] is True
    with pytest.warns(UserWarning, match=r"(not raw counts|No raw integer counts)"):
        feats = bm.build_features(a)
    assert len(feats) == 4
    a.uns[K.BM]["io"]["params"]["allow_non_integer"] = False  # not chosen: still refused
    with pytest.raises(DataSchemaError, match="non-integer"):
        bm.build_features(a)


# --- 6. a training fold with one class --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["majority", "logreg"])  # majority used to predict 0 silently; logreg crashed
def test_training_fold_without_positives_raises(kind):
    X, y = _toy(10)
    pos = np.flatnonzero(y.to_numpy() == 1)
    neg = np.flatnonzero(y.to_numpy() == 0)
    folds = [[(np.r_[neg[:3], pos], neg[3:]), (neg[3:], np.r_[neg[:3], pos])]]  # fold 1 trains on responders only
    with pytest.raises(DataSchemaError) as info:
        cross_validate_model({"kind": kind}, X, y, folds=folds)
    msg = str(info.value)
    assert "Training fold 1 of repeat 0 has 2 responder / 0 non-responder patients" in msg
    assert "Lower cv.n_splits" in msg


# --- 7. an h5ad with 0 cells (read_cohort is in test_bad_input.py) ---------------------------------------------


@pytest.mark.parametrize("how", ["backed", "iter_samples"])
def test_zero_cell_h5ad_raises_when_backed_or_streamed(tmp_path, how):
    from biomarkers.io import iter_samples

    ad = bm.simulate_cohort(n_patients=4, cells_per_patient=30, n_genes=300, seed=0)
    ad[:0].copy().write_h5ad(tmp_path / "zero.h5ad")
    read = {"backed": lambda p: bm.read_cohort(p, backed="r"), "iter_samples": lambda p: list(iter_samples(p))}[how]
    with pytest.raises(DataSchemaError, match=r"zero\.h5ad has 0 cells"):
        read(tmp_path / "zero.h5ad")


# --- 8. clinical columns of a bulk table ------------------------------------------------------------------------

GENES = ["IL6", "OSM", "TREM1", "AQP9", "SOCS3"]


def _bulk_csv(tmp_path: Path, **extra: list[float]) -> Path:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.uniform(2, 12, size=(6, len(GENES))), columns=GENES)
    for name, values in extra.items():
        table.insert(0, name, values)
    table.insert(0, "sample_id", [f"S{i}" for i in range(6)])
    path = tmp_path / "bulk.csv"
    table.to_csv(path, index=False)
    return path


def test_bulk_clinical_columns_stay_in_obs(tmp_path, caplog):
    caplog.set_level("INFO", logger="biomarkers")
    path = _bulk_csv(tmp_path, Age=[34, 51, 29, 62, 45, 38], CRP=[3.1, 12.0, 0.4, 25.5, 7.7, 1.2])
    adata = bm.read_cohort(path)
    assert list(adata.var_names) == GENES
    assert {"Age", "CRP"} <= set(adata.obs.columns)
    assert adata.obs["Age"].tolist() == [34, 51, 29, 62, 45, 38]
    assert "kept as sample metadata (obs), not genes: CRP (clinical name), Age (clinical name)" in caplog.text


def test_bulk_metadata_cols_argument(tmp_path):
    from biomarkers.io._bulk import read_bulk_table
    from biomarkers.io._obs import LabelSpec

    path = _bulk_csv(tmp_path, Dose_MG=[5.0, 10.0, 5.0, 10.0, 5.0, 10.0])
    kw = {"mapping": {}, "sample_sheet": None, "orientation": None, "labels": LabelSpec(), "gene_map": None,
          "params": {}}  # fmt: skip
    assert "Dose_MG" in read_bulk_table(path, **kw).var_names  # not a known clinical name: a gene
    adata = read_bulk_table(path, metadata_cols=["Dose_MG"], **kw)
    assert list(adata.var_names) == GENES
    assert "Dose_MG" in adata.obs.columns
    with pytest.raises(DataSchemaError, match=r"metadata_cols 'Dose_mg' not among .*; did you mean 'Dose_MG'\?"):
        read_bulk_table(path, metadata_cols=["Dose_mg"], **kw)
