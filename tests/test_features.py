from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

import biomarkers as bm
from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers.features import DEFAULT_PLAN, FeaturePipeline, combine_stats, feature_name
from biomarkers.signatures import load_gene_sets


def _labels(adata) -> pd.Series:
    return adata.obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].first().astype(str) == K.NON_RESPONDER


def _planted_test(features: pd.DataFrame, y: pd.Series, column: str) -> tuple[float, float]:
    """One-sided Mann-Whitney p (NR > R) and the difference in means."""
    nr, r = features.loc[y[y].index, column].dropna(), features.loc[y[~y].index, column].dropna()
    return mannwhitneyu(nr, r, alternative="greater").pvalue, nr.mean() - r.mean()


@pytest.fixture(scope="module")
def default_features(processed_default):
    pipe, cells = processed_default
    return pipe.finalize(pipe.stats(cells)), cells


def test_feature_names_are_safe(default_features):
    feats, _ = default_features
    for name in feats.columns:
        assert all(seg and set(seg) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") for seg in name.split("__"))
    assert {"aqp9_macrophage_fraction", "n_cells", "prop__macrophage", "sig__MNP__AQP9_INFLAMMATORY_MACROPHAGE",
            "sig__stroma__IL6_JAK_STAT3", "pb__MNP__OSM", "pb__stroma__OSMR", "pb__all__SOCS3"} <= set(feats.columns)  # fmt: skip


def test_features_match_an_independent_groupby(default_features):
    feats, cells = default_features
    obs = cells.obs
    n = obs.groupby(K.PATIENT, observed=True).size()
    np.testing.assert_allclose(feats[K.N_CELLS], n.loc[feats.index])
    prop = (obs[K.CELL_TYPE] == CT.FIBROBLAST).groupby(obs[K.PATIENT], observed=True).mean()
    np.testing.assert_allclose(feats["prop__fibroblast"], prop.loc[feats.index])
    mnp = obs[obs[K.COMPARTMENT] == CT.MNP]
    frac = mnp[K.AQP9_MAC].groupby(mnp[K.PATIENT], observed=True).mean()
    np.testing.assert_allclose(feats[K.AQP9_FRACTION], frac.loc[feats.index])
    sig = mnp[K.SIG_PREFIX + "AQP9_INFLAMMATORY_MACROPHAGE"].groupby(mnp[K.PATIENT], observed=True).mean()
    np.testing.assert_allclose(feats["sig__MNP__AQP9_INFLAMMATORY_MACROPHAGE"], sig.loc[feats.index])
    # pseudobulk: summed raw counts in the compartment, log1p CPM
    counts = pd.DataFrame(cells[:, ["OSM"]].layers[K.COUNTS].toarray(), index=obs.index, columns=["OSM"])
    tot = pd.Series(np.asarray(cells.layers[K.COUNTS].sum(axis=1)).ravel(), index=obs.index)
    m = obs[K.COMPARTMENT] == CT.MNP
    expected = np.log1p(1e6 * counts["OSM"][m].groupby(obs[K.PATIENT][m], observed=True).sum()
                        / tot[m].groupby(obs[K.PATIENT][m], observed=True).sum())  # fmt: skip
    np.testing.assert_allclose(feats["pb__MNP__OSM"], expected.loc[feats.index], rtol=1e-6)


def test_planted_biology_is_recovered_in_the_planted_direction(default_features):
    feats, cells = default_features
    y = _labels(cells).loc[feats.index]
    p_aqp9, d_aqp9 = _planted_test(feats, y, K.AQP9_FRACTION)
    p_stat3, d_stat3 = _planted_test(feats, y, "sig__stroma__IL6_JAK_STAT3")
    assert d_aqp9 > 0
    assert p_aqp9 < 0.01
    assert d_stat3 > 0
    assert p_stat3 < 0.05


def test_null_cohort_shows_no_planted_difference(default_features):
    # Same patients and labels as the default cohort (the simulator pairs them), no planted biology.
    feats_planted, cells = default_features
    adata = bm.simulate_cohort(effect_size=0.0, seed=0)
    feats = bm.build_features(adata)
    y = _labels(adata).loc[feats.index]
    y_planted = _labels(cells).loc[feats_planted.index]
    for col in (K.AQP9_FRACTION, "sig__stroma__IL6_JAK_STAT3"):
        p, diff = _planted_test(feats, y, col)
        _, diff_planted = _planted_test(feats_planted, y_planted, col)
        assert p > 0.01, col
        assert abs(diff) < 0.5 * diff_planted, col


@pytest.mark.slow
def test_null_cohorts_over_seeds():
    from scipy.stats import combine_pvalues

    for col in (K.AQP9_FRACTION, "sig__stroma__IL6_JAK_STAT3"):
        ps = []
        for seed in range(4):
            adata = bm.simulate_cohort(effect_size=0.0, seed=seed)
            feats = bm.build_features(adata)
            nr_r = _labels(adata).loc[feats.index]
            a, b = feats.loc[nr_r[nr_r].index, col].dropna(), feats.loc[nr_r[~nr_r].index, col].dropna()
            ps.append(mannwhitneyu(a, b).pvalue)
        assert combine_pvalues(ps, method="fisher").pvalue > 0.05, (col, ps)


def test_chunks_add_up_to_the_whole(small_cohort):
    pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))
    whole = pipe.transform(small_cohort)
    samples = small_cohort.obs[K.SAMPLE].cat.categories
    chunks = [small_cohort[small_cohort.obs[K.SAMPLE] == s].copy() for s in samples[::-1]]
    pd.testing.assert_frame_equal(pipe.transform_chunks(chunks), whole, check_exact=False, rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_features_do_not_depend_on_cell_order(seed):
    adata = bm.simulate_cohort(n_patients=4, cells_per_patient=80, n_genes=400, seed=1)
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    a = bm.build_features(adata)
    b = bm.build_features(adata[perm].copy())
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)


def test_combine_stats_preserves_patients_and_totals(default_features):
    pipe, cells = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN))), default_features[1]
    st_all = pipe.stats(cells)
    half = cells.n_obs // 2
    parts = combine_stats([pipe.stats(cells[:half].copy()), pipe.stats(cells[half:].copy())])
    pd.testing.assert_frame_equal(parts, st_all.loc[parts.index], check_exact=False, rtol=1e-9)
    assert parts[K.N_CELLS].sum() == cells.n_obs


def test_feature_name_cleans_unsafe_characters():
    assert feature_name("pb", "MNP", "HLA-DRA") == "pb__MNP__HLA-DRA"
    assert feature_name("prop", "CD8+ T [naive]") == "prop__CD8..T..naive."
