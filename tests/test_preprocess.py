from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import biomarkers as bm
from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError


def test_qc_metrics_match_scanpy(small_cohort):
    bm.preprocess.qc_metrics(small_cohort)
    ref = small_cohort.copy()
    ref.var["mt_ref"] = ref.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(ref, qc_vars=["mt_ref"], inplace=True, percent_top=None)
    np.testing.assert_allclose(small_cohort.obs[K.QC_N_COUNTS], ref.obs["total_counts"])
    np.testing.assert_array_equal(small_cohort.obs[K.QC_N_GENES], ref.obs["n_genes_by_counts"])
    np.testing.assert_allclose(small_cohort.obs[K.QC_PCT_MT], ref.obs["pct_counts_mt_ref"], rtol=1e-6)


def test_qc_removes_planted_low_quality_cells(default_cohort):
    n_low = int(default_cohort.obs[K.TRUE_LOW_QUALITY].sum())
    out = bm.qc(default_cohort, copy=True)
    assert int(out.obs[K.TRUE_LOW_QUALITY].sum()) <= 0.05 * n_low
    assert out.n_obs > 0.85 * default_cohort.n_obs
    assert out.uns[K.BM]["qc"]["n_cells_kept"] == out.n_obs


def test_qc_thresholds_are_per_sample(small_cohort):
    # Doubling one sample's depth must not filter that sample away: MAD bounds follow each sample.
    ad = small_cohort.copy()
    first = ad.obs[K.SAMPLE] == ad.obs[K.SAMPLE].cat.categories[0]
    x = ad.X.tolil()
    idx = np.where(first.to_numpy())[0]
    x[idx] = x[idx] * 3
    ad.X = x.tocsr()
    out = bm.qc(ad, copy=True, min_genes=50, min_counts=100)
    kept_first = (out.obs[K.SAMPLE] == ad.obs[K.SAMPLE].cat.categories[0]).sum()
    assert kept_first > 0.8 * first.sum()


def test_qc_no_mt_genes_is_a_clear_error(small_cohort):
    ad = small_cohort[:, ~small_cohort.var_names.str.startswith("MT-")].copy()
    with pytest.raises(DataSchemaError, match="No mitochondrial genes"):
        bm.qc(ad)
    assert bm.qc(ad, max_pct_mt=None, copy=True).n_obs > 0


def test_qc_sample_with_no_cells_left(small_cohort):
    with pytest.raises(DataSchemaError, match="No cells left after QC"):
        bm.qc(small_cohort, min_genes=10**6)


def test_normalize_keeps_counts_and_matches_scanpy(small_cohort):
    ad = small_cohort.copy()
    raw = ad.X.copy()
    bm.normalize(ad)
    assert (ad.layers[K.COUNTS] != raw).nnz == 0
    ref = small_cohort.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(ad.X.toarray(), ref.X.toarray(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("values", "match"),
    [(np.log1p(np.arange(1, 5, dtype=float)), "not raw counts"), (-np.ones(4), "negative"), (np.array([1, np.nan, 2, 3.0]), "NaN")],
)
def test_check_counts_refuses_non_counts(values, match):
    import anndata as ad

    a = ad.AnnData(sparse.csr_matrix(values.reshape(2, 2)))
    with pytest.raises(DataSchemaError, match=match):
        bm.preprocess.check_counts(a)


def test_annotation_accuracy_on_simulated_truth(processed_default):
    _, p = processed_default
    ok = ~p.obs[K.TRUE_DOUBLET].astype(bool)
    truth = p.obs[K.TRUE_CELL_TYPE].astype(str).map(CT.FINE_TO_MAJOR)[ok]
    called = p.obs[K.CELL_TYPE].astype(str)[ok]
    assert (truth == called).mean() >= 0.90
    mnp = truth.isin([CT.MACROPHAGE, CT.DENDRITIC])
    assert (p.obs[K.COMPARTMENT][ok][mnp] == CT.MNP).mean() >= 0.90
    assert p.obs[K.CELL_TYPE_CONF].between(0, 1).all()


def test_annotation_is_per_cell(small_cohort):
    # A cell's label must not depend on which other cells are annotated with it (streaming, predict).
    ad = small_cohort.copy()
    bm.normalize(ad)
    whole = bm.annotate(ad, copy=True).obs[K.CELL_TYPE].astype(str)
    half = ad[: ad.n_obs // 2].copy()
    part = bm.annotate(half, copy=True).obs[K.CELL_TYPE].astype(str)
    pd.testing.assert_series_equal(whole.iloc[: ad.n_obs // 2], part)


def test_annotation_refine_runs_and_keeps_labels_valid(small_cohort):
    ad = small_cohort.copy()
    bm.normalize(ad)
    bm.annotate(ad, refine=True)
    assert set(ad.obs[K.CELL_TYPE].astype(str)) <= {*CT.MAJOR_TYPES, bm.preprocess.UNASSIGNED}


def test_annotation_without_markers_explains(small_cohort):
    ad = small_cohort.copy()
    ad.var_names = [f"ENSG{i:011d}" for i in range(ad.n_vars)]
    bm.normalize(ad)
    with pytest.raises(DataSchemaError, match="Ensembl"):
        bm.annotate(ad)


def test_aqp9_call_tracks_inflammatory_macrophages(processed_default):
    _, p = processed_default
    mac = (p.obs[K.CELL_TYPE] == CT.MACROPHAGE) & ~p.obs[K.TRUE_DOUBLET].astype(bool)
    inflammatory = p.obs[K.TRUE_CELL_TYPE].astype(str) == CT.INFLAMMATORY_MAC
    acc = (p.obs.loc[mac, K.AQP9_MAC] == inflammatory[mac]).mean()
    assert acc >= 0.9
    assert not p.obs.loc[p.obs[K.COMPARTMENT] != CT.MNP, K.AQP9_MAC].any()


def _scrublet_per_sample_loop(adata, sample_col, seed):
    """The hand-written loop that ``sc.pp.scrublet(batch_key=...)`` replaced, kept here as the reference."""
    calls = pd.Series(data=False, index=adata.obs_names)
    score = pd.Series(np.nan, index=adata.obs_names)
    for _, idx in adata.obs.groupby(sample_col, observed=True).indices.items():
        if len(idx) < 50:
            continue
        sub = adata[idx].copy()
        sc.pp.scrublet(sub, random_state=seed, verbose=False)
        calls.iloc[idx] = sub.obs["predicted_doublet"].astype(bool).to_numpy()
        score.iloc[idx] = sub.obs["doublet_score"].to_numpy()
    return calls, score


@pytest.fixture
def fixed_threshold_scrublet(monkeypatch):
    """scikit-image (Scrublet's automatic threshold) is not a dependency: a fixed threshold for every call."""
    from functools import partial

    monkeypatch.setattr(sc.pp, "scrublet", partial(sc.pp.scrublet, threshold=0.1))


def test_scrublet_batch_key_matches_the_per_sample_loop(small_cohort, fixed_threshold_scrublet):
    from biomarkers.preprocess._qc import _scrublet_calls

    samples = ["P007_S1", "P011_S1", "P001_S1"]
    ad = small_cohort[small_cohort.obs[K.SAMPLE].isin(samples)].copy()
    cut = ad.obs_names[(ad.obs[K.SAMPLE] == "P001_S1").to_numpy()][40:]  # P001_S1: 40 cells, below the guard
    ad = ad[~ad.obs_names.isin(cut)].copy()
    ref_calls, ref_score = _scrublet_per_sample_loop(ad, K.SAMPLE, seed=0)
    calls = _scrublet_calls(ad, sample_col=K.SAMPLE, seed=0)
    pd.testing.assert_series_equal(calls, ref_calls)
    np.testing.assert_allclose(ad.obs[K.QC_DOUBLET_SCORE], ref_score)
    small = (ad.obs[K.SAMPLE] == "P001_S1").to_numpy()
    assert not calls[small].any()
    assert ad.obs.loc[small, K.QC_DOUBLET_SCORE].isna().all()
    assert calls.any()


def test_scrublet_skips_cells_its_filters_drop(small_cohort, fixed_threshold_scrublet):
    """A cell with 2 genes: plain sc.pp.scrublet(batch_key=...) raises KeyError (scverse/scanpy#2377); ours skips it."""
    from biomarkers.preprocess._qc import _scrublet_calls

    ad = small_cohort[small_cohort.obs[K.SAMPLE].isin(["P007_S1", "P011_S1"])].copy()
    x = ad.X.tolil()
    x[0] = 0
    x[0, :2] = 5
    ad.X = x.tocsr()
    with pytest.raises(KeyError):
        sc.pp.scrublet(ad.copy(), batch_key=K.SAMPLE, verbose=False)
    calls = _scrublet_calls(ad, sample_col=K.SAMPLE, seed=0)
    assert not calls.iloc[0]
    assert np.isnan(ad.obs[K.QC_DOUBLET_SCORE].iloc[0])
    assert ad.obs[K.QC_DOUBLET_SCORE].iloc[1:].notna().all()


def test_doublet_removal_runs_with_scrublets_own_threshold(small_cohort):
    # scikit-image (the doublets extra) gives Scrublet its automatic threshold; no threshold is fixed here.
    pytest.importorskip("skimage")
    kept = bm.qc(small_cohort, remove_doublets=True, copy=True)
    assert 0 < kept.n_obs < small_cohort.n_obs
    assert K.QC_DOUBLET_SCORE in kept.obs


def test_doublet_removal_without_scikit_image_names_the_extra(small_cohort, monkeypatch):
    import sys

    from biomarkers._errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "skimage.filters", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'biomarkers\[doublets\]'"):
        bm.qc(small_cohort, remove_doublets=True, copy=True)
