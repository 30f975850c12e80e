"""Readers of biomarkers.io: every format written in its real on-disk layout, read back and checked."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.io import mmwrite

from biomarkers import _keys
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.io import detect_kind, iter_samples, read_cohort

GSE12251 = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bulk" / "GSE12251_uc_infliximab_11genes.csv"
)
GENES = [
    ("ENSG00000075624", "ACTB"),
    ("ENSG00000136244", "IL6"),
    ("ENSG00000099985", "OSM"),
    ("ENSG00000103569", "AQP9"),
    ("ENSG00000125538", "IL1B"),
    ("ENSG00000073756", "PTGS2"),
    ("ENSG00000163220", "S100A9"),
    ("ENSG00000169429", "CXCL8"),
]
LABELS = {"R": _keys.RESPONDER, "NR": _keys.NON_RESPONDER}


def _counts(n_cells: int, n_genes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, size=(n_cells, n_genes)).astype(np.int64)


def _barcodes(n: int) -> list[str]:
    rng = np.random.default_rng(n)
    seqs = {"".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(3 * n)}
    return sorted(seqs)[:n]


def _gz(path: Path, data: bytes) -> None:
    with gzip.open(path, "wb") as handle:
        handle.write(data)


def write_mtx(
    directory: Path,
    counts: np.ndarray,
    barcodes: list[str],
    genes: list[tuple[str, str]],
    *,
    prefix: str = "",
    v3: bool = True,
    compress: bool = True,
    feature_types: list[str] | None = None,
) -> None:
    """Write a CellRanger mtx triplet (genes x barcodes MatrixMarket, integer field)."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    mmwrite(buffer, sparse.coo_matrix(counts.T), field="integer")
    types = feature_types or ["Gene Expression"] * len(genes)
    if v3:
        features = "".join(f"{i}\t{n}\t{t}\n" for (i, n), t in zip(genes, types, strict=True))
        feature_name = "features.tsv"
    else:
        features = "".join(f"{i}\t{n}\n" for i, n in genes)
        feature_name = "genes.tsv"
    files = {
        "matrix.mtx": buffer.getvalue(),
        "barcodes.tsv": "".join(f"{b}\n" for b in barcodes).encode(),
        feature_name: features.encode(),
    }
    for name, data in files.items():
        if compress:
            _gz(directory / f"{prefix}{name}.gz", data)
        else:
            (directory / f"{prefix}{name}").write_bytes(data)


def write_10x_h5(
    path: Path,
    counts: np.ndarray,
    barcodes: list[str],
    genes: list[tuple[str, str]],
    feature_types: list[str] | None = None,
) -> None:
    """Write a CellRanger v3 feature-barcode matrix .h5 (CSC genes x barcodes under /matrix)."""
    matrix = sparse.csc_matrix(counts.T)
    types = feature_types or ["Gene Expression"] * len(genes)
    with h5py.File(path, "w") as f:
        group = f.create_group("matrix")
        group.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        group.create_dataset("data", data=matrix.data.astype(np.int32))
        group.create_dataset("indices", data=matrix.indices.astype(np.int64))
        group.create_dataset("indptr", data=matrix.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array(matrix.shape, dtype=np.int32))
        features = group.create_group("features")
        features.create_dataset("id", data=np.array([i for i, _ in genes], dtype="S"))
        features.create_dataset("name", data=np.array([n for _, n in genes], dtype="S"))
        features.create_dataset("feature_type", data=np.array(types, dtype="S"))
        features.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def _dense(adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
    matrix = adata.X if layer is None else adata.layers[layer]
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


# ----------------------------------------------------------------------------------------------------------------------
# 10x
# ----------------------------------------------------------------------------------------------------------------------


def test_10x_h5_v3(tmp_path: Path) -> None:
    counts = _counts(20, len(GENES) + 1, seed=0)
    genes = [*GENES, ("CD3_TotalSeqB", "CD3")]
    types = ["Gene Expression"] * len(GENES) + ["Antibody Capture"]
    path = tmp_path / "sample7" / "filtered_feature_bc_matrix.h5"
    path.parent.mkdir()
    write_10x_h5(path, counts, _barcodes(20), genes, types)
    assert detect_kind(path) == "10x_h5"
    with pytest.warns(UserWarning, match="one patient per sample"):
        adata = read_cohort(path)
    assert adata.shape == (20, len(GENES))
    np.testing.assert_array_equal(_dense(adata), counts[:, : len(GENES)])
    np.testing.assert_array_equal(_dense(adata, _keys.COUNTS), _dense(adata))
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.float32
    assert list(adata.var_names) == [n for _, n in GENES]
    assert list(adata.var[_keys.GENE_ID]) == [i for i, _ in GENES]
    assert set(adata.obs[_keys.SAMPLE]) == {"sample7"}
    assert (adata.obs[_keys.PATIENT] == adata.obs[_keys.SAMPLE]).all()
    assert (adata.obs[_keys.BATCH] == adata.obs[_keys.SAMPLE]).all()
    assert adata.uns[_keys.BM]["io"]["kind"] == "single_cell"
    assert adata.uns[_keys.BM]["io"]["format"] == "10x_h5"


@pytest.mark.parametrize(("v3", "compress"), [(True, True), (False, False), (False, True)])
def test_10x_mtx_directory(tmp_path: Path, *, v3: bool, compress: bool) -> None:
    counts = _counts(15, len(GENES), seed=1)
    write_mtx(tmp_path / "P1_ileum", counts, _barcodes(15), GENES, v3=v3, compress=compress)
    assert detect_kind(tmp_path / "P1_ileum") == "10x_mtx"
    with pytest.warns(UserWarning, match="one patient per sample"):
        adata = read_cohort(tmp_path / "P1_ileum")
    np.testing.assert_array_equal(_dense(adata), counts)
    assert list(adata.var_names) == [n for _, n in GENES]
    assert list(adata.var[_keys.GENE_ID]) == [i for i, _ in GENES]
    assert list(adata.obs_names) == _barcodes(15)
    assert set(adata.obs[_keys.SAMPLE]) == {"P1_ileum"}


def test_10x_mtx_duplicate_symbols_made_unique(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    genes = [*GENES, ("ENSG00000285053", "TBCE"), ("ENSG00000284770", "TBCE")]
    write_mtx(tmp_path / "s1", _counts(10, len(genes), seed=2), _barcodes(10), genes)
    with pytest.warns(UserWarning, match="one patient"), caplog.at_level("WARNING", logger="biomarkers"):
        adata = read_cohort(tmp_path / "s1", kind="10x_mtx")
    assert list(adata.var_names[-2:]) == ["TBCE", "TBCE-1"]
    assert adata.var_names.is_unique
    assert list(adata.var[_keys.GENE_ID][-2:]) == ["ENSG00000285053", "ENSG00000284770"]
    assert "duplicated gene symbols" in caplog.text


def test_10x_duplicate_barcodes_raise(tmp_path: Path) -> None:
    barcodes = _barcodes(10)
    barcodes[3] = barcodes[2]
    write_mtx(tmp_path / "s1", _counts(10, len(GENES), seed=3), barcodes, GENES)
    with pytest.warns(UserWarning, match="one patient"), pytest.raises(DataSchemaError, match="duplicated barcodes"):
        read_cohort(tmp_path / "s1")


def test_10x_mtx_shape_mismatch_raises(tmp_path: Path) -> None:
    write_mtx(tmp_path / "s1", _counts(10, len(GENES), seed=3), _barcodes(10), GENES)
    _gz(tmp_path / "s1" / "barcodes.tsv.gz", "".join(f"{b}\n" for b in _barcodes(9)).encode())
    with pytest.warns(UserWarning, match="one patient"), pytest.raises(DataSchemaError, match="different samples"):
        read_cohort(tmp_path / "s1")


def test_10x_ensembl_only_features_need_gene_map(tmp_path: Path) -> None:
    directory = tmp_path / "s1"
    write_mtx(directory, _counts(8, len(GENES), seed=4), _barcodes(8), GENES, v3=False, compress=False)
    (directory / "genes.tsv").write_text("".join(f"{i}\n" for i, _ in GENES))
    with pytest.warns(UserWarning, match="one patient"), pytest.raises(DataSchemaError, match="gene_map"):
        read_cohort(directory)
    with pytest.warns(UserWarning, match="one patient"):
        adata = read_cohort(directory, gene_map=dict(GENES))
    assert list(adata.var_names) == [n for _, n in GENES]


@pytest.fixture
def geo_series(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A GSE134809-like folder: gzipped v2 triplets prefixed GSM..._<n>_, plus a sample sheet."""
    folder = tmp_path / "GSE134809_RAW"
    barcodes = _barcodes(12)  # the same barcodes in every library, as in real 10x runs
    counts = {}
    for i, prefix in enumerate(["GSM3972009_69", "GSM3972010_68", "GSM3972011_122"]):
        counts[prefix] = _counts(12, len(GENES), seed=10 + i)
        write_mtx(folder, counts[prefix], barcodes, GENES, prefix=f"{prefix}_", v3=False)
    sheet = pd.DataFrame(
        {
            "sample": ["GSM3972009", "GSM3972010", "GSM3972011"],
            "patient": ["rp5", "rp5", "rp6"],
            "tissue_state": ["Involved", "Uninvolved", "Involved"],
            "anti_tnf": ["NR", "NR", "R"],
        }
    )
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    return folder, counts


def test_geo_10x_series(geo_series: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    folder, counts = geo_series
    assert detect_kind(folder) == "geo_10x_series"
    adata = read_cohort(
        folder,
        sample_sheet=tmp_path / "sheet.csv",
        patient_col="patient",
        label_col="anti_tnf",
        label_map=LABELS,
        obs_map={"inflamed": "tissue_state"},
        positive_label="NR",
    )
    assert adata.shape == (36, len(GENES))
    assert adata.obs_names.is_unique
    assert adata.obs_names[0].startswith("GSM3972009_69_")
    for sample, expected in counts.items():
        np.testing.assert_array_equal(_dense(adata[adata.obs[_keys.SAMPLE] == sample]), expected)
    per_sample = adata.obs.groupby(_keys.SAMPLE, observed=True).first()
    assert per_sample.loc["GSM3972010_68", _keys.PATIENT] == "rp5"
    assert per_sample.loc["GSM3972011_122", _keys.RESPONSE] == _keys.RESPONDER
    assert not per_sample.loc["GSM3972010_68", _keys.INFLAMED]
    assert per_sample.loc["GSM3972009_69", _keys.INFLAMED]
    assert adata.obs[_keys.RESPONSE].cat.categories.tolist() == [_keys.RESPONDER, _keys.NON_RESPONDER]
    assert adata.uns[_keys.BM]["io"]["positive_label"] == _keys.NON_RESPONDER
    assert adata.uns[_keys.BM]["io"]["n_samples"] == 3
    adata.write_h5ad(tmp_path / "roundtrip.h5ad")  # provenance must be writable
    assert ad.read_h5ad(tmp_path / "roundtrip.h5ad").uns[_keys.BM]["io"]["format"] == "geo_10x_series"


def test_geo_10x_series_sheet_in_folder_and_missing_rows(geo_series: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = geo_series
    pd.DataFrame({"gsm": ["GSM3972009_69", "GSM3972010_68"], "patient_id": ["rp5", "rp5"]}).to_csv(
        folder / "samples.csv", index=False
    )
    with pytest.raises(DataSchemaError, match=r"1 samples have no row in samples\.csv"):
        read_cohort(folder)


def test_geo_10x_series_incomplete_triplet(geo_series: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = geo_series
    (folder / "GSM3972011_122_barcodes.tsv.gz").unlink()
    with pytest.raises(DataSchemaError, match="incomplete"):
        read_cohort(folder)


def test_iter_samples_matches_read_cohort(geo_series: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    folder, counts = geo_series
    kwargs = {"sample_sheet": tmp_path / "sheet.csv", "patient_col": "patient"}
    parts = list(iter_samples(folder, **kwargs))
    assert [p.obs[_keys.SAMPLE].iloc[0] for p in parts] == list(counts)
    for part, expected in zip(parts, counts.values(), strict=True):
        np.testing.assert_array_equal(_dense(part), expected)
        np.testing.assert_array_equal(_dense(part, _keys.COUNTS), expected)
        assert part.uns[_keys.BM]["io"]["sample"] == part.obs[_keys.SAMPLE].iloc[0]


def test_geo_10x_series_of_h5_subfolders(tmp_path: Path) -> None:
    """GSE282122 (TAURUS) layout: one folder per sample holding filtered_feature_bc_matrix.h5."""
    for i, sample in enumerate(["CID003376-1", "CID005771-1"]):
        (tmp_path / "filtered" / sample).mkdir(parents=True)
        write_10x_h5(
            tmp_path / "filtered" / sample / "filtered_feature_bc_matrix.h5", _counts(5, 8, i), _barcodes(5), GENES
        )
    assert detect_kind(tmp_path / "filtered") == "geo_10x_series"
    with pytest.warns(UserWarning, match="one patient"):
        adata = read_cohort(tmp_path / "filtered")
    assert adata.obs[_keys.SAMPLE].value_counts().to_dict() == {"CID003376-1": 5, "CID005771-1": 5}


# ----------------------------------------------------------------------------------------------------------------------
# h5ad
# ----------------------------------------------------------------------------------------------------------------------


def _cells_obs(n_per_sample: int = 6) -> pd.DataFrame:
    donors = ["T1", "T1", "T2", "T3"]
    samples = ["T1_pre_rectum", "T1_pre_colon", "T2_pre", "T3_pre"]
    status = ["Non_Remission", "Non_Remission", "Remission", "Not_avail"]
    rows = [
        {"Patient": d, "sample": s, "Remission_status": r, "Inflammation": "Inflamed" if j % 2 else "Non_Inflamed"}
        for d, s, r in zip(donors, samples, status, strict=True)
        for j in range(n_per_sample)
    ]
    return pd.DataFrame(rows, index=[f"AAAC{i:04d}-1" for i in range(len(rows))])


TAURUS_MAP = {
    "patient_id": "Patient",
    "sample_id": "sample",
    "response": "Remission_status",
    "inflamed": "Inflammation",
}
TAURUS_LABELS = {"Remission": _keys.RESPONDER, "Non_Remission": _keys.NON_RESPONDER, "Not_avail": None}


def _lognorm(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / counts.sum(axis=1, keepdims=True).clip(1) * 1e4).astype(np.float32)


@pytest.fixture
def h5ad_counts_in_x(tmp_path: Path) -> tuple[Path, np.ndarray]:
    obs = _cells_obs()
    counts = _counts(len(obs), len(GENES), seed=5)
    var = pd.DataFrame(index=[n for _, n in GENES])
    adata = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    path = tmp_path / "myeloid_final.h5ad"
    adata.write_h5ad(path)
    return path, counts


def test_h5ad_counts_in_x_with_obs_map(h5ad_counts_in_x: tuple[Path, np.ndarray]) -> None:
    path, counts = h5ad_counts_in_x
    assert detect_kind(path) == "h5ad"
    adata = read_cohort(path, obs_map=TAURUS_MAP, label_map=TAURUS_LABELS)
    np.testing.assert_array_equal(_dense(adata), counts)
    np.testing.assert_array_equal(_dense(adata, _keys.COUNTS), counts)
    assert {"Patient", "sample", "Remission_status"}.isdisjoint(adata.obs.columns)
    assert set(adata.obs[_keys.PATIENT]) == {"T1", "T2", "T3"}
    assert adata.obs[_keys.SAMPLE].nunique() == 4
    labels = adata.obs.drop_duplicates(_keys.PATIENT).set_index(_keys.PATIENT)[_keys.RESPONSE]
    assert labels[["T1", "T2"]].tolist() == [_keys.NON_RESPONDER, _keys.RESPONDER]
    assert pd.isna(labels["T3"])
    assert adata.obs[_keys.INFLAMED].dtype == bool
    assert adata.uns[_keys.BM]["io"]["counts_source"] == "X"


def test_h5ad_counts_in_layer_with_lognormalised_x(tmp_path: Path) -> None:
    obs = _cells_obs()
    counts = _counts(len(obs), len(GENES), seed=6)
    adata = ad.AnnData(_lognorm(counts), obs=obs, var=pd.DataFrame(index=[n for _, n in GENES]))
    adata.layers[_keys.COUNTS] = sparse.csr_matrix(counts.astype(np.float32))
    adata.uns["log1p"] = {"base": 2.0}
    adata.write_h5ad(tmp_path / "a.h5ad")
    out = read_cohort(tmp_path / "a.h5ad", patient_col="Patient", sample_col="sample")
    np.testing.assert_array_equal(_dense(out), counts)
    assert out.uns[_keys.BM]["io"]["counts_source"] == "layers['counts']"
    assert "log1p" not in out.uns


def test_h5ad_cellxgene_raw_counts_and_ensembl_ids(tmp_path: Path) -> None:
    """CELLxGENE layout: Ensembl IDs as var_names, symbols in var['feature_name'], counts in .raw.X."""
    obs = _cells_obs()
    counts = _counts(len(obs), len(GENES), seed=7)
    var = pd.DataFrame({"feature_name": [n for _, n in GENES]}, index=[i for i, _ in GENES])
    adata = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    adata.raw = adata.copy()
    adata.X = sparse.csr_matrix(_lognorm(counts))
    adata.write_h5ad(tmp_path / "cxg.h5ad")
    out = read_cohort(tmp_path / "cxg.h5ad", patient_col="Patient", sample_col="sample")
    np.testing.assert_array_equal(_dense(out), counts)
    assert list(out.var_names) == [n for _, n in GENES]
    assert list(out.var[_keys.GENE_ID]) == [i for i, _ in GENES]
    assert out.uns[_keys.BM]["io"]["counts_source"] == ".raw.X"


def test_h5ad_only_lognormalised_raises(tmp_path: Path) -> None:
    obs = _cells_obs()
    adata = ad.AnnData(_lognorm(_counts(len(obs), len(GENES), seed=8)), obs=obs)
    adata.var_names = [n for _, n in GENES]
    adata.write_h5ad(tmp_path / "log.h5ad")
    with pytest.raises(DataSchemaError, match=r"No raw integer counts.*layers\['counts'\] absent.*non-integer"):
        read_cohort(tmp_path / "log.h5ad", patient_col="Patient")
    with pytest.warns(UserWarning, match="allow_non_integer|using X"):
        out = read_cohort(tmp_path / "log.h5ad", patient_col="Patient", allow_non_integer=True)
    assert out.n_obs == len(obs)


def test_h5ad_barcodes_repeated_across_samples_are_prefixed(tmp_path: Path) -> None:
    obs = _cells_obs(n_per_sample=3)
    obs.index = [f"AAAC{i % 3:04d}-1" for i in range(len(obs))]  # each sample reuses the same barcodes
    x = _counts(len(obs), len(GENES), seed=15).astype(np.float32)
    with pytest.warns(UserWarning, match="not unique"):
        ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[n for _, n in GENES])).write_h5ad(tmp_path / "d.h5ad")
    out = read_cohort(tmp_path / "d.h5ad", patient_col="Patient", sample_col="sample")
    assert out.obs_names.is_unique
    assert out.obs_names[0] == "T1_pre_rectum_AAAC0000-1"
    assert [a.n_obs for a in iter_samples(tmp_path / "d.h5ad", patient_col="Patient", sample_col="sample")] == [3] * 4
    with pytest.raises(DataSchemaError, match="duplicated cell barcodes within one sample"):
        read_cohort(tmp_path / "d.h5ad", patient_col="Patient")  # one sample per patient: T1 repeats barcodes
    with pytest.raises(DataSchemaError, match="duplicated cell barcodes within one sample"):
        list(iter_samples(tmp_path / "d.h5ad", patient_col="Patient"))


def test_h5ad_ensembl_without_symbols_raises(tmp_path: Path) -> None:
    obs = _cells_obs()
    adata = ad.AnnData(_counts(len(obs), len(GENES), seed=9).astype(np.float32), obs=obs)
    adata.var_names = [i for i, _ in GENES]
    adata.write_h5ad(tmp_path / "ens.h5ad")
    with pytest.raises(DataSchemaError, match=r"Ensembl IDs.*gene_map"):
        read_cohort(tmp_path / "ens.h5ad", patient_col="Patient")
    out = read_cohort(tmp_path / "ens.h5ad", patient_col="Patient", gene_map={i + ".5": n for i, n in GENES})
    assert list(out.var_names) == [n for _, n in GENES]


@pytest.mark.parametrize(("value", "problem"), [(np.nan, "NaN/inf"), (-1.0, "negative"), (np.inf, "NaN/inf")])
def test_h5ad_invalid_values_raise(tmp_path: Path, value: float, problem: str) -> None:
    obs = _cells_obs()
    x = _counts(len(obs), len(GENES), seed=10).astype(np.float32)
    x[0, 0] = value
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[n for _, n in GENES])).write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(DataSchemaError, match=problem):
        read_cohort(tmp_path / "bad.h5ad", patient_col="Patient")


def test_h5ad_missing_patient_column_lists_columns(h5ad_counts_in_x: tuple[Path, np.ndarray]) -> None:
    path, _ = h5ad_counts_in_x
    with pytest.raises(DataSchemaError, match=r"'patient_id' not in .*have: Patient, sample.*data\.patient_col"):
        read_cohort(path)
    with pytest.raises(DataSchemaError, match=r"'donor'.*have: Patient.*data\.patient_col"):
        read_cohort(path, patient_col="donor")
    with pytest.raises(DataSchemaError, match=r"'outcome'.*data\.label_col"):
        read_cohort(path, patient_col="Patient", label_col="outcome")


def test_h5ad_unknown_labels_list_found_values(h5ad_counts_in_x: tuple[Path, np.ndarray]) -> None:
    path, _ = h5ad_counts_in_x
    with pytest.raises(DataSchemaError, match=r"Unknown response labels .*Non_Remission.*found: .*label_map"):
        read_cohort(path, obs_map=TAURUS_MAP)


def test_labels_must_be_constant_per_patient(h5ad_counts_in_x: tuple[Path, np.ndarray]) -> None:
    path, _ = h5ad_counts_in_x
    bad = {**TAURUS_LABELS, "Not_avail": _keys.RESPONDER}
    remap = {**TAURUS_MAP, "patient_id": "Inflammation"}  # patients that mix labels
    with pytest.raises(DataSchemaError, match="one value per patient"):
        read_cohort(path, obs_map=remap, label_map=bad)


def test_positive_label_and_obs_map_validation(h5ad_counts_in_x: tuple[Path, np.ndarray]) -> None:
    path, _ = h5ad_counts_in_x
    with pytest.raises(DataSchemaError, match=r"positive_label/negative_label yes not found .*found: Non_Remission"):
        read_cohort(path, obs_map=TAURUS_MAP, label_map=TAURUS_LABELS, positive_label="yes")
    with pytest.raises(DataSchemaError, match="maps to 'no label'"):
        read_cohort(path, obs_map=TAURUS_MAP, label_map=TAURUS_LABELS, positive_label="Not_avail")
    with pytest.raises(ConfigError, match="obs_map keys"):
        read_cohort(path, obs_map={"donor": "Patient"})
    with pytest.raises(ConfigError, match="contradicts"):
        read_cohort(path, obs_map=TAURUS_MAP, patient_col="sample")
    adata = read_cohort(path, obs_map=TAURUS_MAP, label_map=TAURUS_LABELS, positive_label="Non_Remission")
    assert adata.uns[_keys.BM]["io"]["positive_label"] == _keys.NON_RESPONDER


def test_raw_positive_negative_labels_and_config_defaults(h5ad_counts_in_x: tuple[Path, np.ndarray]) -> None:
    """The experiment-config path: *_col defaults that may be absent, raw class values instead of a label_map."""
    path, _ = h5ad_counts_in_x
    obs_map = {"patient_id": "Patient", "sample_id": "sample_id", "response": "Remission_status", "batch": None}
    adata = read_cohort(
        path,
        obs_map=obs_map,
        positive_label="Non_Remission",
        negative_label="Remission",
        label_map={"Not_avail": None},
    )
    labels = adata.obs.drop_duplicates(_keys.PATIENT).set_index(_keys.PATIENT)[_keys.RESPONSE]
    assert labels[["T1", "T2"]].tolist() == [_keys.NON_RESPONDER, _keys.RESPONDER]
    assert (adata.obs[_keys.SAMPLE] == adata.obs[_keys.PATIENT]).all()  # no sample column: one sample per patient
    assert adata.uns[_keys.BM]["io"]["positive_label"] == _keys.NON_RESPONDER
    with pytest.raises(DataSchemaError, match=r"Unknown response labels Not_avail.*negative_label"):
        read_cohort(path, obs_map=obs_map, positive_label="Non_Remission", negative_label="Remission")


def test_h5ad_backed(tmp_path: Path) -> None:
    obs = _cells_obs()
    counts = _counts(len(obs), len(GENES), seed=11)
    adata = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)), obs=obs)
    adata.var_names = [n for _, n in GENES]
    adata.write_h5ad(tmp_path / "big.h5ad")
    backed = read_cohort(tmp_path / "big.h5ad", backed="r", obs_map=TAURUS_MAP, label_map=TAURUS_LABELS)
    assert backed.isbacked
    assert _keys.PATIENT in backed.obs.columns
    assert backed.uns[_keys.BM]["io"]["counts_source"] == "X"
    np.testing.assert_array_equal(backed.X[:5].toarray(), counts[:5])
    backed.file.close()
    with pytest.raises(ConfigError, match="backed"):
        read_cohort(GSE12251 if GSE12251.exists() else tmp_path / "big.h5ad", kind="bulk_table", backed="r")


def test_iter_samples_h5ad_streams_each_sample(tmp_path: Path) -> None:
    obs = _cells_obs()
    counts = _counts(len(obs), len(GENES), seed=12)
    adata = ad.AnnData(sparse.csr_matrix(_lognorm(counts)), obs=obs, var=pd.DataFrame(index=[n for _, n in GENES]))
    adata.layers[_keys.COUNTS] = sparse.csr_matrix(counts.astype(np.float32))
    adata.write_h5ad(tmp_path / "a.h5ad")
    full = read_cohort(tmp_path / "a.h5ad", obs_map=TAURUS_MAP, label_map=TAURUS_LABELS)
    parts = list(iter_samples(tmp_path / "a.h5ad", obs_map=TAURUS_MAP, label_map=TAURUS_LABELS))
    assert [p.obs[_keys.SAMPLE].iloc[0] for p in parts] == ["T1_pre_rectum", "T1_pre_colon", "T2_pre", "T3_pre"]
    assert sum(p.n_obs for p in parts) == full.n_obs
    for part in parts:
        sample = part.obs[_keys.SAMPLE].iloc[0]
        np.testing.assert_array_equal(_dense(part), _dense(full[full.obs[_keys.SAMPLE] == sample]))
        assert (
            part.obs[_keys.RESPONSE].iloc[0] == full.obs.loc[part.obs_names[0], _keys.RESPONSE]
            or part.obs[_keys.RESPONSE].isna().all()
        )
        assert part.uns[_keys.BM]["io"]["counts_source"] == "layers['counts']"


def test_iter_samples_rejects_bulk(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("sample_id,patient_id,IL6\ns1,p1,5\n")
    with pytest.raises(ConfigError, match="single-cell"):
        iter_samples(tmp_path / "t.csv")


# ----------------------------------------------------------------------------------------------------------------------
# bulk tables
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not GSE12251.exists(), reason="../shared/data (real GSE12251 subset) not available")
def test_bulk_real_gse12251() -> None:
    table = pd.read_csv(GSE12251)
    adata = read_cohort(GSE12251, label_col="response", positive_label="non_responder")
    genes = [c for c in table.columns if c not in {"sample_id", "patient_id", "dose", "response"}]
    assert adata.shape == (len(table), len(genes))
    assert list(adata.var_names) == genes
    assert list(adata.obs_names) == table["sample_id"].tolist()
    np.testing.assert_allclose(adata.X, table[genes].to_numpy())
    assert adata.obs[_keys.RESPONSE].value_counts().to_dict() == table["response"].value_counts().to_dict()
    assert (adata.obs[_keys.PATIENT].value_counts() > 1).sum() == (table["patient_id"].value_counts() > 1).sum()
    assert adata.uns[_keys.BM]["io"]["kind"] == "bulk"
    assert adata.uns[_keys.BM]["io"]["transform"] == "none"
    assert "dose" in adata.obs.columns
    assert _keys.COUNTS not in adata.layers


def test_bulk_genes_x_samples_counts_with_sheet(tmp_path: Path) -> None:
    counts = _counts(4, len(GENES), seed=13) * 100 + 1
    table = pd.DataFrame(counts.T, columns=["GSM1", "GSM2", "GSM3", "GSM4"])
    table.insert(0, "gene_id", [i + ".12" for i, _ in GENES])
    table.insert(1, "gene_name", [n for _, n in GENES])
    table.to_csv(tmp_path / "counts.tsv.gz", sep="\t", index=False)
    sheet = pd.DataFrame(
        {"geo": ["GSM1", "GSM2", "GSM3", "GSM4"], "subject": ["a", "a", "b", "c"], "resp": ["NR", "NR", "R", "R"]}
    )
    assert detect_kind(tmp_path / "counts.tsv.gz") == "bulk_table"
    adata = read_cohort(
        tmp_path / "counts.tsv.gz", sample_sheet=sheet, patient_col="subject", label_col="resp", label_map=LABELS
    )
    assert adata.shape == (4, len(GENES))
    assert list(adata.var_names) == [n for _, n in GENES]
    assert list(adata.var[_keys.GENE_ID]) == [i + ".12" for i, _ in GENES]
    np.testing.assert_array_equal(adata.layers[_keys.COUNTS], counts)
    cpm = counts / counts.sum(axis=1, keepdims=True) * 1e6
    np.testing.assert_allclose(adata.X, np.log2(cpm + 1))
    assert adata.uns[_keys.BM]["io"]["transform"] == "log2(CPM+1)"
    assert adata.uns[_keys.BM]["io"]["orientation"] == "genes_x_samples"
    assert adata.obs[_keys.RESPONSE].tolist() == [
        _keys.NON_RESPONDER,
        _keys.NON_RESPONDER,
        _keys.RESPONDER,
        _keys.RESPONDER,
    ]


def test_bulk_duplicate_genes_collapse_to_max_mean(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "sample_id,patient_id,age,IL6,OSM,IL6\ns1,p1,40,5.0,2.0,7.0\ns2,p2,51,6.0,3.0,8.0\n"
    )
    adata = read_cohort(tmp_path / "t.csv")
    assert list(adata.var_names) == ["OSM", "IL6"]
    np.testing.assert_allclose(adata[:, "IL6"].X.ravel(), [7.0, 8.0])
    assert "age" in adata.obs.columns


def test_bulk_errors(tmp_path: Path) -> None:
    (tmp_path / "nopatient.csv").write_text("sample_id,response,IL6\ns1,responder,5\ns2,non_responder,6\n")
    # Bulk tables without a patient column (e.g. a new cohort to predict on): one patient per sample, with a warning.
    with pytest.warns(UserWarning, match="assuming one patient per sample"):
        nopatient = read_cohort(tmp_path / "nopatient.csv")
    assert list(nopatient.obs["patient_id"]) == list(nopatient.obs["sample_id"])
    (tmp_path / "labels.csv").write_text("sample_id,patient_id,response,IL6\ns1,p1,good,5\ns2,p2,bad,6\n")
    with pytest.raises(DataSchemaError, match=r"Unknown response labels .*found: bad, good.*label_map"):
        read_cohort(tmp_path / "labels.csv")
    (tmp_path / "nan.csv").write_text("sample_id,patient_id,IL6,OSM\ns1,p1,5,\ns2,p2,6,2\n")
    with pytest.raises(DataSchemaError, match="NaN"):
        read_cohort(tmp_path / "nan.csv")
    (tmp_path / "dup.csv").write_text("sample_id,patient_id,IL6\ns1,p1,5\ns1,p2,6\n")
    with pytest.raises(DataSchemaError, match="Duplicated sample IDs"):
        read_cohort(tmp_path / "dup.csv")


# ----------------------------------------------------------------------------------------------------------------------
# GEO series matrix
# ----------------------------------------------------------------------------------------------------------------------

PROBES = {
    "205207_at": "IL6",
    "204748_at": "PTGS2",
    "211506_s_at": "CXCL8",
    "202859_x_at": "CXCL8",
    "1552257_a_at": "TTLL12 /// SCUBE1",
}


def write_series_matrix(path: Path, values: np.ndarray, *, table: bool = True) -> list[str]:
    """A series matrix with GEO's real header layout; returns the GSM accessions."""
    gsms = [f"GSM30788{i}" for i in range(values.shape[1])]
    responses = ["Yes", "Yes", "No", "No"][: len(gsms)]

    def row(tag: str, cells: list[str]) -> str:
        return tag + "\t" + "\t".join(f'"{c}"' for c in cells) + "\n"

    lines = [
        '!Series_title\t"Mucosal gene signatures to predict response to infliximab"\n',
        '!Series_geo_accession\t"GSE12251"\n',
        '!Series_status\t"Public on Dec 01 2009"\n',
        '!Series_platform_id\t"GPL570"\n',
        f'!Series_sample_id\t"{" ".join(gsms)} "\n',
        "\n",
        row("!Sample_title", [f"UC_pre_{i}" for i in range(len(gsms))]),
        row("!Sample_geo_accession", gsms),
        row("!Sample_status", ["Public on Dec 01 2009"] * len(gsms)),
        row("!Sample_source_name_ch1", ["colonic mucosal biopsy"] * len(gsms)),
        row("!Sample_organism_ch1", ["Homo sapiens"] * len(gsms)),
        row("!Sample_characteristics_ch1", ["tissue: colon"] * len(gsms)),
        row("!Sample_characteristics_ch1", [f"WK8RSPHM: {r}" for r in responses]),
        row("!Sample_characteristics_ch1", ["patient: P1", "patient: P1", "patient: P2", "patient: P3"][: len(gsms)]),
        row("!Sample_platform_id", ["GPL570"] * len(gsms)),
        row("!Sample_data_row_count", [str(values.shape[0])] * len(gsms)),
        "!series_matrix_table_begin\n",
        row('"ID_REF"', gsms).replace('""ID_REF""', '"ID_REF"'),
    ]
    if table:
        for probe, probe_values in zip([*PROBES, "AFFX-BioB-5_at"], values, strict=False):
            lines.append(f'"{probe}"\t' + "\t".join(f"{v:.4f}" for v in probe_values) + "\n")
    lines.append("!series_matrix_table_end\n")
    _gz(path, "".join(lines).encode())
    return gsms


def write_gpl_annot(path: Path) -> None:
    """The header and table layout of GEO's GPLxxx.annot.gz files."""
    lines = [
        "^Annotation\n",
        "!Annotation_date = Jun 26 2024\n",
        "!Annotation_platform = GPL570\n",
        "!platform_table_begin\n",
        "ID\tGene title\tGene symbol\tGene ID\n",
        *[f"{probe}\ttitle\t{symbol}\t1\n" for probe, symbol in PROBES.items()],
        "AFFX-BioB-5_at\t\t\t\n",
        "!platform_table_end\n",
    ]
    _gz(path, "".join(lines).encode())


@pytest.fixture
def series_values() -> np.ndarray:
    return np.random.default_rng(14).uniform(4, 12, size=(len(PROBES) + 1, 4))


def test_series_matrix_with_probe_map(tmp_path: Path, series_values: np.ndarray) -> None:
    path = tmp_path / "GSE12251_series_matrix.txt.gz"
    gsms = write_series_matrix(path, series_values)
    write_gpl_annot(tmp_path / "GPL570.annot.gz")
    assert detect_kind(path) == "geo_series_matrix"
    adata = read_cohort(
        path,
        probe_map=tmp_path / "GPL570.annot.gz",
        patient_col="patient",
        label_col="wk8rsphm",
        label_map={"Yes": _keys.RESPONDER, "No": _keys.NON_RESPONDER},
    )
    assert list(adata.obs_names) == gsms
    assert sorted(adata.var_names) == ["CXCL8", "IL6", "PTGS2"]
    cxcl8 = series_values[[2, 3]]
    best = cxcl8[np.argmax(cxcl8.mean(axis=1))]
    np.testing.assert_allclose(adata[:, "CXCL8"].X.ravel(), best, atol=1e-4)
    assert adata.var.loc["CXCL8", "probe_id"] == ["211506_s_at", "202859_x_at"][int(np.argmax(cxcl8.mean(axis=1)))]
    np.testing.assert_allclose(adata[:, "IL6"].X.ravel(), series_values[0], atol=1e-4)
    assert adata.obs["title"].tolist()[:2] == ["UC_pre_0", "UC_pre_1"]
    assert adata.obs["tissue"].unique().tolist() == ["colon"]
    assert adata.obs[_keys.PATIENT].tolist() == ["P1", "P1", "P2", "P3"]
    assert adata.obs[_keys.RESPONSE].tolist() == [
        _keys.RESPONDER,
        _keys.RESPONDER,
        _keys.NON_RESPONDER,
        _keys.NON_RESPONDER,
    ]
    io_uns = adata.uns[_keys.BM]["io"]
    assert (io_uns["kind"], io_uns["series"], io_uns["platform"]) == ("bulk", "GSE12251", "GPL570")
    adata.write_h5ad(tmp_path / "roundtrip.h5ad")


def test_series_matrix_without_probe_map_keeps_ids(tmp_path: Path, series_values: np.ndarray) -> None:
    path = tmp_path / "GSE1_series_matrix.txt.gz"
    write_series_matrix(path, series_values)
    with pytest.warns(UserWarning, match="probe IDs|one patient per sample") as record:
        adata = read_cohort(path)
    messages = " ".join(str(w.message) for w in record)
    assert "look like probe IDs" in messages
    assert "one patient per sample" in messages
    assert "205207_at" in adata.var_names
    assert adata.n_vars == len(PROBES) + 1


def test_series_matrix_probe_map_dict_and_mismatch(tmp_path: Path, series_values: np.ndarray) -> None:
    path = tmp_path / "GSE1_series_matrix.txt.gz"
    write_series_matrix(path, series_values)
    adata = read_cohort(path, probe_map={"205207_at": "IL6"}, patient_col="patient")
    assert list(adata.var_names) == ["IL6"]
    with pytest.raises(DataSchemaError, match="maps none of the"):
        read_cohort(path, probe_map={"ILMN_1": "IL6"}, patient_col="patient")


def test_series_matrix_empty_table_explains_rnaseq(tmp_path: Path, series_values: np.ndarray) -> None:
    path = tmp_path / "GSE282122_series_matrix.txt.gz"
    write_series_matrix(path, series_values, table=False)
    with pytest.raises(DataSchemaError, match="RNA-seq"):
        read_cohort(path)


# ----------------------------------------------------------------------------------------------------------------------
# detection and generic errors
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_and_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataSchemaError, match=r"Input not found.*data\.path"):
        read_cohort(tmp_path / "nope.h5ad")
    (tmp_path / "x.loom").write_bytes(b"\x00")
    with pytest.raises(DataSchemaError, match="Cannot tell the format"):
        read_cohort(tmp_path / "x.loom")
    (tmp_path / "GSE1_RAW.tar").write_bytes(b"\x00")
    with pytest.raises(DataSchemaError, match="extract it first"):
        detect_kind(tmp_path / "GSE1_RAW.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSchemaError, match="directory without 10x files"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(ConfigError, match="Unknown kind"):
        read_cohort(tmp_path / "x.loom", kind="loom")  # type: ignore[arg-type]
    (tmp_path / "t.csv").write_text("sample_id,patient_id,IL6\ns1,p1,5\n")
    with pytest.raises(ConfigError, match="probe_map applies"):
        read_cohort(tmp_path / "t.csv", probe_map={"a": "b"})
