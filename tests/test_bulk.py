"""Bulk cohorts: signature evaluation, bulk experiments, cross-cohort predict, and the single-cell -> bulk bridge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from sklearn.metrics import roc_auc_score

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers._errors import FeatureMismatchError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
GENES = ["ACTB", "CXCL8", "FCGR3B", "IL1B", "IL6", "ITGAM", "PTGS2", "S100A12", "TLR2", "TLR4", "TLR8"]
FAST = ["cv.n_repeats=1", "evaluation.n_boot=200", "evaluation.n_permutations=5", "models.1.params.n_estimators=50"]


@pytest.mark.realdata
def test_signatures_evaluate_on_gse12251_gives_auroc_and_ci_for_every_scorable_row(tmp_path):
    from typer.testing import CliRunner

    from biomarkers.cli import app

    path = shared_file("bulk", "GSE12251_uc_infliximab_11genes.csv")
    out = tmp_path / "eval.csv"
    res = CliRunner().invoke(app, ["signatures", "evaluate", str(path), "--genes", ",".join(GENES), "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    for col in ("signature", "n_genes", "n_found", "auroc", "auroc_ci_low", "auroc_ci_high", "p_value"):
        assert col in table.columns
    scorable = table[table["n_found"] >= 1]
    assert set(GENES) <= set(scorable["signature"])
    assert scorable[["auroc", "auroc_ci_low", "auroc_ci_high", "p_value"]].notna().all().all()
    assert (scorable["auroc_ci_low"] <= scorable["auroc"]).all()
    assert (scorable["auroc"] <= scorable["auroc_ci_high"]).all()


@pytest.fixture(scope="module")
def bulk_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bulk")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(tmp / "mlruns"))
        yield tmp


@pytest.mark.realdata
def test_bulk_experiment_registers_and_predicts_another_cohort(bulk_store):
    path = shared_file("bulk", "GSE12251_uc_infliximab_11genes.csv")
    cfg = bm.load_config(EXPERIMENTS / "bulk_gse12251.yaml", overrides=[*FAST, f"data.path={path}"])
    res = bm.run_experiment(cfg)
    assert res.cohort.kind == "bulk"
    assert res.evaluation.cv["grouped"], "P13 was sampled twice: folds must be grouped by patient"
    assert res.model_uri == "models:/anti-tnf-nonresponse-bulk/1"
    # Another cohort on another scale (a different platform): each cohort is standardised on its own.
    df = pd.read_csv(path)
    rng = np.random.default_rng(1)
    other = pd.DataFrame({"sample_id": [f"X{i}" for i in range(len(df))]})
    for g in GENES:
        other[g] = 1.3 * df[g].to_numpy() + 2 + rng.normal(0, 0.3, len(df))
    other_path = bulk_store / "other.csv"
    other.to_csv(other_path, index=False)
    table = bm.predict(other_path, model_uri="models:/anti-tnf-nonresponse-bulk@champion")
    assert list(table.columns[:3]) == [K.SAMPLE, "p_non_response", "prediction"]
    assert len(table) == len(df)
    assert roc_auc_score(df["response"] == K.NON_RESPONDER, table["p_non_response"]) > 0.8
    other[["sample_id", "ACTB"]].to_csv(bulk_store / "thin.csv", index=False)
    with pytest.raises(FeatureMismatchError, match="genes"):
        bm.predict(bulk_store / "thin.csv", model_uri="models:/anti-tnf-nonresponse-bulk@champion")


def _pseudobulk_table(adata) -> pd.DataFrame:
    """What a bulk biopsy of each patient would show: summed counts, log2(CPM + 1)."""
    counts = pd.DataFrame(adata.X.toarray(), columns=adata.var_names)
    counts[K.SAMPLE] = adata.obs[K.PATIENT].astype(str).to_numpy()
    summed = counts.groupby(K.SAMPLE).sum()
    return np.log2(1 + 1e6 * summed.div(summed.sum(axis=1), axis=0))


def test_single_cell_model_on_bridge_features_scores_bulk(bulk_store):
    cfg = bm.load_config(
        EXPERIMENTS / "anti_tnf_default.yaml",
        overrides=[*FAST, "features.families=[bulk_signatures]", "baselines.single_features=[]", "plots.umap=false",
                   "registry.model_name=bridge", "data.simulate.n_patients=30", "data.simulate.cells_per_patient=200",
                   "features.clinical=[]"],
    )  # fmt: skip
    res = bm.run_experiment(cfg)
    assert all(c.startswith("pbz__") for c in res.cohort.features.columns)
    new = bm.simulate_cohort(n_patients=30, cells_per_patient=200, seed=11)
    bulk = _pseudobulk_table(new)
    path = bulk_store / "pseudobulk.csv"
    bulk.reset_index().to_csv(path, index=False)
    table = bm.predict(path, model_uri="models:/bridge@champion")
    assert list(table.columns[:3]) == [K.SAMPLE, "p_non_response", "prediction"]
    y = new.obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].first().loc[table[K.SAMPLE]]
    assert roc_auc_score(y == K.NON_RESPONDER, table["p_non_response"]) > 0.6
    # A bulk table lacking most signature genes is refused rather than scored on a few genes.
    thin = bulk_store / "thin_pseudobulk.csv"
    bulk.reset_index().iloc[:, :5].to_csv(thin, index=False)
    with pytest.raises(FeatureMismatchError, match="genes"):
        bm.predict(thin, model_uri="models:/bridge@champion")
