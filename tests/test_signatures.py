"""Tests for biomarkers.signatures: gene sets, aliases, per-cell scores (vs scanpy), bulk scores and evaluation."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from biomarkers import _keys
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.signatures import (
    GeneSet,
    coverage_report,
    evaluate_signatures,
    list_gene_sets,
    load_gene_sets,
    resolve_genes,
    score_bulk,
    score_signatures,
    write_gene_sets,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSE12251 = SHARED / "bulk" / "GSE12251_uc_infliximab_11genes.csv"
CELLS = SHARED / "cells" / "celltypist_sample_559cells.csv.gz"
DATA_DIR = Path(__file__).resolve().parents[1] / "biomarkers" / "signatures" / "data"
GSE_GENES = ["ACTB", "CXCL8", "FCGR3B", "IL1B", "IL6", "ITGAM", "PTGS2", "S100A12", "TLR2", "TLR4", "TLR8"]


# ---------------------------------------------------------------- data


def _lognorm_cells(n_cells: int = 200, n_genes: int = 1500, *, seed: int = 0, sparse: bool = True) -> ad.AnnData:
    """Negative-binomial counts with one planted program (genes G0000-G0029), normalised + log1p.

    Gene names are zero-padded, so ``var_names`` are sorted: scanpy then draws the same control genes as we do.
    """
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(-1.0, 1.5, n_genes)
    mean = mu[None, :] * rng.lognormal(0.0, 0.3, (n_cells, 1))
    mean[:, :30] *= 1.0 + 3.0 * rng.gamma(1.0, 1.0, (n_cells, 1))
    counts = rng.negative_binomial(2, 2.0 / (2.0 + mean)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts) if sparse else counts)
    adata.var_names = [f"G{i:04d}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


SETS = {
    "PROGRAM": [f"G{i:04d}" for i in range(30)],
    "HALF": [f"G{i:04d}" for i in range(15, 45)],
    "RANDOM": ["G0101", "G0207", "G0333", "G0450", "G0512", "G0640", "G0777", "G0801", "G0999", "G1234"],
}


@pytest.fixture(scope="module")
def cells_sparse() -> ad.AnnData:
    return _lognorm_cells(sparse=True)


@pytest.fixture(scope="module")
def cells_dense() -> ad.AnnData:
    return _lognorm_cells(sparse=False)


def _scanpy_scores(adata: ad.AnnData, genes: list[str], **kwargs: object) -> np.ndarray:
    sub = adata.copy()
    sc.tl.score_genes(sub, genes, score_name="ref", **kwargs)
    return sub.obs["ref"].to_numpy()


# ---------------------------------------------------------------- gene sets


def test_package_gene_sets_load_with_citations() -> None:
    sets = load_gene_sets()
    assert "AQP9_INFLAMMATORY_MACROPHAGE" in sets
    assert all(isinstance(gs, GeneSet) and gs.genes and gs.source and gs.role for gs in sets.values())
    aqp9 = sets["AQP9_INFLAMMATORY_MACROPHAGE"]
    assert "AQP9" in aqp9.genes
    assert aqp9.source.startswith("Martin et al. 2019")
    table = list_gene_sets()
    assert list(table.columns) == ["set", "n_genes", "role", "source"]
    assert table.set_index("set")["n_genes"].to_dict() == {k: len(v.genes) for k, v in sets.items()}


def test_manifest_records_data_file_hashes() -> None:
    manifest = pd.read_csv(DATA_DIR / "manifest.tsv", sep="\t", dtype=str)
    for row in manifest.itertuples():
        assert hashlib.sha256((DATA_DIR / row.file).read_bytes()).hexdigest() == row.sha256, row.file
    expected = "0c1c122ce3de5b2519e5eeb4ffd399191bb1f6da1009eba95c4ecdb185b97c23"
    assert manifest.set_index("file").loc["gene_sets.tsv", "sha256"] == expected


def test_unknown_set_lists_available_names() -> None:
    with pytest.raises(ConfigError, match=r"Unknown gene set\(s\): NOPE\. Available: AQP9_INFLAMMATORY_MACROPHAGE"):
        load_gene_sets(["AQP9_INFLAMMATORY_MACROPHAGE", "NOPE"])


def test_set_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        GeneSet("bad/name", ("A",))


@pytest.mark.parametrize("suffix", [".tsv", ".gmt"])
def test_user_gene_set_files_round_trip(tmp_path: Path, suffix: str) -> None:
    mine = {"DISCOVERED_1": GeneSet("DISCOVERED_1", ("AQP9", "OSMR", "AQP9"), role="user", source="exp-42")}
    path = write_gene_sets(tmp_path / f"mine{suffix}", gene_sets=mine)
    sets = load_gene_sets(["DISCOVERED_1", "IL6_JAK_STAT3"], path=path)
    assert sets["DISCOVERED_1"].genes == ("AQP9", "OSMR")
    assert sets["DISCOVERED_1"].source == "exp-42"
    assert "DISCOVERED_1" in set(list_gene_sets(path=path)["set"])
    clash = tmp_path / "clash.gmt"
    clash.write_text("IL6_JAK_STAT3\tmine\tAQP9\n")
    with pytest.raises(ConfigError, match="clashes"):
        load_gene_sets(path=clash)


def test_bad_user_file_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("name\tsymbol\nX\tAQP9\n")
    with pytest.raises(DataSchemaError, match="lacks column"):
        load_gene_sets(path=path)


# ---------------------------------------------------------------- aliases and coverage


def test_alias_resolution_both_directions() -> None:
    assert resolve_genes(["SEPP1"], ["SELENOP", "CD14"]) == ({"SEPP1": "SELENOP"}, [])
    assert resolve_genes(["SELENOP"], ["SEPP1", "CD14"]) == ({"SELENOP": "SEPP1"}, [])
    assert resolve_genes(["CXCL8", "cd14", "NOPE1"], ["IL8", "CD14"]) == ({"CXCL8": "IL8", "cd14": "CD14"}, ["NOPE1"])
    # A direct match wins over an alias.
    assert resolve_genes(["SELENOP"], ["SEPP1", "SELENOP"]) == ({"SELENOP": "SELENOP"}, [])


def test_coverage_report() -> None:
    cov = coverage_report({"A": ["SELENOP", "CD14", "NOPE1", "NOPE2"], "B": ["NOPE3"]}, ["SEPP1", "CD14", "X"])
    assert list(cov.columns) == ["set", "n_genes", "n_found", "frac_found", "found", "missing", "aliased"]
    a, b = cov.to_dict(orient="records")
    assert (a["n_genes"], a["n_found"], a["frac_found"]) == (4, 2, 0.5)
    assert (a["found"], a["missing"], a["aliased"]) == ("SELENOP,CD14", "NOPE1,NOPE2", "SELENOP->SEPP1")
    assert (b["n_found"], b["found"]) == (0, "")


# ---------------------------------------------------------------- per-cell scores


@pytest.mark.parametrize("fixture", ["cells_dense", "cells_sparse"])
def test_scores_agree_with_scanpy(fixture: str, request: pytest.FixtureRequest) -> None:
    adata = request.getfixturevalue(fixture).copy()
    score_signatures(adata, gene_sets=SETS)
    for name, genes in SETS.items():
        ours = adata.obs[_keys.SIG_PREFIX + name].to_numpy()
        ref = _scanpy_scores(adata, genes)
        assert spearmanr(ours, ref).statistic >= 0.95, name
        # var_names are sorted, so the control draws are scanpy's own: equal to float precision.
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert adata.obsm[_keys.SIG_SCORES][name].equals(adata.obs[_keys.SIG_PREFIX + name].rename(name))


def test_planted_program_agrees_with_scanpy_in_any_gene_order(cells_sparse: ad.AnnData) -> None:
    rng = np.random.default_rng(3)
    adata = cells_sparse[:, rng.permutation(cells_sparse.n_vars)].copy()
    score_signatures(adata, gene_sets=SETS)
    for name in ("PROGRAM", "HALF"):
        rho = spearmanr(adata.obs[_keys.SIG_PREFIX + name], _scanpy_scores(adata, SETS[name])).statistic
        assert rho >= 0.95, name


def _small_cells() -> ad.AnnData:
    adata = _lognorm_cells(n_cells=40, n_genes=240, seed=5)
    adata.var_names = [f"g{(i * 7919) % 240}" for i in range(240)]  # unsorted names
    return adata


SMALL_SETS = {"A": ["g1", "g2", "g3", "g4", "g5"], "B": ["g10", "g50", "g90", "g130"]}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_scores_invariant_to_cell_and_gene_order(seed: int) -> None:
    base = _small_cells()
    score_signatures(base, gene_sets=SMALL_SETS, ctrl_size=5, n_bins=10)
    rng = np.random.default_rng(seed)
    shuffled = base[rng.permutation(base.n_obs), rng.permutation(base.n_vars)].copy()
    score_signatures(shuffled, gene_sets=SMALL_SETS, ctrl_size=5, n_bins=10)
    expected = base.obsm[_keys.SIG_SCORES]
    got = shuffled.obsm[_keys.SIG_SCORES].loc[expected.index, expected.columns]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)


def test_scores_do_not_depend_on_other_sets(cells_sparse: ad.AnnData) -> None:
    alone = cells_sparse.copy()
    score_signatures(alone, gene_sets={"RANDOM": SETS["RANDOM"]})
    together = cells_sparse.copy()
    score_signatures(together, gene_sets=SETS)
    np.testing.assert_allclose(alone.obs["sig__RANDOM"], together.obs["sig__RANDOM"])


def test_mask_scores_the_subset_with_its_own_bins(cells_sparse: ad.AnnData) -> None:
    adata = cells_sparse.copy()
    mask = np.arange(adata.n_obs) % 3 == 0
    score_signatures(adata, gene_sets=SETS, mask=mask)
    subset = cells_sparse[mask].copy()
    score_signatures(subset, gene_sets=SETS)
    for name, genes in SETS.items():
        col = adata.obs[_keys.SIG_PREFIX + name]
        assert col[~mask].isna().all()
        np.testing.assert_allclose(col[mask].to_numpy(), subset.obs[_keys.SIG_PREFIX + name].to_numpy())
        np.testing.assert_allclose(col[mask].to_numpy(), _scanpy_scores(subset, genes), atol=1e-5)
    assert adata.uns[_keys.BM]["signatures"]["params"]["n_cells_scored"] == mask.sum()


def test_mask_by_obs_column_and_results_merge(cells_sparse: ad.AnnData, tmp_path: Path) -> None:
    adata = cells_sparse.copy()
    adata.obs["is_mnp"] = np.arange(adata.n_obs) < 100
    score_signatures(adata, gene_sets={"PROGRAM": SETS["PROGRAM"]}, mask="is_mnp")
    score_signatures(adata, gene_sets={"RANDOM": SETS["RANDOM"]})
    table = adata.obsm[_keys.SIG_SCORES]
    assert list(table.columns) == ["PROGRAM", "RANDOM"]
    assert table["PROGRAM"].iloc[100:].isna().all()
    assert table["RANDOM"].notna().all()
    coverage = adata.uns[_keys.BM]["signatures"]["coverage"]
    assert set(coverage["set"]) == {"PROGRAM", "RANDOM"}
    adata.write_h5ad(tmp_path / "scored.h5ad")  # provenance must be writable
    back = ad.read_h5ad(tmp_path / "scored.h5ad")
    assert set(back.uns[_keys.BM]["signatures"]["coverage"]["set"]) == {"PROGRAM", "RANDOM"}


def test_set_without_genes_raises_or_warns(cells_sparse: ad.AnnData) -> None:
    adata = cells_sparse.copy()
    sets = {"ENSEMBL": ["ENSG00000171051", "ENSG00000125538", "ENSG00000136244"], "PROGRAM": SETS["PROGRAM"]}
    with pytest.raises(DataSchemaError, match=r"'ENSEMBL': 0/3 genes found.*Ensembl IDs"):
        score_signatures(adata, gene_sets=sets)
    with pytest.warns(UserWarning, match="0/3 genes found"):
        score_signatures(adata, gene_sets=sets, on_missing="warn")
    assert "sig__ENSEMBL" not in adata.obs
    assert "sig__PROGRAM" in adata.obs
    coverage = adata.uns[_keys.BM]["signatures"]["coverage"].set_index("set")
    assert not coverage.loc["ENSEMBL", "scored"]
    with pytest.raises(DataSchemaError, match="min_genes"):
        score_signatures(adata, gene_sets={"FEW": ["G0001", "NOPE"]}, min_genes=2)


def test_bad_inputs_are_schema_errors(cells_sparse: ad.AnnData) -> None:
    adata = cells_sparse.copy()
    with pytest.raises(DataSchemaError, match=r"Layer 'log1p' not in adata\.layers"):
        score_signatures(adata, gene_sets=SETS, layer="log1p")
    with pytest.raises(DataSchemaError, match="boolean"):
        score_signatures(adata, gene_sets=SETS, mask=np.ones(adata.n_obs))
    with pytest.raises(DataSchemaError, match="0 of"):
        score_signatures(adata, gene_sets=SETS, mask=np.zeros(adata.n_obs, dtype=bool))
    with pytest.raises(ConfigError, match="Unknown gene set"):
        score_signatures(adata, gene_sets=["NOT_A_SET"])


def test_copy_leaves_input_untouched(cells_dense: ad.AnnData) -> None:
    adata = cells_dense.copy()
    out = score_signatures(adata, gene_sets=SETS, copy=True)
    assert out is not None
    assert "sig__PROGRAM" in out.obs
    assert "sig__PROGRAM" not in adata.obs


def _read_celltypist_cells() -> ad.AnnData:
    with gzip.open(CELLS, "rt") as fh:
        genes = fh.readline().rstrip("\n").split(",")[1:]
        names, rows = [], []
        for line in fh:
            name, _, rest = line.partition(",")
            names.append(name)
            rows.append(np.array(rest.split(","), dtype=np.float32))
    adata = ad.AnnData(sp.csr_matrix(np.vstack(rows)))
    adata.obs_names = names
    adata.var_names = genes
    adata.var_names_make_unique()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.mark.realdata
def test_real_cells_agree_with_scanpy() -> None:
    if not CELLS.exists():
        pytest.skip(f"{CELLS} absent (../shared/data is not part of the repository)")
    adata = _read_celltypist_cells()
    adata = adata[:, np.argsort(adata.var_names.to_numpy())].copy()  # sorted: scanpy draws our controls
    sets = load_gene_sets()
    cov = coverage_report(sets, adata.var_names).set_index("set")
    assert cov.loc["RESIDENT_MACROPHAGE", "aliased"] == "SELENOP->SEPP1,JAML->AMICA1"  # 2016-era symbols
    score_signatures(adata, gene_sets=sets)
    n_checked = 0
    for name, gs in sets.items():
        ours = adata.obs[_keys.SIG_PREFIX + name].to_numpy()
        if np.ptp(ours) == 0:  # e.g. a single gene detected in no cell
            continue
        ref = _scanpy_scores(adata, list(resolve_genes(gs.genes, adata.var_names)[0].values()))
        assert spearmanr(ours, ref).statistic >= 0.95, name
        n_checked += 1
    assert n_checked >= 9


# ---------------------------------------------------------------- bulk


def _bulk_table(seed: int = 0, n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.array([_keys.NON_RESPONDER] * (n // 2) + [_keys.RESPONDER] * (n - n // 2))
    up = (y == _keys.NON_RESPONDER).astype(float)
    df = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "patient_id": [f"p{i // 2 if i < 6 else i}" for i in range(n)],  # p0-p2 sampled twice
            "response": y,
            "age": rng.integers(20, 70, n),
            "IL1B": 5 + up + rng.normal(0, 1, n),
            "OSM": 3 + 0.5 * up + rng.normal(0, 1, n),
            "SEPP1": 6 - up + rng.normal(0, 1, n),
            "ACTB": 12 + rng.normal(0, 0.2, n),
        }
    )
    return df


def test_score_bulk_is_a_mean_of_within_cohort_z_scores() -> None:
    df = _bulk_table()
    genes = ["IL1B", "OSM", "SEPP1", "ACTB"]
    sets = {"INFL": ["IL1B", "OSM", "NOPE"], "RES": ["SELENOP"], "NONE": ["NOPE"]}
    scores = score_bulk(df, gene_sets=sets, meta_cols=["sample_id", "patient_id", "response", "age"])
    z = (df[genes] - df[genes].mean()) / df[genes].std(ddof=0)  # the package's one ddof (biomarkers.stats.DDOF)
    np.testing.assert_allclose(scores["INFL"], z[["IL1B", "OSM"]].mean(axis=1))
    np.testing.assert_allclose(scores["RES"], z["SEPP1"])  # alias SELENOP -> SEPP1
    assert scores["NONE"].isna().all()
    assert list(scores.index) == df["sample_id"].tolist()
    assert scores.attrs["coverage"].set_index("set").loc["INFL", "n_found"] == 2
    bulk = ad.AnnData(df[genes].to_numpy(), obs=df[["response"]].set_index(df["sample_id"]))
    bulk.var_names = genes
    np.testing.assert_allclose(score_bulk(bulk, gene_sets=sets)["INFL"], scores["INFL"])


def test_evaluate_auroc_matches_sklearn_and_ci_brackets_it() -> None:
    df = _bulk_table()
    sets = {"INFL": ["IL1B", "OSM"], "RES": ["SELENOP"], "NONE": ["NOPE"]}
    res = evaluate_signatures(
        df, gene_sets=sets, genes=["IL1B", "SELENOP", "NOPE"], n_boot=500, meta_cols=["sample_id", "patient_id", "age"]
    )
    assert list(res["signature"]) == ["INFL", "RES", "NONE", "IL1B", "SELENOP", "NOPE"]
    assert list(res["kind"]) == ["gene_set"] * 3 + ["single_gene"] * 3
    y = df["response"].eq(_keys.NON_RESPONDER)
    scores = score_bulk(df, gene_sets=sets, meta_cols=["sample_id", "patient_id", "response", "age"])
    expected = {
        "INFL": roc_auc_score(y, scores["INFL"]),
        "RES": roc_auc_score(y, scores["RES"]),
        "IL1B": roc_auc_score(y, df["IL1B"]),
        "SELENOP": roc_auc_score(y, df["SEPP1"]),
    }
    table = res.set_index("signature")
    for name, auc in expected.items():
        assert table.loc[name, "auroc"] == pytest.approx(auc)
        assert table.loc[name, "auroc_ci_low"] <= auc <= table.loc[name, "auroc_ci_high"]
        assert 0 < table.loc[name, "p_value"] <= 1
        assert table.loc[name, "q_value"] >= table.loc[name, "p_value"]
    # Not flipped: the resident gene is lower in non-responders, so its AUROC stays below 0.5.
    assert table.loc["SELENOP", "auroc"] < 0.5
    assert table.loc["SELENOP", "direction"] == "lower_in_positive"
    for name in ("NONE", "NOPE"):
        assert table.loc[name, "n_found"] == 0
        assert np.isnan(table.loc[name, ["auroc", "auroc_ci_low", "auroc_ci_high", "p_value"]].astype(float)).all()


def test_evaluate_patient_bootstrap_and_labels() -> None:
    df = _bulk_table()
    res = evaluate_signatures(df, gene_sets=[], genes=["IL1B"], n_boot=300, group_col="patient_id", seed=1)
    again = evaluate_signatures(df, gene_sets=[], genes=["IL1B"], n_boot=300, group_col="patient_id", seed=1)
    pd.testing.assert_frame_equal(res, again)
    row = res.iloc[0]
    assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
    with pytest.raises(DataSchemaError, match="positive='nonresponder'"):
        evaluate_signatures(df, gene_sets=[], genes=["IL1B"], positive="nonresponder")
    with pytest.raises(DataSchemaError, match="'outcome' not in"):
        evaluate_signatures(df, gene_sets=[], genes=["IL1B"], label_col="outcome")


@pytest.mark.realdata
def test_evaluate_on_gse12251() -> None:
    if not GSE12251.exists():
        pytest.skip(f"{GSE12251} absent (../shared/data is not part of the repository)")
    df = pd.read_csv(GSE12251)
    res = evaluate_signatures(df, genes=GSE_GENES, group_col="patient_id", n_boot=500)
    table = res.set_index("signature")
    assert set(GSE_GENES) <= set(table.index)
    rated = table[(table["kind"] == "single_gene") | (table["n_found"] >= 1)]
    assert len(rated) >= len(GSE_GENES) + 1
    for name, row in rated.iterrows():
        values = row[["auroc", "auroc_ci_low", "auroc_ci_high"]].astype(float)
        assert np.isfinite(values).all(), name
        assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"], name
    assert (table.loc[GSE_GENES, "n_pos"] == 11).all()
    assert (table.loc[GSE_GENES, "n_neg"] == 12).all()
