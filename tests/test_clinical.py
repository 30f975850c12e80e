"""Clinical covariates (``features.clinical``): encoding, sources (obs, data.labels, feature table), predict."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

import biomarkers as bm
from biomarkers._errors import DataSchemaError
from biomarkers.cohort import prepare_cohort
from biomarkers.features import clinical_spec, encode_clinical, patient_values

if TYPE_CHECKING:
    from pathlib import Path

SMALL = """
models: [{kind: logreg}]
baselines: {majority: true, single_features: []}
cv: {n_splits: 3, n_repeats: 1}
evaluation: {n_boot: 100, n_permutations: 0}
plots: {umap: false}
"""


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **env}, timeout=600, check=False,
    )  # fmt: skip


# -- encoding ----------------------------------------------------------------------------------------------------------
def test_one_hot_keeps_every_level_and_missing_is_nan_in_all_dummies(caplog):
    raw = pd.DataFrame({"age": [30, np.nan, 41.5, 50], "sex": ["F", "M", None, "F"]}, index=list("abcd"))
    spec = clinical_spec(raw, sources={"sex": "clinical_table"})
    assert spec["columns"] == [
        {"name": "age", "type": "numeric", "levels": [], "source": "input"},
        {"name": "sex", "type": "categorical", "levels": ["F", "M"], "source": "clinical_table"},
    ]
    enc = encode_clinical(raw, spec)
    assert list(enc.columns) == ["clin__age", "clin__sex__F", "clin__sex__M"]
    assert enc["clin__age"].tolist()[0] == 30
    assert np.isnan(enc.loc["b", "clin__age"])
    assert enc.loc["a", ["clin__sex__F", "clin__sex__M"]].tolist() == [1.0, 0.0]
    assert enc.loc["c", ["clin__sex__F", "clin__sex__M"]].isna().all()  # imputed later, inside the CV folds
    # A level unseen in training: all-zero dummies and a warning line.
    with caplog.at_level(logging.WARNING, logger="biomarkers"):
        new = encode_clinical(pd.DataFrame({"age": ["33"], "sex": ["X"]}, index=["e"]), spec, where="new.csv")
    assert new.loc["e"].tolist() == [33.0, 0.0, 0.0]
    assert "'X'" in caplog.text
    assert "not seen in training" in caplog.text


def test_numeric_column_with_text_at_predict_is_refused():
    spec = clinical_spec(pd.DataFrame({"age": [1.0, 2.0]}), sources={})
    with pytest.raises(DataSchemaError, match="'age' was numeric in training"):
        encode_clinical(pd.DataFrame({"age": ["old"]}), spec)


def test_one_value_per_patient_or_a_clear_error():
    obs = pd.DataFrame({"patient_id": ["p1", "p1", "p2"], "severity": [2.0, np.nan, 3.0]})
    assert patient_values(obs, ["severity"], where="x").to_dict()["severity"] == {"p1": 2.0, "p2": 3.0}
    obs.loc[1, "severity"] = 5.0
    with pytest.raises(DataSchemaError, match="'severity' has more than one value for patient 'p1'"):
        patient_values(obs, ["severity"], where="x")


# -- single cells: obs in memory, streamed, and the clinical table --------------------------------------------------
def _cells_config(tmp_path: Path, *, data: str = "", features: str = "clinical: [severity]") -> object:
    cfg = tmp_path / "sc.yaml"
    cfg.write_text(
        f"name: sc-clin\ndata: {{simulate: {{n_patients: 12, cells_per_patient: 150, n_genes: 600}}{data}}}\n"
        f"features: {{{features}}}\n{SMALL}"
    )
    return bm.load_config(cfg)


def _expected_severity(adata) -> pd.Series:
    return adata.obs.groupby("patient_id", observed=True)["severity"].first().rename(index=str)


def test_cells_take_severity_from_obs_in_memory_and_streamed(tmp_path, small_cohort):
    adata = small_cohort
    site = {p: "A" if i % 2 else "B" for i, p in enumerate(adata.obs["patient_id"].cat.categories)}
    adata.obs["site"] = adata.obs["patient_id"].map(site).astype(str)
    cfg = _cells_config(tmp_path, data=", cohort_col: site")
    c = prepare_cohort(cfg, adata=adata.copy())
    expected = _expected_severity(adata)
    pd.testing.assert_series_equal(c.features["clin__severity"], expected.loc[c.features.index], check_names=False)
    assert c.cohorts.to_dict() == {p: site[p] for p in c.features.index}
    assert c.model_kwargs["clinical"]["columns"][0] == {"name": "severity", "type": "numeric", "levels": [], "source": "input"}
    # The streamed file: the sample table has no severity, so it is read from the file's obs (no counts).
    adata.write_h5ad(tmp_path / "cells.h5ad")
    cfg = _cells_config(tmp_path, data=f", path: {tmp_path / 'cells.h5ad'}, cohort_col: site")
    s = prepare_cohort(cfg)
    pd.testing.assert_frame_equal(s.features, c.features)
    assert s.cohorts.to_dict() == c.cohorts.to_dict()


def test_cells_take_covariates_from_the_clinical_table(tmp_path, small_cohort):
    adata = small_cohort
    patients = list(adata.obs["patient_id"].cat.categories)
    pd.DataFrame({"patient_id": patients, "sex": ["F", "M", "F"] * 4}).to_csv(tmp_path / "clin.csv", index=False)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    cfg = _cells_config(tmp_path, data=f", path: {tmp_path / 'cells.h5ad'}, labels: {tmp_path / 'clin.csv'}",
                        features="clinical: [severity, sex]")  # fmt: skip
    c = prepare_cohort(cfg)
    sources = {col["name"]: col["source"] for col in c.model_kwargs["clinical"]["columns"]}
    assert sources == {"severity": "input", "sex": "clinical_table"}
    sex = dict(zip(patients, ["F", "M", "F"] * 4, strict=True))
    assert (c.features["clin__sex__F"] == [float(sex[p] == "F") for p in c.features.index]).all()


def test_unknown_clinical_column_and_conflicting_values_are_refused(tmp_path, small_cohort):
    cfg = _cells_config(tmp_path, features="clinical: [severity, agee]")
    with pytest.raises(DataSchemaError, match=r"features.clinical column\(s\) 'agee' not found"):
        prepare_cohort(cfg, adata=small_cohort.copy())
    adata = small_cohort
    first = adata.obs_names[0]
    adata.obs.loc[first, "severity"] = adata.obs["severity"].iloc[0] + 1.0
    with pytest.raises(DataSchemaError, match="'severity' has more than one value for patient"):
        prepare_cohort(_cells_config(tmp_path), adata=adata)


# -- a model whose covariates came from data.labels: predict needs --clinical ---------------------------------------
def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return pd.DataFrame({
        "subject": [f"S{seed}_{i:03d}" for i in range(n)],
        "outcome": np.where(y == 1, "NR", "R"),
        "score_a": y * 2.0 + rng.normal(size=n),
        "score_b": rng.normal(size=n),
        "severity": y + rng.normal(size=n),
        "sex": rng.choice(["F", "M"], size=n),
    })  # fmt: skip


def test_model_needing_clinical_values_refuses_without_them_and_uses_them_with_clinical(tmp_path, mlflow_store):
    train = _table(30, 0)
    # severity is a column of the feature table itself; sex comes from the clinical table (data.labels).
    train.drop(columns=["sex"]).to_csv(tmp_path / "train.csv", index=False)
    train[["subject", "sex"]].to_csv(tmp_path / "clin.csv", index=False)
    (tmp_path / "ft.yaml").write_text(
        "name: ft-clin\n"
        "data: {kind: features, path: train.csv, patient_col: subject, label_col: outcome, positive_label: NR, "
        "negative_label: R, labels: clin.csv}\n"
        f"features: {{clinical: [severity, sex]}}\n{SMALL}"
    )
    res = bm.run_experiment(bm.load_config(tmp_path / "ft.yaml"))
    c = res.cohort
    assert list(c.features.columns) == ["score_a", "score_b", "clin__severity", "clin__sex__F", "clin__sex__M"]
    uri = f"runs:/{res.child_runs['logreg']}/model"
    # Parity: the training table (and its clinical table) through predict gives the training features exactly.
    again = bm.predict(tmp_path / "train.csv", model_uri=uri, clinical=tmp_path / "clin.csv").set_index("subject")
    pd.testing.assert_frame_equal(again[c.features.columns], c.features, check_names=False)

    new = _table(6, 1)
    new.drop(columns=["outcome", "sex"]).to_csv(tmp_path / "new.csv", index=False)
    env = {"MLFLOW_TRACKING_URI": mlflow_store, "BIOMARKERS_ARTIFACT_ROOT": os.environ["BIOMARKERS_ARTIFACT_ROOT"]}
    out = tmp_path / "preds.csv"
    refused = cli("predict", "new.csv", "--model", uri, "--out", str(out), cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stderr
    # MLflow's own artifact-download progress aside, the refusal is one line and no traceback.
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip() and not ln.startswith("Downloading artifacts")]
    assert "Traceback" not in refused.stderr
    assert len(lines) == 1, refused.stderr
    assert "'sex' (from the data.labels table)" in lines[0]
    assert "--clinical" in lines[0]
    assert not out.exists()
    # With --clinical (one patient has a level never seen in training: all-zero dummies and a warning line).
    new[["subject", "sex"]].assign(sex=["X", *new["sex"][1:]]).to_csv(tmp_path / "new_clin.csv", index=False)
    ok = cli("predict", "new.csv", "--model", uri, "--out", str(out), "--clinical", "new_clin.csv", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "not seen in training" in ok.stderr
    preds = pd.read_csv(out).set_index("subject")
    assert preds.loc["S1_000", ["clin__sex__F", "clin__sex__M"]].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(preds["clin__severity"], new.set_index("subject")["severity"])
