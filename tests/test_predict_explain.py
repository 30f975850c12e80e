"""predict explains each patient and flags samples unlike the training cohort (sorted samples, extreme values)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import biomarkers as bm
from biomarkers import _keys as K

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FAST = [
    "data.simulate.n_patients=20",
    "data.simulate.cells_per_patient=150",
    "data.simulate.n_genes=600",
    "cv.n_splits=3",
    "cv.n_repeats=1",
    "evaluation.n_boot=200",
    "evaluation.n_permutations=0",
    "models=[{kind: logreg, params: {C: 0.1}}, {kind: mechanism_score}]",
    "plots.umap=false",
    "registry.model_name=explain-model",
]
URI = "models:/explain-model@champion"
FIRST = ["patient_id", "p_non_response", "prediction", K.N_CELLS, K.N_SAMPLES, "flags", "reason", "top_features"]


@pytest.fixture(scope="module")
def trained(module_store):
    return bm.run_experiment(bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=FAST)), module_store


def _new(seed: int = 5):
    return bm.simulate_cohort(n_patients=8, cells_per_patient=150, n_genes=600, seed=seed)


def test_a_normal_new_cohort_gets_explanations_percentiles_and_a_reason(trained):
    table = bm.predict(_new(), model_uri=URI)
    assert list(table.columns[: len(FIRST)]) == FIRST
    contrib = [c for c in table.columns if c.startswith("contrib__")]
    pctl = [c for c in table.columns if c.startswith("pctl__")]
    assert contrib
    assert "pctl__aqp9_macrophage_fraction" in pctl
    assert table.columns.is_unique
    assert table.columns.get_loc(contrib[0]) < table.columns.get_loc(pctl[0]) < table.columns.get_loc("feature_coverage")
    assert table[pctl].stack().between(0, 100).all()
    # contributions add up to each patient's log-odds (with the model's base)
    from biomarkers.prediction import load_model

    _, model = load_model(URI)
    feats = table.set_index("patient_id")[model.features]
    _, base = model.explain(feats)
    p = table["p_non_response"].to_numpy()
    np.testing.assert_allclose(base.to_numpy() + table[contrib].sum(axis=1).to_numpy(), np.log(p / (1 - p)), atol=1e-6)
    assert table["reason"].str.contains(r"p = 0\.\d\d").all()
    assert table["reason"].str.contains("log-odds").all()
    # a cohort like the training one: no absent compartment, enough cells, full coverage
    codes = set(";".join(table["flags"].fillna("")).split(";")) - {""}
    assert all(c.startswith("out_of_range:") for c in codes), codes
    used = {c.removeprefix("contrib__") for c in contrib}
    assert {c.removeprefix("out_of_range:") for c in codes} <= used, "only features the model uses are range-checked"


def test_a_sorted_sample_without_stroma_or_epithelium_is_flagged(trained, caplog):
    cells = _new(6)
    sorted_ = cells[~cells.obs[K.TRUE_CELL_TYPE].isin(["fibroblast", "endothelial", "epithelial"])].copy()
    with caplog.at_level(logging.WARNING, logger="biomarkers"):
        table = bm.predict(sorted_, model_uri=URI)
    flags = table["flags"].str.split(";")
    assert flags.map(lambda f: "no_stroma" in f and "no_epithelium" in f).all()
    assert table["reason"].str.contains("caution: ").all()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict: no_")]
    assert any(m.startswith("predict: no_stroma for 8 patient(s)") for m in lines)
    assert any(m.startswith("predict: no_epithelium for 8 patient(s)") for m in lines)


def test_features_outside_the_training_range_are_flagged_not_refused(trained, tmp_path):
    res, _ = trained
    feats = res.cohort.features.iloc[:3].copy()
    feature = "sig__stroma__OSM_RESPONSE"
    lo, hi = res.cohort.features[feature].min(), res.cohort.features[feature].max()
    feats.loc[feats.index[0], feature] = hi + 2 * (hi - lo)  # well beyond the 25% margin
    feats.loc[feats.index[1], feature] = hi + 0.1 * (hi - lo)  # within the margin
    path = tmp_path / "new.csv"
    feats.reset_index().to_csv(path, index=False)
    table = bm.predict(path, model_uri=URI).set_index("patient_id")
    assert f"out_of_range:{feature}" in table.loc[feats.index[0], "flags"].split(";")
    assert f"out_of_range:{feature}" not in str(table.loc[feats.index[1], "flags"]).split(";")
    assert table["p_non_response"].notna().all()


@pytest.mark.usefixtures("trained")
def test_predict_report_is_a_self_contained_page_of_the_batch(tmp_path):
    from typer.testing import CliRunner

    from biomarkers.cli import app

    cells = tmp_path / "new.h5ad"
    _new(7).write_h5ad(cells)
    out, report = tmp_path / "preds.csv", tmp_path / "batch.html"
    res = CliRunner().invoke(app, ["predict", str(cells), "--model", URI, "--out", str(out), "--report", str(report)])
    assert res.exit_code == 0, res.output
    html = report.read_text()
    table = pd.read_csv(out)
    for pid in table["patient_id"]:
        assert pid in html
    assert "data:image/png;base64," in html
    assert "<script src" not in html
    assert "report ->" in res.output
