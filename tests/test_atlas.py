"""A cohort laid out like a CELLxGENE / atlas download, end to end: experiment -> registered model -> predict.

The files are written the way an atlas ships them: Ensembl ids in ``var_names`` with symbols in
``var['feature_name']``, raw counts in ``.raw.X`` next to a log-normalised ``X``, ``donor_id`` / ``library_uuid``
columns, four biopsies per donor (baseline and week 14, inflamed and not), and the outcome as NR / R in a separate
CSV with clinical covariates. The experiment keeps the baseline inflamed biopsies with ``data.query``; predict on a
file of new donors needs no flags and uses only the biopsies the query keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import yaml

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from pathlib import Path

BIOPSIES = [("baseline", "inflamed"), ("baseline", "non-inflamed"), ("week14", "inflamed"), ("week14", "non-inflamed")]
QUERY = "timepoint == 'baseline' and disease_status == 'inflamed'"


def write_atlas(folder: Path, *, seed: int, prefix: str) -> tuple[Path, Path]:
    """An atlas-like h5ad of 12 donors x 4 biopsies, and its clinical CSV; returns both paths (12: nested CV needs 2 per class per fold)."""
    sim = bm.simulate_cohort(n_patients=12, cells_per_patient=480, n_genes=500, seed=seed)
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(index=[f"{prefix}-cell{i}" for i in range(sim.n_obs)])
    donor = sim.obs[K.PATIENT].astype(str).map(lambda p: f"{prefix}-{p}").to_numpy()
    biopsy = rng.integers(0, len(BIOPSIES), sim.n_obs)
    obs["donor_id"] = donor
    obs["library_uuid"] = [f"{d}-lib{b}" for d, b in zip(donor, biopsy, strict=True)]
    obs["timepoint"] = [BIOPSIES[b][0] for b in biopsy]
    obs["disease_status"] = [BIOPSIES[b][1] for b in biopsy]
    obs["tissue"] = "ileum"
    obs["assay"] = "10x 3' v3"
    symbols = sim.var_names.astype(str)
    var = pd.DataFrame({"feature_name": symbols.to_numpy(), "feature_biotype": "gene"},
                       index=[f"ENSG{i:011d}" for i in range(sim.n_vars)])  # fmt: skip
    counts = sim.X.tocsr().astype(np.float32)
    atlas = ad.AnnData(X=counts.copy(), obs=obs, var=var)
    atlas.raw = atlas.copy()
    sc.pp.normalize_total(atlas, target_sum=1e4)
    sc.pp.log1p(atlas)
    path = folder / f"{prefix}.h5ad"
    atlas.write_h5ad(path)
    outcome = sim.obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].first().astype(str)
    clinical = pd.DataFrame({
        "donor_id": [f"{prefix}-{p}" for p in outcome.index],
        "outcome": outcome.map({K.NON_RESPONDER: "NR", K.RESPONDER: "R"}).to_numpy(),
        "age": rng.integers(18, 70, len(outcome)),
        "cdai": rng.integers(150, 450, len(outcome)),
    })  # fmt: skip
    labels = folder / f"{prefix}_clinical.csv"
    clinical.to_csv(labels, index=False)
    return path, labels


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    train, labels = write_atlas(folder, seed=0, prefix="TR")
    new, new_labels = write_atlas(folder, seed=3, prefix="NEW")
    config = {
        "schema_version": 1,
        "name": "atlas-e2e",
        "data": {
            "path": str(train), "labels": str(labels), "query": QUERY,
            "patient_col": "donor_id", "sample_col": "library_uuid",
            "label_col": "outcome", "positive_label": "NR", "negative_label": "R",
            "obs_map": {"timepoint": "timepoint", "inflamed": "disease_status", "tissue": "tissue", "severity": "cdai"},
        },
        "preprocess": {"min_genes": 20, "min_counts": 50},
        "models": [{"kind": "logreg"}],
        "cv": {"n_splits": 2, "n_repeats": 1},
        "evaluation": {"n_boot": 100, "n_permutations": 0},
        "plots": {"umap": False},
        "registry": {"model_name": "atlas-model"},
    }  # fmt: skip
    cfg_path = folder / "atlas.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    return {"train": train, "new": new, "new_labels": new_labels, "config": cfg_path, "folder": folder}


@pytest.fixture(scope="module")
def trained(atlas, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(store / "mlruns"))
        res = bm.run_experiment(bm.load_config(atlas["config"]))
        yield res


def test_the_query_keeps_one_baseline_inflamed_biopsy_per_donor(trained):
    samples = trained.cohort.samples
    assert set(samples[K.TIMEPOINT]) == {"baseline"}
    assert samples[K.INFLAMED].astype(bool).all()
    assert samples.groupby(K.PATIENT).size().eq(1).all()
    assert len(trained.cohort.features) == 12
    assert trained.cohort.labels.sum() > 0  # labels came from the clinical CSV (NR/R)


def test_predict_on_the_training_file_reproduces_the_training_features_exactly(trained, atlas):
    preds = bm.predict(atlas["train"], model_uri="models:/atlas-model@champion").set_index(K.PATIENT)
    features = trained.cohort.features
    pd.testing.assert_frame_equal(preds[features.columns].loc[features.index], features, check_exact=True)


def test_predict_on_new_donors_needs_no_flags_and_uses_only_the_kept_biopsies(trained, atlas, tmp_path):
    out = tmp_path / "preds.csv"
    preds = bm.predict(atlas["new"], model_uri="models:/atlas-model@champion", out=out)
    assert list(preds.columns[:5]) == [K.PATIENT, "p_non_response", "prediction", K.N_CELLS, K.N_SAMPLES]
    assert preds.columns.is_unique
    assert len(preds) == 12
    assert preds[K.PATIENT].str.startswith("NEW-").all()
    assert (preds[K.N_SAMPLES] == 1).all()
    raw = ad.read_h5ad(atlas["new"], backed="r").obs
    kept = raw.query(QUERY).groupby("donor_id", observed=True).size()
    assert (preds.set_index(K.PATIENT)[K.N_CELLS] <= kept.loc[preds[K.PATIENT]].to_numpy()).all()
    assert preds["p_non_response"].between(0, 1).all()
    assert pd.read_csv(out).shape == preds.shape


def test_predict_flags_override_the_training_settings(trained, atlas):
    every = bm.predict(atlas["new"], model_uri="models:/atlas-model@champion", query="timepoint == 'baseline' and disease_status == 'non-inflamed'")
    assert (every[K.N_SAMPLES] == 1).all()
    with pytest.raises(DataSchemaError, match="differ in"):
        bm.predict(atlas["new"], model_uri="models:/atlas-model@champion", query="")


def test_pooling_timepoints_is_refused_unless_allowed(atlas):
    cfg = bm.load_config(atlas["config"], overrides=["data.query=disease_status == 'inflamed'"])
    with pytest.raises(DataSchemaError, match="differ in timepoint"):
        bm.cohort.prepare_cohort(cfg)
    cfg = bm.load_config(atlas["config"], overrides=["data.query=disease_status == 'inflamed'", "data.allow_mixed_samples=true"])
    cohort = bm.cohort.prepare_cohort(cfg)
    assert cohort.samples.groupby(K.PATIENT).size().max() == 2


def test_a_query_on_a_missing_column_names_the_columns(atlas):
    cfg = bm.load_config(atlas["config"], overrides=["data.query=visit == 'baseline'"])
    with pytest.raises(DataSchemaError, match=r"names column 'visit'.*donor_id"):
        bm.cohort.prepare_cohort(cfg)


def test_clinical_ids_that_do_not_match_are_one_clear_line(atlas):
    cfg = bm.load_config(atlas["config"], overrides=[f"data.labels={atlas['new_labels']}"])
    with pytest.raises(DataSchemaError, match="0 of 12 matched"):
        bm.cohort.prepare_cohort(cfg)


def test_the_cli_predicts_new_donors_with_no_flags(trained, atlas, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    out = tmp_path / "cli.csv"
    done = subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", "predict", str(atlas["new"]), "--model", "models:/atlas-model@champion",
         "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table.columns[:5]) == [K.PATIENT, "p_non_response", "prediction", K.N_CELLS, K.N_SAMPLES]
    assert (table[K.N_SAMPLES] == 1).all()


def test_predict_on_the_atlas_as_anndata_equals_predict_on_its_file(trained, atlas):
    # The usual scanpy state in memory: X log-normalised, counts only in .raw, Ensembl var_names.
    uri = "models:/atlas-model@champion"
    from_file = bm.predict(atlas["new"], model_uri=uri)
    in_memory = bm.predict(ad.read_h5ad(atlas["new"]), model_uri=uri)
    pd.testing.assert_frame_equal(in_memory, from_file)


def test_a_model_of_the_old_format_says_to_retrain(trained, atlas):
    from biomarkers._errors import FeatureMismatchError
    from biomarkers.prediction import load_model

    _, model = load_model("models:/atlas-model@champion")
    del model.format_version  # as a v0.1 model unpickles: no attribute
    with pytest.raises(FeatureMismatchError, match="Retrain it"):
        model.cells_table(bm.read_cohort(atlas["new"], patient_col="donor_id", sample_col="library_uuid"))


def test_features_command_reads_like_the_experiment_or_with_flags(atlas, tmp_path):
    from typer.testing import CliRunner

    from biomarkers.cli import app

    runner = CliRunner()
    by_config = tmp_path / "by_config.csv"
    res = runner.invoke(app, ["features", str(atlas["new"]), "--experiment", str(atlas["config"]), "-o", str(by_config)])
    assert res.exit_code == 0, res.output
    flags = tmp_path / "flags.csv"
    res = runner.invoke(app, [
        "features", str(atlas["new"]), "-o", str(flags), "--patient-col", "donor_id", "--sample-col", "library_uuid",
        "--query", QUERY, "--obs-map", "timepoint=timepoint", "--obs-map", "inflamed=disease_status",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    a, b = pd.read_csv(by_config, index_col=0), pd.read_csv(flags, index_col=0)
    assert len(a) == 12
    assert a.index.str.startswith("NEW-").all()
    # Same donors and biopsies; the experiment's QC floors (min_genes 20) are laxer than the defaults (200).
    assert a.index.equals(b.index)
    assert (b["n_cells"] <= a["n_cells"]).all()
    kept = ad.read_h5ad(atlas["new"], backed="r").obs.query(QUERY).groupby("donor_id", observed=True).size()
    assert (a["n_cells"] <= kept.loc[a.index]).all()


def test_clinical_covariates_are_joined_and_not_required_at_predict(trained, atlas):
    # severity comes from the clinical table (obs_map severity: cdai); a file of new donors has no such column.
    clinical = pd.read_csv(atlas["folder"] / "TR_clinical.csv").set_index("donor_id")
    read = bm.read_cohort(
        atlas["train"], patient_col="donor_id", sample_col="library_uuid", clinical=atlas["folder"] / "TR_clinical.csv",
        obs_map={"severity": "cdai"}, label_col="outcome", positive_label="NR", negative_label="R",
    )  # fmt: skip
    per_donor = read.obs.groupby(K.PATIENT, observed=True)[K.SEVERITY].first()
    assert (per_donor.astype(int) == clinical.loc[per_donor.index, "cdai"]).all()
    spec = bm.io.ReadSpec.from_dict(trained.cohort.read_spec.to_dict())
    assert "cdai" in spec.clinical_columns
    assert spec.to_dict()["clinical"] == "TR_clinical.csv"  # the training machine's path is not stored
    assert K.SEVERITY not in spec.for_predict().obs_map


def test_predict_on_an_anndata_already_read_with_read_cohort(trained, atlas):
    uri = "models:/atlas-model@champion"
    adata = bm.read_cohort(
        atlas["new"], patient_col="donor_id", sample_col="library_uuid", query=QUERY,
        obs_map={"timepoint": "timepoint", "inflamed": "disease_status", "tissue": "tissue"},
    )  # fmt: skip
    pd.testing.assert_frame_equal(bm.predict(adata, model_uri=uri), bm.predict(atlas["new"], model_uri=uri))


def test_one_input_gene_never_stands_for_two_reference_genes():
    from biomarkers.features import ScoringReference
    from biomarkers.features._reference import SetReference

    ref = ScoringReference(sets={"MNP": {"S": SetReference(genes=("CCL3L1", "A"), controls=("CCL3L3", "B"))}})
    mapping = ref.resolve(["CCL3L1", "A", "B"])
    assert mapping == {"A": "A", "B": "B", "CCL3L1": "CCL3L1"}


def test_dry_run_checks_an_h5ad_from_its_metadata_only(atlas, monkeypatch):
    import biomarkers.io

    def no_counts(*args: object, **kwargs: object) -> None:
        msg = "a dry run of a streamed h5ad must not read its counts"
        raise AssertionError(msg)

    monkeypatch.setattr(biomarkers.io, "read_cohort", no_counts)
    bm.check_experiment(bm.load_config(atlas["config"]))
    with pytest.raises(DataSchemaError, match="differ in timepoint"):
        bm.check_experiment(bm.load_config(atlas["config"], overrides=["data.query=disease_status == 'inflamed'"]))


def test_predict_and_features_on_dask_equal_in_process(trained, atlas):
    # A real scheduler on a tcp:// address with an in-process worker (no worker start-up imports), as in test_compute.
    distributed = pytest.importorskip("distributed")
    from biomarkers.cohort import features_from_file

    uri = "models:/atlas-model@champion"
    cfg = bm.load_config(atlas["config"])
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        on_dask = bm.predict(atlas["new"], model_uri=uri, scheduler=address)
        feats_dask = features_from_file(atlas["new"], config=cfg, scheduler=address)
    pd.testing.assert_frame_equal(on_dask, bm.predict(atlas["new"], model_uri=uri), check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(feats_dask, features_from_file(atlas["new"], config=cfg), check_exact=False, rtol=1e-12)
