"""Several single-cell cohorts: leave-one-cohort-out end to end, with the scoring reference fitted per split."""

from __future__ import annotations

import anndata as ad
import mlflow
import numpy as np

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers.config import ExperimentConfig
from biomarkers.features import FeaturePipeline


def _two_cohorts():
    parts = []
    for seed, name in ((11, "GSE-A (ileum)"), (12, "GSE_B")):
        a = bm.simulate_cohort(n_patients=16, cells_per_patient=80, n_genes=600, seed=seed)
        a.obs[K.PATIENT] = [f"{name[:5]}-{p}" for p in a.obs[K.PATIENT].astype(str)]
        a.obs[K.SAMPLE] = [f"{name[:5]}-{s}" for s in a.obs[K.SAMPLE].astype(str)]
        a.obs["study"] = name
        a.obs_names = [f"{name[:5]}-{c}" for c in a.obs_names]
        a.uns = {}
        parts.append(a)
    return ad.concat(parts, merge="same")


CONFIG = {
    "name": "loco-cells",
    "data": {"cohort_col": "study", "obs_map": {}},
    "preprocess": {"min_genes": 20, "min_counts": 50},
    "features": {"families": ["aqp9_macrophage_fraction", "proportions", "signature_means", "n_cells"]},
    "models": [{"kind": "logreg", "params": {"C": 0.1}}, {"kind": "mechanism_score"}],
    "baselines": {"majority": True, "single_features": ["aqp9_macrophage_fraction"]},
    "cv": {"strategy": "leave_one_cohort_out", "n_splits": 3},
    "evaluation": {"n_boot": 200, "n_permutations": 5},
    "plots": {"umap": False},
}


def test_leave_one_cohort_out_on_cells_fits_the_reference_on_the_training_cohort_only(mlflow_store, monkeypatch):
    cells = _two_cohorts()
    fitted: list[set[str]] = []
    original = FeaturePipeline.fit_reference

    def spy(self, stats):
        fitted.append({str(p).rsplit("-", 1)[0] for p in stats.index})
        return original(self, stats)

    monkeypatch.setattr(FeaturePipeline, "fit_reference", spy)
    cfg = ExperimentConfig.model_validate(CONFIG)
    res = bm.run_experiment(cfg, adata=cells)
    ev = res.evaluation
    assert ev.cv["strategy"] == "leave_one_cohort_out"
    assert len(ev.folds[0]) == 2
    # once on everyone (the registered model's reference), then once per split on its training cohort alone
    assert fitted[0] == {"GSE-A", "GSE_B"}
    assert sorted(map(sorted, fitted[1:])) == [["GSE-A"], ["GSE_B"]]
    client = mlflow.MlflowClient()
    child = client.get_run(res.child_runs["logreg"])
    keys = set(child.data.metrics)
    assert {"cohort_auroc__GSE-A__ileum_", "cohort_auroc__GSE_B"} <= keys, sorted(keys)
    for c in ("GSE-A__ileum_", "GSE_B"):
        m = child.data.metrics
        assert m[f"cohort_auroc__{c}_ci_low"] <= m[f"cohort_auroc__{c}"] <= m[f"cohort_auroc__{c}_ci_high"]
    assert set(ev.cohort_metrics["cohort"]) == {"GSE-A (ileum)", "GSE_B"}
    assert np.isfinite(ev.nested_auroc)

