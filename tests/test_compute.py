"""biomarkers.compute: streaming by sample and on Dask give the in-memory patient table."""

from __future__ import annotations

import gzip
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.io import mmwrite

from biomarkers import _keys as keys
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.compute import SampleStats, dask_client, sample_stats, transform_samples
from biomarkers.datasets import simulate_cohort
from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
from biomarkers.signatures import load_gene_sets

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData


def _assert_same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """Same patients, features and values (sums added in another order differ in the last bits)."""
    pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def cohort() -> AnnData:
    # Half the patients have two samples, so a patient's statistics are added up across samples.
    return simulate_cohort(n_patients=6, cells_per_patient=160, n_genes=800, seed=0, second_sample_rate=0.5)


@pytest.fixture(scope="module")
def pipe() -> FeaturePipeline:
    return FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))


@pytest.fixture(scope="module")
def whole(cohort: AnnData, pipe: FeaturePipeline) -> pd.DataFrame:
    return pipe.transform(cohort.copy())


@pytest.fixture(scope="module")
def h5ad_path(cohort: AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compute") / "cohort.h5ad"
    cohort.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def serial(h5ad_path: Path, pipe: FeaturePipeline) -> SampleStats:
    return sample_stats(pipe, h5ad_path)


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


def _write_tenx_series(adata: AnnData, folder: Path) -> None:
    """One gzipped CellRanger v3 triplet per sample (GEO layout) and a sample sheet."""
    folder.mkdir()
    features = "".join(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(adata.var_names))
    for sample in adata.obs[keys.SAMPLE].cat.categories:
        sub = adata[adata.obs[keys.SAMPLE] == sample]
        with gzip.open(folder / f"{sample}_matrix.mtx.gz", "wb") as fh:
            mmwrite(fh, sparse.csr_matrix(sub.X).T.astype(np.int64).tocoo())
        with gzip.open(folder / f"{sample}_barcodes.tsv.gz", "wt") as fh:
            fh.write("".join(f"{b}\n" for b in sub.obs_names))
        with gzip.open(folder / f"{sample}_features.tsv.gz", "wt") as fh:
            fh.write(features)
    sheet = adata.obs[[keys.SAMPLE, keys.PATIENT, keys.RESPONSE]].drop_duplicates().astype(str)
    sheet.to_csv(folder / "sample_sheet.csv", index=False)


# -- serial streaming ----------------------------------------------------------------------------------------------------
def test_stream_h5ad_matches_in_memory(
    h5ad_path: Path, pipe: FeaturePipeline, whole: pd.DataFrame, serial: SampleStats
) -> None:
    _assert_same(pipe.finalize(serial.stats), whole)
    _assert_same(transform_samples(pipe, str(h5ad_path), read_kwargs={"kind": "h5ad"}), whole)


def test_stream_anndata_and_chunks_match(cohort: AnnData, pipe: FeaturePipeline, whole: pd.DataFrame) -> None:
    _assert_same(transform_samples(pipe, cohort), whole)
    by_patient = (cohort[cohort.obs[keys.PATIENT] == p].copy() for p in cohort.obs[keys.PATIENT].cat.categories)
    _assert_same(transform_samples(pipe, by_patient), whole)


def test_stream_processes_one_sample_at_a_time(
    h5ad_path: Path, cohort: AnnData, pipe: FeaturePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    process = FeaturePipeline.process

    def spy(self: FeaturePipeline, adata: AnnData) -> AnnData:
        seen.append((adata.n_obs, adata.obs[keys.SAMPLE].nunique()))
        return process(self, adata)

    monkeypatch.setattr(FeaturePipeline, "process", spy)
    res = sample_stats(pipe, h5ad_path)
    sizes = cohort.obs[keys.SAMPLE].value_counts()
    assert all(n_samples == 1 for _, n_samples in seen)
    assert max(n for n, _ in seen) == sizes.max() < cohort.n_obs
    assert (
        res.samples["n_cells_in"].sort_index().equals(sizes.sort_index().rename("n_cells_in").rename_axis(keys.SAMPLE))
    )
    kept = pipe.process(cohort.copy()).obs[keys.SAMPLE].astype(str).value_counts()
    assert res.samples["n_cells_kept"].to_dict() == kept.to_dict()
    assert res.n_cells == cohort.n_obs
    truth = cohort.obs.groupby(keys.PATIENT, observed=True)[keys.RESPONSE].first().astype(str).to_dict()
    assert res.labels.set_index(keys.PATIENT)[keys.RESPONSE].to_dict() == truth
    assert set(res.coverage["set"]) == set(DEFAULT_PLAN)


def test_stream_tenx_series_matches_read_cohort(
    cohort: AnnData, pipe: FeaturePipeline, tmp_path: Path, tcp_cluster
) -> None:
    from biomarkers.io import read_cohort

    folder = tmp_path / "series"
    _write_tenx_series(cohort, folder)
    expected = pipe.transform(read_cohort(folder))
    _assert_same(transform_samples(pipe, folder), expected)
    _assert_same(transform_samples(pipe, folder, scheduler=tcp_cluster.scheduler_address), expected)


def test_stream_h5ad_folder(cohort: AnnData, pipe: FeaturePipeline, whole: pd.DataFrame, tmp_path: Path) -> None:
    for i, patients in enumerate((["P001", "P002", "P003"], ["P004", "P005", "P006"])):
        cohort[cohort.obs[keys.PATIENT].isin(patients)].copy().write_h5ad(tmp_path / f"part{i}.h5ad")
    _assert_same(transform_samples(pipe, tmp_path), whole)


def test_stream_errors(cohort: AnnData, pipe: FeaturePipeline) -> None:
    no_patient = cohort[:50].copy()
    del no_patient.obs[keys.PATIENT]
    with pytest.raises(DataSchemaError, match="patient_id"):
        transform_samples(pipe, [no_patient])
    with pytest.raises(DataSchemaError, match="no cells"):
        transform_samples(pipe, [])
    with pytest.raises(ConfigError, match="read_kwargs"):
        transform_samples(pipe, cohort, read_kwargs={"backed": "r"})


# -- Dask --------------------------------------------------------------------------------------------------------------
def test_dask_local_cluster_matches_serial(
    h5ad_path: Path, pipe: FeaturePipeline, whole: pd.DataFrame, serial: SampleStats
) -> None:
    pytest.importorskip("distributed")
    res = sample_stats(pipe, h5ad_path, scheduler="local", n_workers=2)
    _assert_same(pipe.finalize(res.stats), whole)
    pd.testing.assert_frame_equal(res.stats, serial.stats, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(res.samples.drop(columns="seconds"), serial.samples.drop(columns="seconds"))


def test_dask_tcp_address(
    h5ad_path: Path, cohort: AnnData, pipe: FeaturePipeline, whole: pd.DataFrame, tcp_cluster
) -> None:
    address = tcp_cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    _assert_same(transform_samples(pipe, h5ad_path, scheduler=address), whole)
    _assert_same(transform_samples(pipe, cohort, scheduler=address), whole)  # scattered sample by sample
    with dask_client(address) as client:  # an open client is used as is
        _assert_same(transform_samples(pipe, h5ad_path, scheduler=client), whole)
        assert client.status == "running"


def test_cell_subsample_is_the_same_serial_and_on_dask(h5ad_path: Path, pipe: FeaturePipeline, tcp_cluster) -> None:
    # The UMAP subsample is drawn while streaming; keys hash (sample, cell), so any order or scheduler agrees.
    serial = sample_stats(pipe, h5ad_path, keep_cells=40)
    dask = sample_stats(pipe, h5ad_path, scheduler=tcp_cluster.scheduler_address, keep_cells=40)
    assert serial.cells.n_obs == 40
    assert list(serial.cells.obs_names) == list(dask.cells.obs_names)
    assert (serial.cells.X != dask.cells.X).nnz == 0
    assert serial.cells.obs[keys.SAMPLE].nunique() > 1  # drawn across samples, not from the first one


def test_dask_worker_error_reaches_caller(cohort: AnnData, pipe: FeaturePipeline, tcp_cluster) -> None:
    counts = cohort[:200].copy()
    counts.X = counts.X * 0.5  # not integer counts
    del counts.layers[keys.COUNTS]
    with pytest.raises(DataSchemaError, match="raw counts"):
        transform_samples(pipe, [counts], scheduler=tcp_cluster.scheduler_address)


def test_missing_dask_names_the_extra(pipe: FeaturePipeline, cohort: AnnData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'biomarkers\[dask\]'"):
        transform_samples(pipe, cohort, scheduler="local")


def test_bad_scheduler(pipe: FeaturePipeline, cohort: AnnData) -> None:
    pytest.importorskip("distributed")
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        transform_samples(pipe, cohort, scheduler="udp://nowhere")


# -- progress ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("show", "tty", "disabled"),
    [(True, True, False), (True, False, True), (False, True, True), (None, True, False), (None, False, True)],
)
def test_progress_on_a_tty_unless_turned_off(
    show: bool, tty: bool, disabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from biomarkers.compute._progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    bar = Progress(total=3, show=show)
    assert bar.bar.disable is disabled
    bar.close()


# -- prepare_cohort ------------------------------------------------------------------------------------------------------
def test_prepare_cohort_streams_without_loading(h5ad_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import biomarkers.io
    from biomarkers.cohort import prepare_cohort
    from biomarkers.config import ExperimentConfig

    base = {"name": "stream-test", "data": {"path": str(h5ad_path)}, "cv": {"n_splits": 2}}
    in_memory = prepare_cohort(ExperimentConfig(**base, compute={"stream": False}))
    assert in_memory.cells is not None

    def no_whole_read(*args: object, **kwargs: object) -> None:
        msg = "the streaming path must not read the whole cohort"
        raise AssertionError(msg)

    monkeypatch.setattr(biomarkers.io, "read_cohort", no_whole_read)
    streamed = prepare_cohort(ExperimentConfig(**base))  # files stream by default
    # The UMAP subsample is drawn while streaming: processed cells, at most plots.umap_max_cells of them.
    assert streamed.cells is not None
    assert streamed.cells.n_obs == min(in_memory.cells.n_obs, 5000)
    assert set(streamed.cells.obs_names) <= set(in_memory.cells.obs_names)
    assert streamed.cells.obs["sig__AQP9_INFLAMMATORY_MACROPHAGE"].notna().any()
    _assert_same(streamed.features, in_memory.features)
    pd.testing.assert_series_equal(streamed.labels, in_memory.labels.set_axis(in_memory.labels.index.astype(str)))
    pd.testing.assert_frame_equal(streamed.coverage, in_memory.coverage)
    assert streamed.digest == in_memory.digest
