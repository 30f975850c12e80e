"""Per-patient contributions add up to each patient's log-odds, for every kind of model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from biomarkers.models import fit_final
from biomarkers.models._explain import contributions, top_features

WEIGHTS = {"a": 1, "b": -1}
SPECS = [
    {"kind": "logreg", "params": {"C": 0.3}},
    {"kind": "logreg", "select_k": 2},
    {"kind": "mechanism_score", "weights": WEIGHTS},
    {"kind": "clinical"},
    {"kind": "clinical", "weights": WEIGHTS},
    {"kind": "single_feature", "feature": "a"},
    {"kind": "lightgbm", "params": {"n_estimators": 30}},
    {"kind": "random_forest", "params": {"n_estimators": 30}},
    {"kind": "majority"},
]


def _table(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    y = pd.Series(np.arange(n) % 2, index=[f"P{i:02d}" for i in range(n)])
    X = pd.DataFrame(rng.normal(size=(n, 3)), index=y.index, columns=["a", "b", "c"])
    X["a"] += 1.5 * y
    X["b"] -= 1.0 * y
    X["clin__age"] = 0.5 * y + rng.normal(size=n)
    X.iloc[3, 1] = np.nan  # imputed inside the pipeline
    return X, y


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['kind']}{'+w' if s.get('weights') else ''}{'-k' if s.get('select_k') else ''}")
def test_contributions_add_up_to_the_log_odds(spec):
    if spec["kind"] == "random_forest":
        pytest.importorskip("shap")
    X, y = _table()
    pipe = fit_final(spec, X, y)
    contrib, base = contributions(pipe, X)
    p = np.clip(pipe.predict_proba(X)[:, 1], 1e-9, 1 - 1e-9)
    np.testing.assert_allclose(base + contrib.sum(axis=1), np.log(p / (1 - p)), atol=1e-6)
    assert list(contrib.columns) == list(X.columns)
    if spec["kind"] in ("logreg", "mechanism_score", "random_forest", "lightgbm", "single_feature"):
        assert (contrib["clin__age"] == 0).all(), "biomarker models never use clinical covariates"
    if spec["kind"] == "clinical" and not spec.get("weights"):
        assert (contrib[["a", "b", "c"]] == 0).all().all()


def test_mechanism_contributions_follow_the_prespecified_signs():
    X, y = _table()
    contrib, _ = contributions(fit_final({"kind": "mechanism_score", "weights": WEIGHTS}, X, y), X)
    z = (X - X.mean()) / X.std(ddof=0)
    assert (np.sign(contrib["a"]) == np.sign(z["a"])).all()
    assert (np.sign(contrib.loc[X["b"].notna(), "b"]) == -np.sign(z.loc[X["b"].notna(), "b"])).all()
    assert (contrib[["c", "clin__age"]] == 0).all().all()
    top = top_features(contrib, k=2)
    assert top.iloc[0].count(";") == 1
    assert top.iloc[0].split(" (")[0] in {"a", "b"}
