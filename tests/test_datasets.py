"""Tests of the simulated cohort (biomarkers.datasets)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.metrics import roc_auc_score

import biomarkers
from biomarkers import _celltypes as ct
from biomarkers import _keys as k
from biomarkers._errors import ConfigError
from biomarkers.datasets import _effects, _genes, _profiles, simulate_cohort

SMALL = {"n_patients": 12, "cells_per_patient": 60, "n_genes": 600}
GENE_SETS = Path(biomarkers.__file__).parent / "signatures" / "data" / "gene_sets.tsv"
OBS_COLUMNS = (
    k.PATIENT,
    k.SAMPLE,
    k.RESPONSE,
    k.BATCH,
    k.SEVERITY,
    k.TRUE_CELL_TYPE,
    k.TRUE_DOUBLET,
    k.TRUE_LOW_QUALITY,
)


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return simulate_cohort(seed=0, **SMALL)


@pytest.fixture(scope="module")
def gene_sets() -> pd.DataFrame:
    return pd.read_csv(GENE_SETS, sep="\t")


def _pseudobulk_log2cpm(adata: ad.AnnData, cell_types: list[str], genes: list[str]) -> pd.Series:
    """Per-patient log2 CPM of the summed counts of `genes` over clean cells of `cell_types`."""
    obs = adata.obs
    clean = (~obs[k.TRUE_DOUBLET] & ~obs[k.TRUE_LOW_QUALITY] & obs[k.TRUE_CELL_TYPE].isin(cell_types)).to_numpy()
    sub = adata[clean]
    lib = pd.Series(np.asarray(sub.X.sum(axis=1)).ravel()).groupby(sub.obs[k.PATIENT].to_numpy()).sum()
    gene_counts = np.asarray(sub[:, genes].X.sum(axis=1)).ravel()
    summed = pd.Series(gene_counts).groupby(sub.obs[k.PATIENT].to_numpy()).sum()
    return np.log2(summed / lib * 1e6 + 1)


def test_counts_are_raw_integer_csr(small: ad.AnnData) -> None:
    x = small.X
    assert sparse.issparse(x)
    assert x.format == "csr"
    assert x.dtype == np.float32
    assert x.has_canonical_format
    assert np.all(x.data > 0)
    assert np.array_equal(x.data, np.round(x.data))
    counts = small.layers[k.COUNTS]
    assert counts is not x
    assert (counts != x).nnz == 0
    depth = np.asarray(x.sum(axis=1)).ravel()
    clean = ~small.obs[k.TRUE_LOW_QUALITY].to_numpy() & ~small.obs[k.TRUE_DOUBLET].to_numpy()
    assert 1500 < np.median(depth[clean]) < 6000


def test_counts_are_overdispersed() -> None:
    adata = simulate_cohort(n_patients=4, cells_per_patient=400, n_genes=600, seed=3, doublet_rate=0.0)
    obs = adata.obs
    cells = (obs[k.PATIENT] == "P001") & (obs[k.TRUE_CELL_TYPE] == ct.EPITHELIAL) & ~obs[k.TRUE_LOW_QUALITY]
    x = adata[cells.to_numpy()].X.toarray()
    x = x / x.sum(axis=1, keepdims=True) * np.median(x.sum(axis=1))
    mean, var = x.mean(axis=0), x.var(axis=0)
    high = mean > 5
    assert high.sum() > 20
    assert np.median(var[high] / mean[high]) > 1.5


def test_obs_metadata(small: ad.AnnData) -> None:
    obs = small.obs
    assert set(OBS_COLUMNS) <= set(obs.columns)
    for col in (k.PATIENT, k.SAMPLE, k.RESPONSE, k.BATCH, k.TRUE_CELL_TYPE):
        assert isinstance(obs[col].dtype, pd.CategoricalDtype), col
    assert obs.index.is_unique
    assert obs[k.PATIENT].nunique() == SMALL["n_patients"]
    assert obs[k.BATCH].nunique() == 3
    assert set(obs[k.TRUE_CELL_TYPE].cat.categories) == set(ct.FINE_TO_MAJOR)
    per_patient = obs.groupby(k.PATIENT, observed=True)[[k.RESPONSE, k.BATCH, k.SEVERITY]].nunique()
    assert (per_patient == 1).all().all()
    response = obs.drop_duplicates(k.PATIENT)[k.RESPONSE].value_counts()
    assert set(response.index) == {k.RESPONDER, k.NON_RESPONDER}
    assert response.min() >= 2
    assert obs[k.SEVERITY].between(0, 3).all()
    n_cells = obs[k.PATIENT].value_counts()
    assert n_cells.min() != n_cells.max()


def test_gene_panel(small: ad.AnnData, gene_sets: pd.DataFrame) -> None:
    genes = set(small.var_names)
    assert small.n_vars == SMALL["n_genes"]
    assert small.var_names.is_unique
    assert set(gene_sets["gene"]) <= genes
    markers = {g for m in ct.MARKERS.values() for g in m}
    assert markers | set(ct.INFLAMMATORY_MAC_MARKERS) | set(ct.RESIDENT_MAC_MARKERS) <= genes
    mt = small.var_names[small.var[k.MT].to_numpy()]
    assert set(mt) == set(_genes.MT_GENES)
    assert len(mt) == 13
    assert all("." not in g for g in genes)


@pytest.mark.parametrize("n_genes", [60, 300])
def test_small_panels_keep_key_genes(n_genes: int) -> None:
    adata = simulate_cohort(n_patients=6, cells_per_patient=40, n_genes=n_genes, seed=0)
    genes = set(adata.var_names)
    assert adata.n_vars == n_genes
    assert set(_genes.MT_GENES) | set(_genes.KEY_GENES) <= genes
    for markers in ct.MARKERS.values():
        assert genes & set(markers)
    assert list(adata.uns[k.TRUTH]["de_genes"][ct.MNP]) == ["OSM"]


def test_embedded_programs_match_gene_sets(gene_sets: pd.DataFrame) -> None:
    sets = gene_sets.groupby("set")["gene"].apply(set)
    assert set(_profiles.AQP9_PROGRAM) == sets["AQP9_INFLAMMATORY_MACROPHAGE"]
    assert set(_profiles.RESIDENT_PROGRAM) == sets["RESIDENT_MACROPHAGE"]
    assert set(_profiles.MACROPHAGE_CORE) == sets["MACROPHAGE_CORE"]
    assert set(_profiles.ACTIVATED_DC_PROGRAM) == sets["ACTIVATED_DC"]
    assert set(_effects.OSM_RESPONSE) == sets["OSM_RESPONSE"]
    assert set(_effects.STROMAL_STAT3_TARGETS) <= sets["IL6_JAK_STAT3"] | sets["OSM_RESPONSE"]


def test_mt_fraction_and_qc_flags(small: ad.AnnData) -> None:
    x = small.X
    depth = np.asarray(x.sum(axis=1)).ravel()
    pct_mt = np.asarray(x[:, small.var[k.MT].to_numpy()].sum(axis=1)).ravel() / depth
    lq = small.obs[k.TRUE_LOW_QUALITY].to_numpy()
    dbl = small.obs[k.TRUE_DOUBLET].to_numpy()
    healthy = ~lq & ~dbl
    assert lq.any()
    assert dbl.any()
    assert not (lq & dbl).any()
    assert 0.03 <= np.median(pct_mt[healthy]) <= 0.08
    assert np.median(pct_mt[lq]) > 0.15
    assert np.median(depth[lq]) < 0.5 * np.median(depth[healthy])
    assert np.median(depth[dbl]) > 1.3 * np.median(depth[healthy])


def test_no_qc_artefacts_when_rates_are_zero() -> None:
    adata = simulate_cohort(seed=1, doublet_rate=0.0, low_quality_rate=0.0, **SMALL)
    assert not adata.obs[k.TRUE_DOUBLET].any()
    assert not adata.obs[k.TRUE_LOW_QUALITY].any()


def test_deterministic(small: ad.AnnData) -> None:
    again = simulate_cohort(seed=0, **SMALL)
    assert (again.X != small.X).nnz == 0
    pd.testing.assert_frame_equal(again.obs, small.obs)
    pd.testing.assert_frame_equal(again.uns[k.TRUTH]["patients"], small.uns[k.TRUTH]["patients"])
    other = simulate_cohort(seed=1, **SMALL)
    assert other.n_obs != small.n_obs or (other.X != small.X).nnz > 0


def test_truth_structure(small: ad.AnnData) -> None:
    truth = small.uns[k.TRUTH]
    assert truth["effect_size"] == 1.0
    assert truth["seed"] == 0
    assert truth["version"]
    effects = truth["effects"]
    assert {k.AQP9_FRACTION, _effects.MYELOID_OSM, _effects.STROMA_OSM_RESPONSE} <= set(effects)
    assert effects[k.AQP9_FRACTION]["direction"] == "up_in_non_responder"
    assert effects[k.AQP9_FRACTION]["log_odds_shift_per_sd"] > 0
    assert set(truth["de_genes"]) == set(ct.COMPARTMENTS)
    assert list(truth["de_genes"][ct.MNP]) == ["OSM"]
    assert {"OSMR", "SOCS3", "STAT3"} <= set(truth["de_genes"][ct.STROMA])
    assert set(truth["de_genes"][ct.STROMA]) <= set(small.var_names)
    assert len(truth["de_genes"][ct.LYMPHOID]) == 0
    assert "AQP9" in truth["composition_de_genes"][ct.MNP]["up_in_non_responder"]
    patients = truth["patients"]
    assert list(patients.index) == list(small.obs[k.PATIENT].cat.categories)
    assert {"latent_risk", "aqp9_fraction_expected", "aqp9_fraction_observed", k.RESPONSE} <= set(patients)
    counts = small.obs[k.PATIENT].value_counts()
    assert (patients["n_cells"] == counts.loc[patients.index]).all()
    # ideal_auroc against an independent AUROC implementation
    expected = roc_auc_score(patients[k.RESPONSE] == k.NON_RESPONDER, patients["latent_risk"])
    assert truth["ideal_auroc"] == pytest.approx(expected)
    # observed AQP9 fraction recomputed from the cells
    obs = small.obs[~small.obs[k.TRUE_DOUBLET]]
    mnp = obs[obs[k.TRUE_CELL_TYPE].isin([ct.RESIDENT_MAC, ct.INFLAMMATORY_MAC, ct.DENDRITIC])]
    frac = (mnp[k.TRUE_CELL_TYPE] == ct.INFLAMMATORY_MAC).groupby(mnp[k.PATIENT].astype(str)).mean()
    pd.testing.assert_series_equal(
        patients["aqp9_fraction_observed"].loc[frac.index], frac, check_names=False, check_index_type=False
    )


def test_truth_round_trips_through_h5ad(small: ad.AnnData, tmp_path: Path) -> None:
    path = tmp_path / "cohort.h5ad"
    small.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != small.X).nnz == 0
    assert (back.layers[k.COUNTS] != small.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, small.obs)
    truth, orig = back.uns[k.TRUTH], small.uns[k.TRUTH]
    pd.testing.assert_frame_equal(truth["patients"], orig["patients"], check_dtype=False)
    assert truth["ideal_auroc"] == pytest.approx(orig["ideal_auroc"])
    for comp, genes in orig["de_genes"].items():
        assert list(truth["de_genes"][comp]) == list(genes)
    stroma = truth["effects"][_effects.STROMA_OSM_RESPONSE]
    np.testing.assert_allclose(stroma["log2fc_per_sd"], orig["effects"][_effects.STROMA_OSM_RESPONSE]["log2fc_per_sd"])


def test_markers_highest_in_their_cell_types() -> None:
    adata = simulate_cohort(n_patients=6, cells_per_patient=500, n_genes=600, seed=2)
    obs = adata.obs
    clean = (~obs[k.TRUE_DOUBLET] & ~obs[k.TRUE_LOW_QUALITY]).to_numpy()
    x = adata.X[clean]
    logn = np.log1p(x.multiply(1e4 / x.sum(axis=1)).tocsr())
    labels = obs.loc[clean, k.TRUE_CELL_TYPE].to_numpy()
    types = sorted(set(labels))
    means = pd.DataFrame(
        np.vstack([np.asarray(logn[labels == t].mean(axis=0)).ravel() for t in types]),
        index=types,
        columns=adata.var_names,
    )
    major = means.groupby([ct.FINE_TO_MAJOR[t] for t in types]).mean()
    for cell_type, markers in ct.MARKERS.items():
        for gene in markers:
            owners = {m for m, genes in ct.MARKERS.items() if gene in genes}
            assert major[gene].idxmax() in owners, (cell_type, gene)
    for gene in ct.INFLAMMATORY_MAC_MARKERS:
        assert means[gene].idxmax() in {ct.INFLAMMATORY_MAC, ct.NEUTROPHIL}, gene
    for gene in ct.RESIDENT_MAC_MARKERS:
        assert means[gene].idxmax() == ct.RESIDENT_MAC, gene
    assert means["AQP9"].nlargest(2).index.tolist() in (
        [ct.INFLAMMATORY_MAC, ct.NEUTROPHIL],
        [ct.NEUTROPHIL, ct.INFLAMMATORY_MAC],
    )
    # AQP9 is still expressed above background by resident macrophages (a gradient, not a switch)
    assert means.loc[ct.RESIDENT_MAC, "AQP9"] > 3 * means.loc[ct.T_CELL, "AQP9"]


@pytest.fixture(scope="module")
def larger() -> dict[float, ad.AnnData]:
    kwargs = {"n_patients": 60, "cells_per_patient": 150, "n_genes": 600, "seed": 7}
    return {effect: simulate_cohort(effect_size=effect, **kwargs) for effect in (1.0, 0.0)}


def _auroc_by_response(adata: ad.AnnData, values: pd.Series) -> float:
    """AUROC of a per-patient value for non-response (patients without a value, e.g. no MNPs, left out)."""
    patients = adata.uns[k.TRUTH]["patients"]
    values = values.reindex(patients.index)
    known = values.notna().to_numpy()
    return roc_auc_score(patients[k.RESPONSE][known] == k.NON_RESPONDER, values[known])


def test_planted_effects_hold(larger: dict[float, ad.AnnData]) -> None:
    adata = larger[1.0]
    patients = adata.uns[k.TRUTH]["patients"]
    nr = patients[k.RESPONSE] == k.NON_RESPONDER
    assert 0.7 <= adata.uns[k.TRUTH]["ideal_auroc"] < 1.0
    frac = patients["aqp9_fraction_observed"]
    assert frac[nr].mean() > frac[~nr].mean()
    assert patients.loc[nr, "aqp9_fraction_expected"].mean() > patients.loc[~nr, "aqp9_fraction_expected"].mean()
    assert _auroc_by_response(adata, patients["aqp9_fraction_observed"]) > 0.65
    osm = _pseudobulk_log2cpm(adata, [ct.INFLAMMATORY_MAC, ct.NEUTROPHIL], ["OSM"])
    assert _auroc_by_response(adata, osm) > 0.65
    stroma_genes = list(adata.uns[k.TRUTH]["de_genes"][ct.STROMA])
    stroma = _pseudobulk_log2cpm(adata, [ct.FIBROBLAST, ct.ENDOTHELIAL], stroma_genes)
    assert _auroc_by_response(adata, stroma) > 0.65
    # not separable: no single planted readout is perfect
    assert _auroc_by_response(adata, patients["aqp9_fraction_observed"]) < 0.98


def test_null_cohort_has_no_association(larger: dict[float, ad.AnnData]) -> None:
    null, planted = larger[0.0], larger[1.0]
    truth = null.uns[k.TRUTH]
    patients = truth["patients"]
    # same patients and responses at every effect size: only expression changes
    pd.testing.assert_series_equal(patients[k.RESPONSE], planted.uns[k.TRUTH]["patients"][k.RESPONSE])
    assert truth["effect_size"] == 0.0
    assert all(len(genes) == 0 for genes in truth["de_genes"].values())
    for col in ("aqp9_fraction_expected", "activity_osm", "activity_osm_response", k.SEVERITY):
        assert 0.25 < _auroc_by_response(null, patients[col]) < 0.75, col
    stroma_genes = list(planted.uns[k.TRUTH]["de_genes"][ct.STROMA])
    stroma = _pseudobulk_log2cpm(null, [ct.FIBROBLAST, ct.ENDOTHELIAL], stroma_genes)
    assert 0.25 < _auroc_by_response(null, stroma) < 0.75


def test_two_samples_per_patient() -> None:
    adata = simulate_cohort(seed=0, second_sample_rate=1.0, **SMALL)
    per_patient = adata.obs.groupby(k.PATIENT, observed=True)[k.SAMPLE].nunique()
    assert (per_patient == 2).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_patients": 3}, "n_patients"),
        ({"doublet_rate": 0.9}, "doublet_rate"),
        ({"effect_size": -1.0}, "effect_size"),
        ({"n_batches": 0}, "n_batches"),
        ({"n_genes": 20}, "n_genes"),
        ({"n_genes": 10**6}, "n_genes"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        simulate_cohort(**{**SMALL, **kwargs})
