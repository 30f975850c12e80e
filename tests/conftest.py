"""Shared, seeded toy data. Tests get ``.copy()``s so no test sees another's changes."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when it (or ../shared) is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is absent on a fresh clone)")
    return path


@pytest.fixture(scope="session")
def _small_cohort():
    import biomarkers as bm

    return bm.simulate_cohort(n_patients=12, cells_per_patient=150, n_genes=600, seed=0)


@pytest.fixture
def small_cohort(_small_cohort):
    """12 patients (7 R / 5 NR) x ~150 cells x 600 genes of raw counts."""
    return _small_cohort.copy()


@pytest.fixture(scope="session")
def _default_cohort():
    import biomarkers as bm

    return bm.simulate_cohort(seed=0)


@pytest.fixture
def default_cohort(_default_cohort):
    """The main job's cohort: 40 patients x ~500 cells x 2,000 genes."""
    return _default_cohort.copy()


@pytest.fixture(scope="session")
def processed_default(_default_cohort):
    from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
    from biomarkers.signatures import load_gene_sets

    pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))
    return pipe, pipe.process(_default_cohort)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    """One SQLite MLflow store (and artifact root) shared by a test module: its tests hold in any order."""
    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(tmp / "mlruns"))
        yield uri


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store and artifact root under tmp_path."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BIOMARKERS_ARTIFACT_ROOT", str(tmp_path / "mlruns"))
    return uri
