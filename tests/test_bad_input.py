"""Every bad input, as one table: each gives one `error: ...` line, exit code 2, and leaves nothing behind.

Each case builds its input under ``tmp_path`` and runs the real entry point in a fresh process (as a user
would), with a fresh SQLite MLflow store in ``tmp_path``. Experiment-level cases use ``biomarkers run`` (not
``--dry-run``), so the guarantee that bad input never leaves an MLflow run, a model version or an output file
behind is exercised. ``predict`` cases use one small registered model built once for the module.

Inputs a user might think are bad but that the package handles (Ensembl IDs with a symbol column, duplicated
gene symbols) are in ``HANDLED`` at the end: they must be read, with a note.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml
from scipy import sparse

import biomarkers as bm
from biomarkers import _keys as K

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from anndata import AnnData

MODEL = "models:/bad-input@champion"  # registry.model_name unset: the experiment name
OUT = "preds.csv"
# A tiny but complete experiment: 8 simulated patients x ~60 cells x 400 genes, one model, 2-fold CV.
TINY = {
    "schema_version": 1,
    "name": "bad-input",
    "data": {"path": "cohort.h5ad"},
    "preprocess": {"min_genes": 20, "min_counts": 50},
    "models": [{"kind": "logreg"}],
    "cv": {"n_splits": 2, "n_repeats": 1},
    "evaluation": {"n_boot": 100, "n_permutations": 0},
    "plots": {"umap": False},
}


# --- building inputs -----------------------------------------------------------------------------------------


def cohort(seed: int = 0) -> AnnData:
    """8 patients (5 R / 3 NR) x ~60 cells x 400 genes of raw counts."""
    return bm.simulate_cohort(n_patients=8, cells_per_patient=60, n_genes=400, seed=seed)


def h5ad(tmp: Path, change: Callable[[AnnData], AnnData | None] | None = None, name: str = "cohort.h5ad") -> str:
    """Write the tiny cohort, after ``change(adata)`` (in place, or returning a new object), to ``tmp/name``."""
    adata = cohort()
    if change is not None:
        new = change(adata)
        adata = adata if new is None else new  # not `or`: an AnnData with 0 cells is falsy
    adata.write_h5ad(tmp / name)
    return name


def raw_file(tmp: Path, name: str, content: bytes) -> str:
    (tmp / name).write_bytes(content)
    return name


def config(tmp: Path, **sections: object) -> str:
    """Write ``TINY`` with top-level keys replaced or (for dicts) merged, as ``tmp/exp.yaml``."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    (tmp / "exp.yaml").write_text(yaml.safe_dump(cfg))
    return "exp.yaml"


def run(tmp: Path, path: str, *extra: str, **sections: object) -> list[str]:
    """``biomarkers run exp.yaml [extra]`` with data.path = ``path``; ``sections`` replace or update TINY's."""
    data_spec = {**TINY["data"], "path": path, **sections.pop("data", {})}  # type: ignore[dict-item]
    return ["run", config(tmp, data=data_spec, **sections), *extra]


def cells(
    change: Callable[[AnnData], AnnData | None] | None = None, *extra: str, **sections: object
) -> Callable[[Path], list[str]]:
    """Case: ``biomarkers run`` on the tiny cohort after ``change``, with config ``sections`` and CLI ``extra``."""
    return lambda t: run(t, h5ad(t, change), *extra, **sections)


def file(name: str, content: bytes) -> Callable[[Path], list[str]]:
    """Case: ``biomarkers run`` on a file ``name`` holding ``content``."""
    return lambda t: run(t, raw_file(t, name, content))


def predicting(make_input: Callable[[Path], str], model: str = MODEL) -> Callable[[Path], list[str]]:
    """Case: ``biomarkers predict INPUT --model MODEL --out preds.csv`` against the module's registered model."""
    return lambda t: ["predict", make_input(t), "--model", model, "--out", OUT]


# corruptions of the simulated counts
def log_normalised(a: AnnData) -> AnnData:
    import scanpy as sc

    del a.layers[K.COUNTS]
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def depth_scaled(a: AnnData) -> None:
    del a.layers[K.COUNTS]
    a.X = a.X * 0.37


def set_value(value: float) -> Callable[[AnnData], None]:
    def change(a: AnnData) -> None:
        for m in (a.X, a.layers[K.COUNTS]):
            m.data[3] = value

    return change


def drop_obs(column: str) -> Callable[[AnnData], None]:
    def change(a: AnnData) -> None:
        del a.obs[column]

    return change


def relabel(mapping: dict[str, str]) -> Callable[[AnnData], None]:
    def change(a: AnnData) -> None:
        a.obs[K.RESPONSE] = a.obs[K.RESPONSE].astype(str).map(lambda v: mapping.get(v, v))

    return change


def duplicate_barcodes(a: AnnData) -> None:
    names = a.obs_names.to_numpy().copy()
    names[1] = names[0]  # two cells of the same sample with one barcode
    a.obs_names = names


def ensembl_ids(a: AnnData) -> None:
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]


def rename_mt(a: AnnData) -> None:
    a.var_names = [g.replace("MT-", "MITO") for g in a.var_names]


def empty_sample(a: AnnData) -> None:
    """The cells of one sample keep counts in 5 genes only: all fail min_genes."""
    first = (a.obs[K.SAMPLE] == a.obs[K.SAMPLE].iloc[0]).to_numpy()
    x = a.X.tolil()
    x[np.flatnonzero(first), 5:] = 0
    a.X = sparse.csr_matrix(x)
    a.layers[K.COUNTS] = a.X.copy()


def few_genes(a: AnnData) -> AnnData:
    """A targeted panel, not a transcriptome: only a quarter of each signature's genes are measured."""
    from biomarkers.signatures import load_gene_sets

    drop = set()
    for gs in load_gene_sets().values():
        present = [g for g in gs.genes if g in a.var_names]
        drop |= set(present[len(present) // 4 :])
    return a[:, [g for g in a.var_names if g not in drop]].copy()


def unknown_gene_set(tmp: Path) -> list[str]:
    """``biomarkers run`` scoring a user gene set none of whose genes is measured."""
    (tmp / "mine.gmt").write_text("MY_SET\tgenes that are not in the data\tNOTAGENE1\tNOTAGENE2\tNOTAGENE3\n")
    return run(tmp, h5ad(tmp), signature_files=["mine.gmt"], signatures={"MY_SET": ["MNP"]})


def clinical_csv(tmp: Path) -> str:
    """A clinical table whose patient ids match none of the cohort's."""
    (tmp / "clinical.csv").write_text("patient_id,response\nX1,responder\nX2,non_responder\n")
    return "clinical.csv"


def features_csv(tmp: Path) -> str:
    (tmp / "features.csv").write_text("patient_id,prop__CD8_T,n_cells\nP1,0.1,100\nP2,0.2,120\n")
    return "features.csv"


# --- the table -----------------------------------------------------------------------------------------------
# id, how to build the input and the command, and substrings of the one-line message: what was found, and the fix.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
PICKLE = b"\x80\x04K\x01."
# fmt: off
CASES = [
    # files
    ("missing_file", lambda t: run(t, "nope.h5ad"), ("Input not found", "Check data.path")),
    ("random_bytes_h5ad", file("x.h5ad", np.random.default_rng(0).bytes(4096)), ("Cannot read", "Re-export it")),
    ("empty_h5ad", file("x.h5ad", b""), ("is empty (0 bytes)", "Re-export or re-download")),
    ("png_renamed_csv", file("x.csv", PNG), ("Cannot parse", "comma- or tab-separated text table")),
    ("empty_csv", file("x.csv", b""), ("is empty (0 bytes)", "Re-export or re-download")),
    ("unknown_suffix", file("x.xlsx", b"PK\x03\x04"), ("Cannot tell the format", "data.format")),
    ("pickle_refused", file("x.pkl", PICKLE), ("never read (unpickling can run", "adata.write_h5ad")),
    # counts
    ("log_normalised_x", cells(log_normalised), ("X has non-integer values", "re-export the object with raw counts")),
    ("non_integer_counts", cells(depth_scaled), ("non-integer values", "layers['counts']")),
    ("negative_values", cells(set_value(-3.0)), ("negative values (min -3)", "re-export")),
    ("nan_values", cells(set_value(np.nan)), ("1 NaN/inf values", "re-export")),
    ("inf_values", cells(set_value(np.inf)), ("1 NaN/inf values", "re-export")),
    # metadata and labels
    ("missing_patient_column", cells(drop_obs(K.PATIENT)), ("Column 'patient_id' not in", "Set data.patient_col")),
    ("wrong_patient_col", cells(data={"patient_col": "donor"}), ("Column 'donor'", "Set data.patient_col")),
    ("missing_label_column", cells(drop_obs(K.RESPONSE)), ("Column 'response' not in", "Set data.label_col")),
    ("unknown_label_values", cells(relabel({"non_responder": "NR"})), ("labels NR", "data.label_map")),
    ("one_class", cells(relabel({"non_responder": "responder"})), ("Only one class", "check data.label_col")),
    ("too_few_patients_for_cv", cells(cv={"n_splits": 4}), ("3 non-responder patients", "Lower cv.n_splits to <= 3")),
    ("query_missing_column", cells(data={"query": "visit == 'baseline'"}), ("names column 'visit'", "own column names")),
    ("clinical_ids_do_not_match", lambda t: run(t, h5ad(t), data={"labels": clinical_csv(t)}), ("0 of 8 matched", "same ids")),
    # genes and cells
    ("duplicate_barcodes", cells(duplicate_barcodes), ("duplicated cell barcodes", "once per sample")),
    ("ensembl_ids_without_symbols", cells(ensembl_ids), ("are Ensembl IDs", "adata.var['gene_symbols']")),
    ("no_mt_genes", cells(rename_mt), ("No mitochondrial genes (prefix 'MT-')", "Set preprocess.mt_prefix")),
    ("sample_empty_after_qc", cells(empty_sample), ("No cells left after QC in sample(s) P001_S1", "relax preprocess")),
    ("zero_cells", cells(lambda a: a[:0].copy()), ("cohort.h5ad has 0 cells", "Re-export it with its cells")),
    ("gene_set_without_genes", unknown_gene_set, ("MY_SET have no gene in the data (0/3 found)", "drop the set")),
    # config
    ("config_unknown_key", cells(cv={"n_split": 2}), ("unknown key 'cv.n_split'", "experiments/_template.yaml")),
    ("config_wrong_type", cells(cv={"n_splits": "two"}), ("'cv.n_splits': Input should be a valid int", "got 'two'")),
    ("set_unknown_key", cells(None, "--set", "cv.n_splitz=3"), ("no key 'n_splitz'", "Check the spelling")),
    ("set_wrong_type", cells(None, "--set", "evaluation.n_boot=lots"), ("'evaluation.n_boot'", "got 'lots'")),
    ("baseline_feature_misspelled", cells(baselines={"single_features": ["aqp9_macrophage_fractoin"]}),
     ("'aqp9_macrophage_fractoin' is not a feature column", "did you mean 'aqp9_macrophage_fraction'")),
    # predict
    ("predict_missing_model", predicting(h5ad, "models:/nope@champion"), ("not found", "registered: bad-input")),
    ("predict_missing_version", predicting(h5ad, "models:/bad-input/9"), ("/9 not found", "or alias")),
    ("predict_file_as_model", predicting(h5ad, "model.pkl"), ("'model.pkl' must be models:/", "the project's store")),
    ("predict_few_genes", predicting(lambda t: h5ad(t, few_genes)), ("too few of the scoring reference's genes", "HGNC symbols")),
    ("predict_few_features", predicting(features_csv), ("Only 1/", "Missing: aqp9_macrophage_fraction")),
    ("predict_png_csv", predicting(lambda t: raw_file(t, "x.csv", PNG)), ("Cannot read x.csv", "feature CSV")),
    ("predict_log_normalised", predicting(lambda t: h5ad(t, log_normalised)), ("No raw integer counts", "re-export")),
]
# fmt: on


# --- running and checking ------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path, store: Path) -> subprocess.CompletedProcess[str]:
    """The installed entry point in a fresh process, with its MLflow store and artifacts under ``store``."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "BIOMARKERS_ARTIFACT_ROOT": str(store / "mlruns"),
    }
    return subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600, check=False,
    )  # fmt: skip


def store_counts(store: Path) -> dict[str, int]:
    """Runs and model versions in a store's SQLite database (0 when there is none yet)."""
    db = store / "mlflow.db"
    if not db.exists():
        return {"runs": 0, "model_versions": 0}
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {
            t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] if t in tables else 0
            for t in ("runs", "model_versions")
        }


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> Path:
    """A store holding one registered single-cell model (champion), trained on the tiny cohort."""
    tmp = tmp_path_factory.mktemp("model_store")
    h5ad(tmp)
    res = cli("run", config(tmp), cwd=tmp, store=tmp)
    assert res.returncode == 0, res.stderr
    assert store_counts(tmp)["model_versions"] == 1
    return tmp


@pytest.mark.parametrize(("build", "expected"), [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(request, tmp_path, build, expected):
    uses_model = request.node.callspec.id.startswith("predict_")
    store = request.getfixturevalue("model_store") if uses_model else tmp_path
    args = build(tmp_path)
    before_store, before_files = store_counts(store), files(tmp_path)

    res = cli(*args, cwd=tmp_path, store=store)

    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert all(part in lines[0] for part in expected), lines[0]
    assert store_counts(store) == before_store, "bad input created an MLflow run or a model version"
    if not uses_model:  # bad input is refused before the store is touched: not even an empty database
        assert not (tmp_path / "mlflow.db").exists()
    left = files(tmp_path) - before_files
    assert not left, f"left behind: {left}"  # no output, no half-written temp file, no artifacts
    print(f"{request.node.callspec.id}: {lines[0]}")  # shown with -s: the messages users see


# --- handled, not refused ------------------------------------------------------------------------------------


def ensembl_with_symbols(a: AnnData) -> None:
    a.var["gene_symbols"] = a.var_names.to_numpy()
    ensembl_ids(a)


def duplicate_gene(a: AnnData) -> None:
    names = a.var_names.to_numpy().copy()
    names[names.tolist().index("ACTB")] = "A2M"
    a.var_names = names


HANDLED = [
    pytest.param(
        ensembl_with_symbols,
        "genes of cohort.h5ad are Ensembl IDs; symbols taken from var['gene_symbols']",
        lambda a: a.var[K.GENE_ID].str.startswith("ENSG").all() and {"AQP9", "OSM"} <= set(a.var_names),
        id="ensembl_ids_with_symbol_column",
    ),
    pytest.param(
        duplicate_gene,
        "1 duplicated gene symbols in cohort.h5ad made unique with -1, -2 suffixes (e.g. A2M)",
        lambda a: {"A2M", "A2M-1"} <= set(a.var_names) and "ACTB" not in a.var_names,
        id="duplicate_gene_names",
    ),
]


@pytest.mark.parametrize(("change", "note", "check"), HANDLED)
def test_handled_inputs_are_read_with_a_note(tmp_path, change, note, check):
    """Inputs that look wrong but are well defined: read (the dry run passes), with a note in the log."""
    res = cli("-v", *run(tmp_path, h5ad(tmp_path, change)), "--dry-run", cwd=tmp_path, store=tmp_path)
    assert res.returncode == 0, res.stderr
    assert note in res.stderr
    adata = bm.read_cohort(tmp_path / "cohort.h5ad")
    assert adata.var_names.is_unique
    assert check(adata)
