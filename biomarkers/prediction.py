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
        msg = (
            f"Column '{id_col}' not in {path.name} (have: {', '.join(map(str, df.columns[:8]))}). "
            f"Rename the id column of the table to '{id_col}'."
        )
        raise DataSchemaError(msg)
    return df.set_index(df[id_col].astype(str)).drop(columns=[id_col])


def _cells_spec(model: Any, overrides: dict[str, Any]) -> Any:
    """Return the training reader settings, with the caller's overrides (``--patient-col``, ``--query``, ...)."""
    from biomarkers.io import ReadSpec

    return ReadSpec.from_dict(getattr(model, "read_spec", None) or {}).for_predict(**overrides)


def _from_cells(model: Any, adata: AnnData, spec: Any, *, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from biomarkers.io import check_sample_mix, sample_table

    check_sample_mix(sample_table(adata.obs), allow=spec.allow_mixed_samples, source=source)
    return model.cells_table(adata)


def _from_cell_file(
    model: Any, path: Path, spec: Any, *, scheduler: str | None, n_workers: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stream a file's samples through the model's frozen pipeline (as training streamed them)."""
    from biomarkers.compute import sample_stats
    from biomarkers.io import check_sample_mix
    from biomarkers.tracking._pyfunc import QC_COLUMNS

    pipe = model.feature_pipeline()
    where = "in process" if scheduler is None else f"on Dask ({scheduler})"
    logger.info("predict: streaming %s one sample at a time %s, with the training settings %s", path.name, where,
                {k: v for k, v in spec.read_kwargs().items() if v})  # fmt: skip
    res = sample_stats(pipe, path, scheduler=scheduler, n_workers=n_workers, read_kwargs=spec.read_kwargs())
    check_sample_mix(res.labels, allow=spec.allow_mixed_samples, source=path.name)
    return pipe.finalize(res.stats), res.stats[list(QC_COLUMNS)]


def _canonical_anndata(adata: AnnData, spec: Any) -> AnnData:
    """Apply the reader settings to an in-memory AnnData as read_cohort does to a file (query, columns, counts).

    An AnnData that already has the canonical columns (read with ``bm.read_cohort``, or simulated) keeps them
    where the training column is absent, and the query then reads those columns under the training names.
    """
    from biomarkers.io._h5ad import canonical_anndata
    from biomarkers.io._obs import LabelSpec, ObsRules, resolve_obs_map

    obs = adata.obs
    mapping = resolve_obs_map(spec.obs_map, patient_col=spec.patient_col, sample_col=spec.sample_col, label_col=None)
    mapping = {c: src for c, src in mapping.items() if src in obs.columns or c not in obs.columns}
    applied = adata.uns.get(K.BM, {}).get("io", {}).get("params", {}).get("query")
    if spec.query and spec.query != applied:  # read_cohort(query=...) records the query it applied
        frame = obs.copy()
        for canonical, src in resolve_obs_map(
            spec.obs_map, patient_col=spec.patient_col, sample_col=spec.sample_col, label_col=None
        ).items():
            if src not in frame.columns and canonical in frame.columns:
                frame[src] = obs[canonical]
        keep = ObsRules(query=spec.query).select(frame, source="adata.obs")
        adata = adata[keep]
    out = canonical_anndata(
        adata, mapping=mapping, labels=LabelSpec(), gene_map=None, allow_non_integer=False, source="adata"
    )
    out.uns.pop("_counts_source", None)
    return out


def predict(
    data: str | Path | AnnData | pd.DataFrame,
    *,
    model_uri: str,
    out: str | Path | None = None,
    patient_col: str | None = None,
    sample_col: str | None = None,
    query: str | None = None,
    obs_map: dict[str, str] | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
) -> pd.DataFrame:
    """Apply a registered model to new samples, read exactly as the model's training data was.

    A file of cells is read one sample at a time (memory bounded by the largest sample), in this process or on
    a Dask cluster; an AnnData is processed in memory.

    Parameters
    ----------
    data
        Raw-count cells (h5ad / 10x path or AnnData), a patient x feature table (CSV path or DataFrame, id
        column ``patient_id``), or, for bulk models, a bulk table of samples x genes (id column ``sample_id``).
    model_uri
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/model`` in the project's store.
    out
        CSV to write; written only when everything succeeded (no half-written file).
    patient_col, sample_col
        Patient / sample columns of the cells' metadata; None: those the model was trained with.
    query
        Sample selection (a pandas query over the input's own columns); None: the training ``data.query``,
        ``""``: keep every row.
    obs_map
        Extra canonical name -> column mappings, on top of the training ``obs_map``.
    scheduler, n_workers
        Where a file's samples are processed: None (this process), ``'local'`` (a local Dask cluster of
        `n_workers`) or ``'tcp://HOST:PORT'``; see :func:`biomarkers.compute.sample_stats`.

    Returns
    -------
    One row per patient: ``patient_id, p_non_response, prediction, n_cells, n_samples`` (cells and samples
    used), then the model's features and ``feature_coverage``. Bulk: one row per sample (``sample_id, ...``).
    """
    from anndata import AnnData

    from biomarkers.tracking._pyfunc import QC_COLUMNS

    if isinstance(data, (str, Path)) and not Path(data).exists():
        msg = f"Input not found: {data}. Pass an h5ad of raw counts, a 10x folder/.h5, or a CSV table."
        raise DataSchemaError(msg)
    pyfunc, model = load_model(model_uri)
    id_col = K.SAMPLE if model.kind == "bulk" else K.PATIENT
    overrides = {"patient_col": patient_col, "sample_col": sample_col, "query": query, "obs_map": obs_map}
    qc: pd.DataFrame | None = None
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
            spec = _cells_spec(model, overrides)
            features, qc = _from_cell_file(model, path, spec, scheduler=scheduler, n_workers=n_workers)
    elif isinstance(data, AnnData):
        if model.kind == "bulk":
            features = model.features_from_bulk(data.to_df())
        else:
            spec = _cells_spec(model, overrides)
            features, qc = _from_cells(model, _canonical_anndata(data, spec), spec, source="adata")
    else:
        features = data.copy()
        if id_col in features.columns:
            features = features.set_index(features[id_col].astype(str)).drop(columns=[id_col])
    aligned = model.check_features(features)
    coverage = model.feature_coverage(features)
    result = pyfunc.predict(aligned)
    result.index = aligned.index
    parts = [result]
    if model.kind != "bulk":
        if qc is None:  # a feature table: report what it says, if anything
            qc = features.reindex(columns=list(QC_COLUMNS))
        parts.append(qc.reindex(aligned.index).astype(float))
    shown = aligned.drop(columns=[c for c in QC_COLUMNS if c in aligned.columns and model.kind != "bulk"])
    table = pd.concat([*parts, shown, coverage.rename("feature_coverage")], axis=1)
    table.index.name = id_col
    table = table.reset_index()
    if out is not None:
        write_csv(table, out)
    return table
