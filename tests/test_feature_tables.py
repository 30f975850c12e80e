"""``data.kind: features``: patient x feature tables as a cohort, per-cohort standardisation, predict on new tables."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

import biomarkers as bm
from biomarkers._errors import DataSchemaError
from biomarkers.io import read_feature_table

if TYPE_CHECKING:
    from pathlib import Path

FAST = """
models: [{kind: logreg}]
baselines: {majority: true, single_features: []}
cv: {n_splits: 3, n_repeats: 1}
evaluation: {n_boot: 100, n_permutations: 0}
plots: {umap: false}
"""


def make_table(n: int = 30, *, seed: int = 0, sites: list[str] | None = None, label: bool = True) -> pd.DataFrame:
    """Patients with a planted signal in ``score_a`` (noise in ``score_b``); each site shifts and scales the scores."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    df = pd.DataFrame({
        "subject": [f"S{seed}_{i:03d}" for i in range(n)],
        "outcome": np.where(y == 1, "NR", "R"),
        "score_a": y * 2.0 + rng.normal(size=n),
        "score_b": rng.normal(size=n),
    })  # fmt: skip
    if sites:
        # Sites alternate in pairs, so each holds both classes; site k multiplies by (1 + k) and adds 10 k.
        df["site"] = [sites[(i // 2) % len(sites)] for i in range(n)]
        k = df["site"].map({s: i for i, s in enumerate(sites)})
        for c in ("score_a", "score_b"):
            df[c] = df[c] * (1 + k) + 10 * k
    return df if label else df.drop(columns=["outcome"])


def write_config(tmp_path: Path, table: str, *, extra_data: str = "", features: str = "", name: str = "ft") -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{kind: features, path: {table}, patient_col: subject, label_col: outcome, positive_label: NR, "
        f"negative_label: R{extra_data}}}\n"
        f"{features}\n{FAST}"
    )
    return cfg


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **env}, timeout=600, check=False,
    )  # fmt: skip


def store_env(tmp_path: Path) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "BIOMARKERS_ARTIFACT_ROOT": str(tmp_path / "mlruns")}


def no_runs(tmp_path: Path) -> bool:
    """Whether the store under tmp_path holds no run (a refusal before the store is touched leaves no database)."""
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return True
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    return all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


# -- the reader ------------------------------------------------------------------------------------------------------
def test_reader_splits_features_from_metadata_and_maps_labels(tmp_path):
    t = make_table(8, sites=["A", "B"])
    t["sex"] = ["F", "M"] * 4
    t.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    ft = read_feature_table(tmp_path / "t.tsv", patient_col="subject", label_col="outcome", positive_label="NR",
                            negative_label="R", cohort_col="site", clinical=["sex"])  # fmt: skip
    assert list(ft.features.columns) == ["score_a", "score_b"]
    assert ft.features.index.tolist() == t["subject"].tolist()
    assert all(pd.api.types.is_float_dtype(d) for d in ft.features.dtypes)
    assert set(ft.meta.columns) == {"response", "site", "sex"}
    assert ft.meta["response"].tolist() == ["responder", "non_responder"] * 4


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.assign(site=["A", "B"] * 5), r"Non-numeric feature column\(s\) 'site'.*features.clinical"),
        (lambda t: t.assign(subject=["x", "x", *t["subject"][2:]]), r"appear more than once.*e\.g\. x"),
        (lambda t: t[["subject", "outcome"]], "no feature column"),
        (lambda t: t.rename(columns={"score_b": "score [b]"}), r"outside \[A-Za-z0-9_.-\]"),
    ],
    ids=["non_numeric", "duplicate_ids", "no_features", "unsafe_name"],
)
def test_reader_refuses_bad_tables_with_one_line(tmp_path, edit, match):
    edit(make_table(10)).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataSchemaError, match=match) as err:
        read_feature_table(tmp_path / "t.csv", patient_col="subject", label_col="outcome", positive_label="NR", negative_label="R")
    assert "\n" not in str(err.value)


def test_labels_and_covariates_may_come_from_a_clinical_table(tmp_path):
    t = make_table(10)
    t.drop(columns=["outcome"]).to_csv(tmp_path / "t.csv", index=False)
    t[["subject", "outcome"]].assign(age=np.arange(10) + 20).to_csv(tmp_path / "clin.csv", index=False)
    ft = read_feature_table(tmp_path / "t.csv", patient_col="subject", label_col="outcome", positive_label="NR",
                            negative_label="R", clinical=["age"], labels_table=tmp_path / "clin.csv")  # fmt: skip
    assert list(ft.features.columns) == ["score_a", "score_b"]
    assert ft.meta["age"].astype(int).tolist() == list(range(20, 30))
    assert ft.meta["response"].notna().all()


# -- end to end --------------------------------------------------------------------------------------------------------
def test_features_kind_end_to_end_then_predict_a_new_table(tmp_path, mlflow_store):
    make_table(30).to_csv(tmp_path / "train.csv", index=False)
    cfg = bm.load_config(write_config(tmp_path, "train.csv"))
    bm.check_experiment(cfg)  # the dry run reads the table too
    res = bm.run_experiment(cfg)
    c = res.cohort
    assert c.kind == "features"
    assert c.pipeline is None
    assert c.bulk is None
    assert c.cohorts is None
    assert list(c.features.columns) == ["score_a", "score_b"]
    assert c.coverage.empty
    assert "n_found" in c.coverage.columns
    import mlflow

    child = mlflow.MlflowClient().get_run(res.child_runs["logreg"])
    assert child.data.metrics["cv_auroc"] > 0.8  # the planted signal
    new = make_table(12, seed=1, label=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    out = bm.predict(tmp_path / "new.csv", model_uri=f"runs:/{res.child_runs['logreg']}/model", out=tmp_path / "p.csv")
    assert out["subject"].tolist() == new["subject"].tolist()
    assert out["p_non_response"].between(0, 1).all()
    assert "n_cells" not in out.columns  # a feature-table model has no cells
    # Parity: the training table through predict gives the training features exactly.
    again = bm.predict(tmp_path / "train.csv", model_uri=f"runs:/{res.child_runs['logreg']}/model").set_index("subject")
    pd.testing.assert_frame_equal(again[c.features.columns], c.features, check_names=False)


def test_per_cohort_standardisation_is_stored_and_reapplied(tmp_path, mlflow_store):
    make_table(30, sites=["A", "B", "C"]).to_csv(tmp_path / "train.csv", index=False)
    cfg = bm.load_config(write_config(tmp_path, "train.csv", extra_data=", cohort_col: site",
                                      features="features: {standardize: per_cohort}", name="ftz"))  # fmt: skip
    res = bm.run_experiment(cfg)
    c = res.cohort
    assert c.cohorts.tolist() == [["A", "B", "C"][(i // 2) % 3] for i in range(30)]
    # Within each cohort: mean 0, population SD 1 (ddof 0, the package's one ddof).
    g = c.features.groupby(c.cohorts.to_numpy())
    np.testing.assert_allclose(g.mean().to_numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(g.std(ddof=0).to_numpy(), 1, atol=1e-12)
    std = c.model_kwargs["standardize"]
    assert std == {"method": "per_cohort", "min_cohort": 3, "ddof": 0, "cohort_col": "site", "columns": ["score_a", "score_b"]}
    uri = f"runs:/{res.child_runs['logreg']}/model"
    again = bm.predict(tmp_path / "train.csv", model_uri=uri).set_index("subject")
    pd.testing.assert_frame_equal(again[c.features.columns], c.features, check_names=False)
    # A new cohort on another scale predicts like the same patients on the training scale.
    new = make_table(12, seed=1, sites=["D"], label=False)
    shifted = new.assign(score_a=new["score_a"] * 5 + 100, score_b=new["score_b"] * 5 + 100)
    new.to_csv(tmp_path / "new.csv", index=False)
    shifted.drop(columns=["site"]).to_csv(tmp_path / "shifted.csv", index=False)  # no cohort column: one cohort
    p1 = bm.predict(tmp_path / "new.csv", model_uri=uri)
    p2 = bm.predict(tmp_path / "shifted.csv", model_uri=uri)
    np.testing.assert_allclose(p1["p_non_response"], p2["p_non_response"], atol=1e-9)
    # Too small a cohort is refused with the minimum stated, and nothing is written.
    new.iloc[:2].to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(DataSchemaError, match="at least 3 rows per cohort"):
        bm.predict(tmp_path / "two.csv", model_uri=uri, out=tmp_path / "never.csv")
    assert not (tmp_path / "never.csv").exists()


@pytest.mark.parametrize(
    ("edit", "features", "match"),
    [
        (lambda t: t.assign(sex=["F", "M"] * 5), "", "Non-numeric feature column(s) 'sex'"),
        (lambda t: t.assign(subject=["x", "x", *t["subject"][2:]]), "", "appear more than once"),
        (lambda t: t, "features: {clinical: [agee]}", "features.clinical column(s) 'agee' not found"),
    ],
    ids=["non_numeric", "duplicate_ids", "unknown_clinical"],
)
def test_cli_run_refuses_bad_tables_with_one_line_and_leaves_no_run(tmp_path, edit, features, match):
    edit(make_table(10)).to_csv(tmp_path / "t.csv", index=False)
    cfg = write_config(tmp_path, "t.csv", features=features)
    res = cli("run", str(cfg), cwd=tmp_path, env=store_env(tmp_path))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert match in lines[0]
    assert no_runs(tmp_path)
