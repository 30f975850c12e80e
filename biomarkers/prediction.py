"""New samples -> one row per patient (or bulk sample) with the probability of non-response."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from biomarkers import _keys as K
from biomarkers._atomic import write_csv
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("biomarkers")

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


def load_model(model_uri: str) -> tuple[Any, Any]:
    """Load a registered model from the project's MLflow store.

    Returns
    -------
    (the pyfunc model, the underlying :class:`biomarkers.tracking.BiomarkerModel`).
    """
    import mlflow

    from biomarkers.tracking import resolve_model_uri

    resolve_model_uri(model_uri)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    return pyfunc, pyfunc.unwrap_python_model()


def _is_table(path: Path) -> bool:
    return any(path.name.lower().endswith(s) for s in TABLE_SUFFIXES)


def _has_features(path: Path, features: list[str]) -> bool:
    sep = "\t" if ".tsv" in path.name.lower() else ","
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return False
    return len(set(features) & set(header)) > 0


def _read_feature_table(path: Path, *, id_col: str) -> pd.DataFrame:
    sep = "\t" if ".tsv" in path.name.lower() else ","
    try:
        df = pd.read_csv(path, sep=sep)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        msg = f"Cannot read {path} as a CSV/TSV table ({type(e).__name__}). Pass a patient x feature CSV or an h5ad of cells."
        raise DataSchemaError(msg) from None
    if id_col not in df.columns:
        msg = f"Column '{id_col}' not in {path.name} (have: {', '.join(map(str, df.columns[:8]))}). Name the id column '{id_col}' or pass --id-col."
        raise DataSchemaError(msg)
    return df.set_index(df[id_col].astype(str)).drop(columns=[id_col])


def predict(
    data: str | Path | AnnData | pd.DataFrame,
    *,
    model_uri: str,
    out: str | Path | None = None,
    patient_col: str = K.PATIENT,
) -> pd.DataFrame:
    """Apply a registered model to new samples.

    Parameters
    ----------
    data
        Raw-count cells (h5ad / 10x path or AnnData, with a patient column), a patient x feature table
        (CSV path or DataFrame, id column ``patient_id``), or, for bulk models, a bulk table of samples x
        genes (id column ``sample_id``).
    model_uri
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/model`` in the project's store.
    out
        CSV to write; written only when everything succeeded (no half-written file).
    patient_col
        Patient column of the cells' ``obs`` (renamed to ``patient_id``).

    Returns
    -------
    One row per patient (``patient_id, p_non_response, prediction``) or bulk sample (``sample_id, ...``),
    then the feature values and ``feature_coverage``.
    """
    from anndata import AnnData

    if isinstance(data, (str, Path)) and not Path(data).exists():
        msg = f"Input not found: {data}. Pass an h5ad of raw counts, a 10x folder/.h5, or a CSV table."
        raise DataSchemaError(msg)
    pyfunc, model = load_model(model_uri)
    id_col = K.SAMPLE if model.kind == "bulk" else K.PATIENT
    if isinstance(data, (str, Path)):
        path = Path(data)
        if _is_table(path) and (model.kind == "bulk" or (model.bulk is not None and not _has_features(path, model.features))):
            # A bulk table of samples x genes: bulk models, and single-cell models whose features also exist in
            # bulk (pbz__<set>, cohort-standardised signature scores).
            from biomarkers.io import read_cohort

            bulk = read_cohort(path, kind="bulk_table")
            features = model.features_from_bulk(bulk.to_df())
            id_col = K.SAMPLE
        elif _is_table(path):
            features = _read_feature_table(path, id_col=id_col)
        else:
            from biomarkers.io import read_cohort

            features = model.features_from_cells(read_cohort(path, obs_map={K.PATIENT: patient_col}))
    elif isinstance(data, AnnData):
        if model.kind == "bulk":
            features = model.features_from_bulk(data.to_df())
        else:
            if patient_col != K.PATIENT:
                if patient_col not in data.obs:
                    msg = f"Column '{patient_col}' not in adata.obs (have: {', '.join(map(str, data.obs.columns[:10]))}). Pass patient_col=..."
                    raise DataSchemaError(msg)
                data = data.copy()
                data.obs[K.PATIENT] = data.obs[patient_col].astype(str)
            features = model.features_from_cells(data)
    else:
        features = data.copy()
        if id_col in features.columns:
            features = features.set_index(features[id_col].astype(str)).drop(columns=[id_col])
    aligned = model.check_features(features)
    coverage = model.feature_coverage(features)
    result = pyfunc.predict(aligned)
    result.index = aligned.index
    table = pd.concat([result, aligned, coverage.rename("feature_coverage")], axis=1)
    table.index.name = id_col
    table = table.reset_index()
    if out is not None:
        write_csv(table, out)
    return table
