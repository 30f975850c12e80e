from __future__ import annotations

import inspect
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import biomarkers as bm
from biomarkers import _celltypes as ct
from biomarkers import _keys as k
from biomarkers import discovery
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.discovery import (
    NestedDiscoveryFeature,
    bh_adjust,
    cv_with_discovery,
    differential_expression,
    discover,
    known_signature_ranks,
    pseudobulk,
    pseudobulk_table,
    rank_genes,
    truth_metrics,
)
from biomarkers.signatures import GeneSet, load_gene_sets


def _with_compartments(adata):
    """Compartments from the simulator's true cell types: skips QC/annotation, which tests elsewhere cover."""
    major = adata.obs[k.TRUE_CELL_TYPE].map(ct.FINE_TO_MAJOR)
    adata.obs[k.COMPARTMENT] = major.map(ct.COMPARTMENT_OF).astype(str)
    return adata


@pytest.fixture(scope="module")
def tiny():
    return _with_compartments(bm.simulate_cohort(n_patients=12, cells_per_patient=40, n_genes=300, seed=0))


@pytest.fixture(scope="module")
def planted():
    """40 patients with the planted effects (effect_size 1): enough power in stroma within a second or two."""
    return _with_compartments(bm.simulate_cohort(n_patients=40, cells_per_patient=200, n_genes=500, seed=0))


@pytest.fixture(scope="module")
def planted_de(planted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return differential_expression(planted, compartments=["stroma", "MNP"], method="deseq2_fast", min_cells=5)


@pytest.fixture(scope="module")
def module_mlflow_store(tmp_path_factory):
    """One SQLite store for the module: creating it (schema migrations) takes seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(root / "mlruns"))
        yield root


# ---- pseudobulk -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True])
def test_pseudobulk_matches_groupby_sum(tiny, dense):
    adata = tiny.copy()
    if dense:
        adata.layers[k.COUNTS] = adata.layers[k.COUNTS].toarray()
    counts, meta = pseudobulk(adata, compartment=ct.EPITHELIUM, min_cells=1)
    sub = adata[adata.obs[k.COMPARTMENT] == ct.EPITHELIUM]
    x = sub.layers[k.COUNTS]
    x = x.toarray() if sparse.issparse(x) else x
    expected = pd.DataFrame(x, columns=adata.var_names).groupby(sub.obs[k.PATIENT].astype(str).to_numpy()).sum()
    np.testing.assert_array_equal(counts.to_numpy(), expected.loc[counts.index].to_numpy())
    assert meta[k.N_CELLS].tolist() == sub.obs[k.PATIENT].astype(str).value_counts().loc[counts.index].tolist()
    assert {k.RESPONSE, k.BATCH, k.N_CELLS} <= set(meta.columns)
    truth = adata.uns[k.TRUTH]["patients"][k.RESPONSE]
    assert (meta[k.RESPONSE] == truth.loc[meta.index]).all()


def _pseudobulk_hand_written(adata, compartment, patient_col=k.PATIENT):
    """The one-hot sparse product that pseudobulk replaced by sc.get.aggregate, kept as the reference."""
    x = adata.layers[k.COUNTS]
    x = x.tocsr() if sparse.issparse(x) else sparse.csr_matrix(np.asarray(x))
    mask = np.asarray(adata.obs[k.COMPARTMENT].astype(str) == compartment)
    uniq, inv = np.unique(adata.obs[patient_col].astype(str).to_numpy()[mask], return_inverse=True)
    rows = np.flatnonzero(mask)
    onehot = sparse.csr_matrix((np.ones(rows.size), (inv, rows)), shape=(uniq.size, adata.n_obs))
    sums = np.rint(np.asarray((onehot @ x).todense())).astype(np.int64)
    return pd.DataFrame(sums, index=pd.Index(uniq, name=k.PATIENT), columns=adata.var_names.astype(str))


def test_pseudobulk_aggregate_matches_the_hand_written_sum(tiny):
    adata = tiny.copy()
    adata.obs[k.PATIENT] = adata.obs[k.PATIENT].str[1:].astype(int)  # integer ids: sorted as strings, as before
    x = adata.layers[k.COUNTS].astype(np.float32).tolil()
    x[:, 0] = 0
    x[0, 0], x[1, 0] = 2**24 - 1, 2  # one patient's sum, 2**24 + 1, is not a float32: sums must run in float64
    adata.layers[k.COUNTS] = x.tocsr()
    adata.obs.loc[adata.obs_names[:2], k.COMPARTMENT] = ct.STROMA
    adata.obs.loc[adata.obs_names[1], k.PATIENT] = adata.obs[k.PATIENT].iloc[0]
    for comp in (ct.STROMA, ct.EPITHELIUM):
        counts, meta = pseudobulk(adata, compartment=comp, min_cells=1)
        pd.testing.assert_frame_equal(counts, _pseudobulk_hand_written(adata, comp))
        assert meta.index.equals(counts.index)
    assert counts.index.tolist() == sorted(counts.index)  # "10" < "2"
    stroma, _ = pseudobulk(adata, compartment=ct.STROMA, min_cells=1)
    assert stroma.iloc[:, 0].max() == 2**24 + 1
    empty, empty_meta = pseudobulk(adata, compartment="liver", min_cells=1)
    assert empty.shape == (0, adata.n_vars)
    assert empty_meta.empty


def test_pseudobulk_all_preserves_total_and_min_cells_drops(tiny):
    counts, _ = pseudobulk(tiny, compartment="all", min_cells=1)
    assert int(counts.to_numpy().sum()) == int(tiny.layers[k.COUNTS].sum())
    assert len(counts) == tiny.obs[k.PATIENT].nunique()
    n = tiny.obs[tiny.obs[k.COMPARTMENT] == ct.STROMA][k.PATIENT].value_counts()
    cut = int(n.median())
    kept, kept_meta = pseudobulk(tiny, compartment=ct.STROMA, min_cells=cut)
    assert set(kept.index) == set(n.index[n >= cut])
    assert (kept_meta[k.N_CELLS] >= cut).all()


def test_pseudobulk_errors(tiny):
    raw = tiny.copy()
    del raw.obs[k.COMPARTMENT]
    with pytest.raises(DataSchemaError, match="compartment"):
        pseudobulk(raw, compartment=ct.MNP)
    logged = tiny.copy()
    logged.layers[k.COUNTS] = logged.layers[k.COUNTS].astype(np.float32) * 0.37
    with pytest.raises(DataSchemaError, match="not raw counts"):
        pseudobulk(logged, compartment=ct.MNP)
    with pytest.raises(DataSchemaError, match="patient_col"):
        pseudobulk(tiny, compartment=ct.MNP, patient_col="donor")


# ---- DE building blocks -------------------------------------------------------------------------------------------


def _bh_hand_written(pvalues):
    """The BH adjustment that bh_adjust replaced by scipy.stats.false_discovery_control, kept as the reference."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok])
    adj = np.minimum.accumulate((p[ok][order] * m / np.arange(1, m + 1))[::-1])[::-1]
    vals = np.empty(m)
    vals[order] = np.minimum(adj, 1.0)
    out[ok] = vals
    return out


def test_bh_adjust_matches_scipy():
    p = np.random.default_rng(0).uniform(size=200) ** 3
    np.testing.assert_allclose(bh_adjust(p), stats.false_discovery_control(p), rtol=1e-12)
    tied = np.r_[p[:50], p[:20], np.nan, 1.0, 0.0, np.nan]
    np.testing.assert_allclose(bh_adjust(tied), _bh_hand_written(tied), rtol=1e-12)
    assert np.isnan(bh_adjust(np.array([np.nan, np.nan]))).all()
    assert bh_adjust(np.array([])).shape == (0,)
    with_nan = np.r_[p[:10], np.nan]
    out = bh_adjust(with_nan)
    assert np.isnan(out[-1])
    assert np.allclose(out[:10], stats.false_discovery_control(p[:10]))


def _toy_counts(seed=0, n=16, g=60):
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(4, 1, size=g)
    x = rng.negative_binomial(5, 5 / (5 + mu[None, :] * rng.lognormal(0, 0.2, size=(n, 1))))
    counts = pd.DataFrame(x, index=[f"P{i:02d}" for i in range(n)], columns=[f"G{j}" for j in range(g)])
    return counts, np.arange(n) % 2


def test_rank_genes_ttest_is_students_t_on_log_cpm():
    counts, y = _toy_counts()
    res = rank_genes(counts, y, method="ttest", min_counts=0, min_expressed=0).set_index("gene")
    lc = np.log2(1e6 * counts.div(counts.sum(axis=1), axis=0) + 1)
    ref = stats.ttest_ind(lc[y == 1], lc[y == 0], axis=0)
    np.testing.assert_allclose(res.loc[counts.columns, "stat"], ref.statistic, rtol=1e-8)
    np.testing.assert_allclose(res.loc[counts.columns, "pvalue"], ref.pvalue, rtol=1e-6)
    ranked = rank_genes(counts, y, method="ttest")
    assert list(ranked.columns) == ["gene", "log2FC", "lfcSE", "stat", "pvalue", "padj", "baseMean", "rank"]
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["stat"].is_monotonic_decreasing


def test_rank_genes_filters_and_rejects_bad_input():
    counts, y = _toy_counts()
    counts["RARE"] = 0
    counts.iloc[0, -1] = 50  # 50 counts, but in one patient only
    assert "RARE" not in set(rank_genes(counts, y, method="ttest", min_expressed=3)["gene"])
    with pytest.raises(ConfigError, match="method"):
        rank_genes(counts, y, method="edger")  # type: ignore[arg-type]
    with pytest.raises(DataSchemaError, match="labels"):
        rank_genes(counts, y[:-1], method="ttest")


def test_covariates_dropped_when_constant_or_confounded():
    counts, y = _toy_counts()
    confounded = pd.DataFrame({"batch": np.where(y == 1, "b1", "b2")}, index=counts.index)
    with pytest.warns(UserWarning, match="confounded"):
        res = rank_genes(counts, y, covariates=confounded, method="ttest")
    assert res.attrs["covariates"] == []
    constant = pd.DataFrame({"batch": "b1"}, index=counts.index)
    with pytest.warns(UserWarning, match="constant"):
        rank_genes(counts, y, covariates=constant, method="ttest")
    usable = pd.DataFrame({"batch": [f"b{i % 3}" for i in range(len(y))]}, index=counts.index)
    assert rank_genes(counts, y, covariates=usable, method="ttest").attrs["covariates"] == ["batch"]


def test_fast_deseq2_inference_matches_pydeseq2():
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    counts, y = _toy_counts(seed=1, n=12, g=80)
    counts.iloc[y == 1, :8] *= 3  # a few true differences
    ours = rank_genes(counts, y, method="deseq2_fast").set_index("gene")
    stock = rank_genes(counts, y, method="deseq2").set_index("gene")
    meta = pd.DataFrame({"condition": np.where(y == 1, "NR", "R")}, index=counts.index)
    inference = DefaultInference(n_cpus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~condition", inference=inference, quiet=True)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", "NR", "R"], inference=inference, quiet=True)
        ds.summary()
    ref = ds.results_df.loc[ours.index]
    # method="deseq2" is PyDESeq2 itself, padj its own (independent filtering), not recomputed.
    for col, ref_col in [("stat", "stat"), ("log2FC", "log2FoldChange"), ("pvalue", "pvalue"), ("padj", "padj")]:
        np.testing.assert_allclose(stock.loc[ours.index, col], ref[ref_col], rtol=1e-10)
    # deseq2_fast: the same within the grid's resolution
    assert np.corrcoef(ours["stat"], ref["stat"])[0, 1] > 0.999
    np.testing.assert_allclose(ours["log2FC"], ref["log2FoldChange"], atol=0.05)
    assert set(ours.index[ours["padj"] < 0.05]) == set(ref.index[ref["padj"] < 0.05])
    assert ours["padj"].isna().sum() == ref["padj"].isna().sum()


# ---- differential expression on simulated cohorts -----------------------------------------------------------------


def test_de_recovers_planted_stroma_genes(planted, planted_de):
    tm = truth_metrics(planted_de, planted.uns[k.TRUTH]).set_index("compartment")
    assert tm.loc[ct.STROMA, "precision"] >= 0.75
    assert tm.loc[ct.STROMA, "recall"] >= 0.5
    assert tm.loc[ct.MNP, "recall"] == 1.0  # OSM in inflammatory macrophages
    stroma = planted_de[ct.STROMA].set_index("gene")
    assert stroma.loc["SOCS3", "rank"] <= 20
    assert stroma.loc["OSMR", "rank"] <= 20
    assert planted_de[ct.STROMA].attrs["covariates"] == [k.BATCH]


def test_null_cohorts_control_fdr_fast():
    """Small version of the slow test: 3 null cohorts, 2 compartments, PyDESeq2 (vectorised inference)."""
    rates = []
    for seed in (11, 12, 13):
        adata = _with_compartments(
            bm.simulate_cohort(n_patients=24, cells_per_patient=200, n_genes=300, effect_size=0.0, seed=seed)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = differential_expression(
                adata, compartments=[ct.STROMA, ct.EPITHELIUM], method="deseq2_fast", min_cells=5
            )
        n_sig = sum(int((t["padj"] < 0.05).sum()) for t in res.values())
        rates.append(n_sig / sum(len(t) for t in res.values()))
    assert np.mean(rates) <= 0.05


@pytest.mark.slow
def test_null_cohorts_control_fdr_default_size(request):
    """Default-size null cohorts (40 x 500 x 2000), full QC/annotation, six compartments, 5 seeds (~2 min).

    ``deseq2_fast``: PyDESeq2's own inference takes ~30 s per compartment here (benchmarks/deseq2_inference.py).
    """
    from biomarkers.discovery import annotate_cells

    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("opt-in: pytest -m slow")

    per_seed = []
    for seed in range(100, 105):
        cells = annotate_cells(bm.simulate_cohort(effect_size=0.0, seed=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = differential_expression(cells, method="deseq2_fast")
        n_sig = sum(int((t["padj"] < 0.05).sum()) for t in res.values())
        per_seed.append((n_sig, sum(len(t) for t in res.values())))
    rates = [s / n for s, n in per_seed]
    assert np.mean(rates) <= 0.05
    assert np.mean([s > 0 for s, _ in per_seed]) <= 0.6  # BH at 5% per compartment, six compartments per seed


def test_differential_expression_skips_and_warns(tiny):
    with pytest.warns(UserWarning, match="skipped"):
        res = differential_expression(tiny, compartments=[ct.STROMA], method="ttest", min_cells=10_000)
    assert res == {}
    with pytest.raises(DataSchemaError, match="label_col"):
        differential_expression(tiny, compartments=[ct.STROMA], label_col="outcome")
    with pytest.warns(UserWarning, match="severity_score"):
        differential_expression(
            tiny, compartments=[ct.EPITHELIUM], covariates=["severity_score"], method="ttest", min_cells=1
        )


# ---- reports -------------------------------------------------------------------------------------------------------


def test_truth_metrics_by_hand():
    table = pd.DataFrame(
        {
            "gene": list("ABCDE"),
            "padj": [0.01, 0.02, 0.03, 0.5, 0.9],
            "stat": [5, 4, -3, 1, 0.5],
            "rank": [1, 2, 5, 3, 4],
        }
    )
    truth = {
        "de_genes": {"stroma": np.array(["A", "D", "Z"]), "MNP": np.array([])},
        "composition_de_genes": {"stroma": {"up": np.array(["C"])}},
    }
    row = truth_metrics({"stroma": table}, truth).iloc[0]
    assert row["n_significant"] == 3
    assert row["tp_planted"] == 1
    assert row["tp_composition"] == 1
    assert row["precision"] == pytest.approx(2 / 3)
    assert row["precision_planted"] == pytest.approx(1 / 3)
    assert row["recall"] == pytest.approx(1 / 3)
    assert row["recall_composition"] == 1.0


def test_known_signature_ranks_by_hand():
    genes = [f"G{i}" for i in range(10)]
    table = pd.DataFrame(
        {
            "gene": genes,
            "stat": np.arange(10, 0, -1.0),
            "log2FC": 0.1,
            "padj": [0.01] * 3 + [0.9] * 7,
            "rank": range(1, 11),
        }
    )
    sets = {"TOP": GeneSet("TOP", ("G0", "G2", "MISSING")), "BOTTOM": GeneSet("BOTTOM", ("G8", "G9"))}
    out = known_signature_ranks({"stroma": table}, gene_sets=sets, genes=["G1", "NOPE"]).set_index("name")
    assert out.loc["TOP", "rank"] == 2.0
    assert out.loc["TOP", "n_tested"] == 2
    assert out.loc["TOP", "n_genes"] == 3
    assert out.loc["TOP", "percentile"] == pytest.approx(100 * (1 + 7 / 9) / 2)
    assert out.loc["TOP", "frac_up_significant"] == 1.0
    assert out.loc["BOTTOM", "frac_significant"] == 0.0
    assert out.loc["TOP", "enrichment_pvalue"] < out.loc["BOTTOM", "enrichment_pvalue"]
    assert out.loc["G1", "rank"] == 2
    assert out.loc["NOPE", "n_tested"] == 0
    assert np.isnan(out.loc["NOPE", "rank"])


# ---- discover: files, gene sets, MLflow -----------------------------------------------------------------------------


def test_discover_writes_loadable_gene_sets_and_logs_a_run(planted, module_mlflow_store, tmp_path):
    import mlflow

    out = tmp_path / "out"
    res = discover(
        planted, out_dir=out, compartments=[ct.STROMA, ct.LYMPHOID], method="ttest", min_cells=5, source="test"
    )
    assert {ct.STROMA, ct.LYMPHOID} <= set(res.summary["compartment"])
    for comp in (ct.STROMA, ct.LYMPHOID):
        assert (out / "de" / f"{comp}.csv").is_file()
        assert (out / "plots" / f"volcano_{comp}.png").is_file()
    assert (out / "known_signatures.csv").is_file()
    assert (out / "truth_metrics.csv").is_file()
    # The gene-set file loads as an experiment loads it (signature_files), next to the package's sets.
    name = "DISCOVERED_STROMA_UP"
    loaded = load_gene_sets([name, "OSM_RESPONSE"], path=[str(res.gene_set_path)])
    stroma = res.tables[ct.STROMA]
    expected = stroma[(stroma["padj"] < 0.05) & (stroma["stat"] > 0)].head(25)["gene"].tolist()
    assert list(loaded[name].genes) == expected
    assert 0 < len(expected) <= 25
    assert "test" in loaded[name].source
    assert res.run_id is not None
    header = res.gene_set_path.read_text().splitlines()[0].split("\t")
    assert header == ["set", "gene", "role", "source"]
    known = res.known.set_index(["name", "compartment"])
    assert known.loc[("OSM_RESPONSE", ct.STROMA), "percentile"] > 80
    run = mlflow.get_run(res.run_id)
    assert run.data.metrics["n_significant_stroma"] == len(stroma[stroma["padj"] < 0.05])
    assert "precision_stroma" in run.data.metrics
    assert "recall_stroma" in run.data.metrics
    assert run.data.params["method"] == "ttest"
    assert run.data.tags["kind"] == "discovery"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(res.run_id, "gene_sets")}
    assert arts == {"gene_sets/discovered_gene_sets.tsv"}


def test_discover_bad_input_leaves_no_run(tiny, module_mlflow_store, tmp_path):
    import mlflow

    bad = tiny.copy()
    del bad.obs[k.RESPONSE]
    with pytest.raises(DataSchemaError, match="response"):
        discover(bad, out_dir=tmp_path / "out", compartments=[ct.STROMA], experiment_name="bad-input")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataSchemaError, match="No compartment could be tested"):
            discover(
                tiny,
                out_dir=tmp_path / "o",
                compartments=[ct.STROMA],
                min_cells=10_000,
                experiment_name="bad-input",
            )
    from biomarkers.tracking._store import setup_mlflow

    setup_mlflow()
    exp = mlflow.get_experiment_by_name("bad-input")
    assert exp is None or mlflow.search_runs([exp.experiment_id]).empty


# ---- nested discovery: held-out labels are never used ------------------------------------------------------------------


def test_nested_feature_is_an_sklearn_transformer(planted):
    from sklearn.base import clone

    X = pseudobulk_table(planted, compartments=[ct.STROMA], min_cells=5)
    X["other"] = 1.0
    y = (planted.uns[k.TRUTH]["patients"][k.RESPONSE].loc[X.index] == k.NON_RESPONDER).astype(int)
    est = clone(NestedDiscoveryFeature(compartments=[ct.STROMA], top_n=10))
    Z = est.fit(X, y).transform(X)
    assert list(Z.columns) == ["disc__stroma", "other"] == list(est.get_feature_names_out())
    assert len(est.genes_[ct.STROMA]) == 10
    assert Z["disc__stroma"].notna().all()
    assert stats.mannwhitneyu(Z["disc__stroma"][y == 1], Z["disc__stroma"][y == 0]).pvalue < 0.01
    with pytest.raises(DataSchemaError, match="pseudobulk_table"):
        NestedDiscoveryFeature(compartments=[ct.MNP]).fit(X, y)


def test_discovery_runs_inside_folds_only(planted, monkeypatch):
    """A spy on the DE function: each call sees only that fold's training patients, never its test patients."""
    from biomarkers.discovery import _nested
    from biomarkers.models import patient_folds

    calls: list[set[str]] = []
    real = _nested.rank_genes

    def spy(counts, y, **kwargs):
        calls.append(set(map(str, counts.index)))
        return real(counts, y, **kwargs)

    monkeypatch.setattr(_nested, "rank_genes", spy)
    labels = (planted.uns[k.TRUTH]["patients"][k.RESPONSE] == k.NON_RESPONDER).astype(int).sort_index()
    folds = patient_folds(labels.to_numpy(), n_splits=4, n_repeats=2, seed=3)
    res = cv_with_discovery(
        planted, compartments=[ct.STROMA, ct.MNP], labels=labels, folds=folds, n_boot=100, min_cells=5
    )
    ids = labels.index.to_numpy()
    splits = [(tr, te) for rep in folds for tr, te in rep]
    assert len(calls) == 2 * len(splits)  # one DE per compartment per fold, none on all patients
    for i, (tr, te) in enumerate(splits):
        for seen in calls[2 * i : 2 * i + 2]:
            assert seen <= set(ids[tr])
            assert not seen & set(ids[te])
    assert len(res.selected) == 2 * len(splits)
    assert (res.selected["n_genes"] == 25).all()
    assert res.metrics["auroc"] > 0.6  # planted effects: the nested estimate still finds signal


def test_nested_cv_is_honest_on_null_cohort_while_leaky_is_inflated():
    from biomarkers.models import cross_validate_model, evaluate_predictions, patient_folds, summarize_oof

    adata = _with_compartments(
        bm.simulate_cohort(n_patients=30, cells_per_patient=120, n_genes=500, effect_size=0.0, seed=0)
    )
    labels = (adata.uns[k.TRUTH]["patients"][k.RESPONSE] == k.NON_RESPONDER).astype(int).sort_index()
    folds = patient_folds(labels.to_numpy(), n_splits=5, n_repeats=2, seed=0)
    nested = cv_with_discovery(adata, compartments=[ct.STROMA], labels=labels, folds=folds, n_boot=500, min_cells=3)
    assert nested.metrics["auroc_ci_low"] <= 0.5 <= nested.metrics["auroc_ci_high"]
    # Leaky: genes chosen on all patients (test folds' labels included), then cross-validated.
    counts, _ = pseudobulk(adata, compartment=ct.STROMA, min_cells=3)
    counts = counts.loc[labels.index]
    top = rank_genes(counts, labels.to_numpy(), method="ttest").query("stat > 0")["gene"].head(25)
    lc = np.log2(1e6 * counts.div(counts.sum(axis=1), axis=0) + 1)[top]
    X = pd.DataFrame({"disc__stroma": ((lc - lc.mean()) / lc.std()).mean(axis=1)})
    oof = summarize_oof(cross_validate_model({"kind": "logreg"}, X, labels, folds=folds))
    leaky = evaluate_predictions(oof["y_true"], oof["p"], n_boot=500)
    assert leaky["auroc_ci_low"] > 0.6
    assert leaky["auroc"] > nested.metrics["auroc"] + 0.25


def test_experiment_with_discovered_signature_discovers_inside_folds(monkeypatch):
    from biomarkers.config import ExperimentConfig
    from biomarkers.discovery import _nested, cv_experiment_with_discovery

    cfg = ExperimentConfig.model_validate(
        {
            "name": "nested-test",
            "data": {"simulate": {"n_patients": 20, "cells_per_patient": 100, "n_genes": 400, "seed": 1}},
            "preprocess": {"min_genes": 50, "min_counts": 100},
            "models": [{"kind": "logreg", "params": {"C": 0.1}}],
            "cv": {"n_splits": 4, "n_repeats": 1},
        }
    )
    seen: list[set[str]] = []
    real = _nested.rank_genes
    monkeypatch.setattr(
        _nested, "rank_genes", lambda counts, y, **kw: seen.append(set(counts.index)) or real(counts, y, **kw)
    )
    res = cv_experiment_with_discovery(cfg, compartments=[ct.STROMA], n_boot=100, top_n=10)["logreg"]
    n_patients = res.predictions.shape[0]
    assert len(seen) == 4
    assert all(len(s) < n_patients for s in seen)
    for f, s in enumerate(seen):
        held_out = set(res.oof.loc[res.oof["fold"] == f, k.PATIENT])
        assert not s & held_out
    assert (res.selected["n_genes"] == 10).all()
    assert set(res.selected["compartment"]) == {ct.STROMA}


# ---- streaming: a file one sample at a time, in process or on Dask, gives the in-memory results ------------------------


@pytest.fixture(scope="module")
def cohort_file(tmp_path_factory):
    """An h5ad of raw counts whose patients P001, P002, P007 span two interleaved samples of different batches."""
    adata = bm.simulate_cohort(n_patients=12, cells_per_patient=150, n_genes=400, seed=4)
    obs = adata.obs
    sample, batch = obs[k.SAMPLE].astype(str).to_numpy().copy(), obs[k.BATCH].astype(str).to_numpy().copy()
    patients = obs[k.PATIENT].astype(str).to_numpy()
    for p in ("P001", "P002", "P007"):
        idx = np.flatnonzero(patients == p)[1::2]  # every other cell: samples interleaved in the file
        sample[idx], batch[idx] = f"{p}_S2", "batch4"  # about half the cells: the batch vote may tie
    obs[k.SAMPLE], obs[k.BATCH] = pd.Categorical(sample), pd.Categorical(batch)
    folder = tmp_path_factory.mktemp("stream")
    adata.write_h5ad(folder / "cohort.h5ad")
    config = folder / "exp.yaml"
    config.write_text("name: stream\ndata: {path: cohort.h5ad}\npreprocess: {min_genes: 50, min_counts: 100}\n")
    return folder / "cohort.h5ad", config


def _assert_same_discovery(a, b):
    assert list(a.tables) == list(b.tables)
    for comp, table in a.tables.items():
        pd.testing.assert_frame_equal(table, b.tables[comp], check_exact=True)
    cols = [c for c in a.summary.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a.summary[cols], b.summary[cols], check_exact=True)
    pd.testing.assert_frame_equal(a.known, b.known, check_exact=True)
    pd.testing.assert_frame_equal(a.truth, b.truth, check_exact=True)
    assert {n: s.genes for n, s in a.gene_sets.items()} == {n: s.genes for n, s in b.gene_sets.items()}


DISCOVER_KW = {"compartments": [ct.STROMA, ct.MNP, "all"], "covariates": [k.BATCH, k.SEVERITY], "track": False}


def test_streamed_discovery_matches_in_memory(cohort_file, tmp_path, monkeypatch, caplog):
    """Per-sample pseudobulk sums added up: the same DE tables as the whole cohort processed in memory."""
    import logging

    import biomarkers.io
    from biomarkers.discovery import run_discovery

    _, config = cohort_file
    caplog.set_level(logging.INFO, logger="biomarkers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = run_discovery(config, out_dir=tmp_path / "m", method="deseq2_fast", stream=False, **DISCOVER_KW)
        assert "in memory (whole cohort)" in caplog.text

        def no_whole_read(*args, **kwargs):
            msg = "the streaming path must not read the whole cohort"
            raise AssertionError(msg)

        monkeypatch.setattr(biomarkers.io, "read_cohort", no_whole_read)
        streamed = run_discovery(config, out_dir=tmp_path / "s", method="deseq2_fast", **DISCOVER_KW)  # the default
    assert "streaming one sample at a time, in process" in caplog.text
    assert streamed.tables[ct.STROMA].attrs["covariates"] == [k.BATCH, k.SEVERITY]
    assert "stream_s" in streamed.timings
    _assert_same_discovery(streamed, whole)
    # The gene-set provenance names the same digest (the input file's) on both paths.
    digests = {next(iter(r.gene_sets.values())).source.split("sha256 ")[1][:12] for r in (whole, streamed)}
    assert len(digests) == 1


def test_pseudobulk_sums_match_the_cells(cohort_file):
    """Sums, per-patient metadata and covariates (ties included) against the whole cohort processed at once."""
    from biomarkers.discovery import _compartments, stream_pseudobulk
    from biomarkers.features import FeaturePipeline

    path, config = cohort_file
    cfg = bm.load_config(config)
    cells = FeaturePipeline.from_config(cfg).process(bm.read_cohort(path))
    sums = stream_pseudobulk(
        path, pipe=FeaturePipeline.from_config(cfg), compartments=[ct.STROMA, "all"], covariates=[k.BATCH, k.SEVERITY]
    )
    assert sums.n_cells_kept == cells.n_obs
    for comp in (ct.STROMA, "all"):
        for min_cells in (0, 10):
            expected = pseudobulk(cells, compartment=comp, min_cells=min_cells)
            for got, exp in zip(sums.pseudobulk(compartment=comp, min_cells=min_cells), expected, strict=True):
                # groupby().agg keeps a categorical column categorical; the values are what DE reads
                exp = exp.astype({c: object for c in exp.columns if isinstance(exp[c].dtype, pd.CategoricalDtype)})
                pd.testing.assert_frame_equal(got, exp, check_exact=True, check_dtype=False)
    multi = cells.obs.groupby(k.PATIENT, observed=True)[k.BATCH].nunique()
    assert (multi > 1).sum() == 3  # the patients spanning two batches are exercised
    covs = _compartments._patient_covariates(cells, [k.BATCH, k.SEVERITY], patient_col=k.PATIENT)
    pd.testing.assert_frame_equal(sums.covariates([k.BATCH, k.SEVERITY]), covs, check_exact=True, check_dtype=False)
    # Nested discovery reads the same wide table from the sums.
    table = pseudobulk_table(cells, compartments=[ct.STROMA], min_cells=5)
    pd.testing.assert_frame_equal(sums.table(compartments=[ct.STROMA], min_cells=5), table, check_exact=True)
    with pytest.raises(DataSchemaError, match="not accumulated"):
        sums.pseudobulk(compartment=ct.MNP)


@pytest.fixture(scope="module")
def tcp_cluster():
    """A scheduler on a real tcp:// address, with a threaded worker in this process (no worker start-up imports)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster


def test_dask_discovery_matches_in_memory(cohort_file, tmp_path, tcp_cluster, caplog):
    """One Dask task per sample (each worker reads and processes its own), against the file read whole."""
    import logging

    from biomarkers.discovery import run_discovery

    path, config = cohort_file
    caplog.set_level(logging.INFO, logger="biomarkers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = run_discovery(config, out_dir=tmp_path / "m", method="ttest", stream=False, **DISCOVER_KW)
        dask = run_discovery(
            config, out_dir=tmp_path / "d", method="ttest", scheduler=tcp_cluster.scheduler_address, **DISCOVER_KW
        )
        assert f"on Dask ({tcp_cluster.scheduler_address})" in caplog.text
        _assert_same_discovery(dask, whole)
        # A cohort file given directly, already annotated: its cells are used as they are, on both paths.
        annotated = tmp_path / "annotated.h5ad"
        _with_compartments(bm.read_cohort(path)).write_h5ad(annotated)
        kw = {**DISCOVER_KW, "method": "ttest"}
        whole = run_discovery(annotated, out_dir=tmp_path / "am", stream=False, **kw)
        _assert_same_discovery(run_discovery(annotated, out_dir=tmp_path / "as", **kw), whole)


def test_nested_discovery_on_a_streamed_experiment(cohort_file, caplog):
    """Nested CV of a streamed experiment uses the file's pseudobulk sums: the same folds' DE as in memory."""
    import logging

    from biomarkers.discovery import cv_experiment_with_discovery

    _, config = cohort_file
    caplog.set_level(logging.INFO, logger="biomarkers")
    over = ["cv.n_splits=3", "cv.n_repeats=1", "models=[{kind: logreg}]"]
    kw = {"compartments": [ct.MNP], "top_n": 5, "n_boot": 50}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streamed = cv_experiment_with_discovery(bm.load_config(config, overrides=over), **kw)["logreg"]
        in_memory = bm.load_config(config, overrides=[*over, "compute.stream=false"])
        whole = cv_experiment_with_discovery(in_memory, **kw)["logreg"]
    assert "cv_experiment_with_discovery: pseudobulk of cohort.h5ad, streaming" in caplog.text
    assert streamed.oof[k.PATIENT].nunique() == 12
    pd.testing.assert_frame_equal(streamed.oof, whole.oof)
    pd.testing.assert_frame_equal(streamed.selected, whole.selected)


# ---- CLI and API conventions -----------------------------------------------------------------------------------------


def test_discovery_method_key_picks_the_deseq2_inference(tmp_path, monkeypatch):
    """``discovery.method`` decides how ``deseq2`` (the CLI default) is fitted: PyDESeq2's own unless opted in."""
    from biomarkers.discovery import _entry

    seen = []
    monkeypatch.setattr(_entry, "_cells_from_config", lambda cfg: (None, "sim", None))
    monkeypatch.setattr(_entry, "discover", lambda cells, **kw: seen.append(kw["method"]))
    plain, fast = tmp_path / "plain.yaml", tmp_path / "fast.yaml"
    plain.write_text("name: plain\n")
    fast.write_text("name: fast\ndiscovery: {method: deseq2_fast}\n")
    for path, method in [(plain, "deseq2"), (fast, "deseq2"), (fast, "ttest"), (fast, "deseq2_fast")]:
        _entry.run_discovery(path, out_dir=tmp_path / "out", method=method, track=False)
    _entry.run_discovery(plain, out_dir=tmp_path / "out", overrides=["discovery.method=deseq2_fast"], track=False)
    assert seen == ["deseq2", "deseq2_fast", "ttest", "deseq2_fast", "deseq2_fast"]
    with pytest.raises(ConfigError, match=r"discovery\.method"):
        bm.load_config(plain, overrides=["discovery.method=fast"])


def test_cli_discover_on_h5ad(tmp_path):
    import typer
    from typer.testing import CliRunner

    from biomarkers.cli import _discover

    app = typer.Typer()
    app.callback()(lambda: None)
    _discover.register(app)
    runner = CliRunner()
    help_text = runner.invoke(app, ["discover", "--help"], terminal_width=200).output
    assert "EXPERIMENT_OR_COHORT" in help_text
    assert "deseq2_fast" in help_text
    assert "--scheduler" in help_text
    adata = _with_compartments(bm.simulate_cohort(n_patients=16, cells_per_patient=80, n_genes=400, seed=2))
    path = tmp_path / "cohort.h5ad"
    adata.write_h5ad(path)
    args = ["discover", str(path), "--compartment", "stroma", "--compartment", "epithelium", "--method", "ttest"]
    args += ["--no-covariates"]
    result = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "out"), "--no-track", "--top-n", "5"])
    assert result.exit_code == 0, result.output
    assert "stroma" in result.output
    assert "epithelium" in result.output
    assert str(tmp_path / "out") in result.output
    assert (tmp_path / "out" / "de" / "stroma.csv").is_file()
    bad = runner.invoke(app, ["discover", str(path), "--compartment", "liver"])
    assert bad.exit_code != 0


def test_public_api_conventions():
    for name in discovery.__all__:
        obj = getattr(discovery, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            continue
        params = list(inspect.signature(obj).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(positional) <= 3, name
        assert not any(p.annotation in ("bool", bool) for p in positional), name
