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


def _read_feature_table(path: Path, *, id_col: str | list[str]) -> pd.DataFrame:
    """Read a patient (or sample) x feature table indexed by its id column: the first of ``id_col`` it has."""
    sep = "\t" if ".tsv" in path.name.lower() else ","
    try:
        df = pd.read_csv(path, sep=sep)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        msg = f"Cannot read {path} as a CSV/TSV table ({type(e).__name__}). Pass a patient x feature CSV or an h5ad of cells."
        raise DataSchemaError(msg) from None
    return _index_by_id(df, id_col=id_col, source=path.name)


def _index_by_id(df: pd.DataFrame, *, id_col: str | list[str], source: str) -> pd.DataFrame:
    candidates = list(dict.fromkeys([id_col] if isinstance(id_col, str) else id_col))
    col = next((c for c in candidates if c in df.columns), None)
    if col is None:
        msg = (
            f"Column '{candidates[0]}' not in {source} (have: {', '.join(map(str, df.columns[:8]))}). "
            f"Rename the id column of the table to '{candidates[0]}'."
        )
        raise DataSchemaError(msg)
    ids = df[col].astype(str).str.strip()
    if ids.duplicated().any():
        dupes = ids[ids.duplicated()].unique()
        msg = f"Ids {', '.join(dupes[:4])} appear more than once in column '{col}' of {source}. Keep one row per patient."
        raise DataSchemaError(msg)
    out = df.drop(columns=[col])
    out.index = pd.Index(ids.to_numpy(), name=candidates[0])
    return out


def _table_id_cols(model: Any) -> list[str]:
    """Id columns a feature table may use: the training patient column (feature-table models), then ``patient_id``."""
    cols = [K.SAMPLE] if model.kind == "bulk" else []
    if model.kind == "features":
        cols.append((getattr(model, "read_spec", None) or {}).get("patient_col") or K.PATIENT)
    return [*cols, K.PATIENT]


def _canonical_columns(frame: pd.DataFrame, model: Any) -> pd.DataFrame:
    """Rename raw covariate columns of a table to the names training used (``data.obs_map``: canonical -> raw)."""
    obs_map = (getattr(model, "read_spec", None) or {}).get("obs_map") or {}
    rename = {
        obs_map[c]: c for c in model.covariate_columns() if c not in frame.columns and obs_map.get(c) in frame.columns
    }
    return frame.rename(columns=rename)


def _with_clinical(model: Any, meta: pd.DataFrame, clinical: str | Path | None) -> pd.DataFrame:
    """Add the ``--clinical`` table's covariates (by patient id) to the per-row metadata; they take precedence."""
    if clinical is None:
        return meta
    from biomarkers.io._obs import load_clinical

    table, name = load_clinical(clinical)
    spec = getattr(model, "read_spec", None) or {}
    table = _index_by_id(_canonical_columns(table, model), id_col=[spec.get("patient_col") or K.PATIENT, K.PATIENT], source=name)
    wanted = [c for c in model.covariate_columns() if c in table.columns]
    if not wanted:
        msg = (
            f"{name} has none of the model's covariate columns ({', '.join(model.covariate_columns()) or 'none'}; "
            f"have: {', '.join(map(str, table.columns[:8]))}). Name its columns as in training."
        )
        raise DataSchemaError(msg)
    # Bulk rows are samples: the clinical table is keyed by patient.
    keys = meta[K.PATIENT].astype(str) if K.PATIENT in meta.columns else pd.Series(meta.index.astype(str), index=meta.index)
    absent = sorted(set(keys) - set(table.index))
    if absent:
        logger.warning("predict: %d of %d patients have no row in %s (e.g. %s); their covariates are missing",
                       len(absent), keys.nunique(), name, ", ".join(absent[:3]))  # fmt: skip
    meta = meta.copy()
    for c in wanted:
        incoming = pd.Series(table[c].reindex(keys.to_numpy()).to_numpy(), index=meta.index)
        meta[c] = incoming.combine_first(meta[c]) if c in meta.columns else incoming
    return meta


def _cells_meta(model: Any, obs: pd.DataFrame, *, where: str) -> pd.DataFrame:
    """Per-patient covariates of cells (or streamed samples), for the columns the input has."""
    from biomarkers.features import patient_values

    present = [c for c in model.covariate_columns() if c in obs.columns]
    return patient_values(obs, present, where=where)


def _bulk_table(path: Path, model: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a bulk table's samples x genes and its obs; numeric covariate columns are read as metadata, not genes."""
    from biomarkers.io import read_cohort
    from biomarkers.io._common import read_delimited

    obs_map = (getattr(model, "read_spec", None) or {}).get("obs_map") or {}
    header = set(map(str, read_delimited(path, nrows=0).columns))
    raw = [r for c in model.covariate_columns() for r in (c, obs_map.get(c)) if r and r in header]
    bulk = read_cohort(path, kind="bulk_table", metadata_cols=raw or None)
    return bulk.to_df(), _canonical_columns(bulk.obs, model)


def _bulk_cohorts(model: Any, obs: pd.DataFrame) -> pd.Series | None:
    """Cohort per bulk sample for gene z-scores, when training z-scored within cohorts and the input has the column."""
    col = (model.bulk or {}).get("cohort_col")
    if not col:
        return None
    if col not in obs.columns:
        logger.info("predict: no cohort column %r in the bulk input; its samples are z-scored as one cohort", col)
        return None
    return obs[col].astype(str)


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
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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
    table = res.labels
    if any(c not in table.columns for c in model.covariate_columns()):
        # The streamed sample table carries labels and biopsy attributes only: read the covariates from the
        # file's metadata (no counts), as training did.
        from biomarkers.compute._sources import metadata_table

        found = metadata_table(path, spec.read_kwargs())
        table = found if found is not None else table
    return (
        pipe.finalize(res.stats), res.stats[list(QC_COLUMNS)], _cells_meta(model, table, where=path.name),
        _gene_coverage(res.coverage),
    )  # fmt: skip


def _gene_coverage(report: pd.DataFrame | None) -> float | None:
    """Smallest fraction of a scored gene set's genes found in the input (None when not known)."""
    if report is None or report.empty or "n_found" not in report or "n_genes" not in report:
        return None
    return float((report["n_found"] / report["n_genes"].where(report["n_genes"] > 0)).min())


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
    clinical: str | Path | None = None,
    report: str | Path | None = None,
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
    clinical
        CSV/TSV of the new patients' clinical covariates, one row per patient (id column: the training patient
        column or ``patient_id``). Needed when the model uses ``clin__`` covariates that training took from the
        ``data.labels`` table; its values take precedence over the input's own columns. A level unseen in
        training gives all-zero dummies (with a warning).
    report
        Also write a self-contained HTML report of this batch (probabilities, explanations, flags).

    Per-cohort standardisation (``features.standardize: per_cohort``) is re-applied: the input is z-scored within
    each cohort of the training cohort column when the input has it, else as one cohort; each cohort needs the
    model's minimum number of rows.

    Returns
    -------
    One row per patient: ``patient_id, p_non_response, prediction, n_cells, n_samples`` (cells and samples
    used); ``flags`` (``;``-joined out-of-distribution codes: ``out_of_range:<feature>``, ``no_stroma``,
    ``no_epithelium``, ``no_mnp``, ``low_gene_coverage``, ``few_cells``; each also logged as a warning) and
    ``reason`` (one readable line); ``top_features``; ``contrib__<feature>`` (signed log-odds contributions of the
    features the model uses) and ``pctl__<feature>`` (percentile in the training cohort of the key features); then
    the model's features and ``feature_coverage``. Bulk: one row per sample (``sample_id, ...``).
    """
    from anndata import AnnData

    from biomarkers.tracking._pyfunc import QC_COLUMNS

    if isinstance(data, (str, Path)) and not Path(data).exists():
        msg = f"Input not found: {data}. Pass an h5ad of raw counts, a 10x folder/.h5, or a CSV table."
        raise DataSchemaError(msg)
    pyfunc, model = load_model(model_uri)
    id_col = K.SAMPLE if model.kind == "bulk" else K.PATIENT
    overrides = {"patient_col": patient_col, "sample_col": sample_col, "query": query, "obs_map": obs_map}
    if clinical is not None and not Path(clinical).exists():
        msg = f"Clinical table not found: {clinical}. Pass a CSV/TSV of covariates by patient id with --clinical."
        raise DataSchemaError(msg)
    qc: pd.DataFrame | None = None
    gene_coverage: float | None = None
    where = Path(data).name if isinstance(data, (str, Path)) else "the input"
    if isinstance(data, (str, Path)):
        path = Path(data)
        if _is_table(path) and (model.kind == "bulk" or (model.bulk is not None and not _has_features(path, model.features))):
            # A bulk table of samples x genes: bulk models, and single-cell models whose features also exist in
            # bulk (pbz__<set>, cohort-standardised signature scores).
            genes, meta = _bulk_table(path, model)
            features = model.features_from_bulk(genes, cohorts=_bulk_cohorts(model, meta))
            id_col = K.SAMPLE
        elif _is_table(path):
            features = _read_feature_table(path, id_col=_table_id_cols(model))
            id_col = str(features.index.name)
            meta = _canonical_columns(features, model)
        else:
            spec = _cells_spec(model, overrides)
            features, qc, meta, gene_coverage = _from_cell_file(
                model, path, spec, scheduler=scheduler, n_workers=n_workers
            )
    elif isinstance(data, AnnData):
        if model.kind == "bulk":
            meta = _canonical_columns(data.obs, model)
            features = model.features_from_bulk(data.to_df(), cohorts=_bulk_cohorts(model, meta))
        else:
            spec = _cells_spec(model, overrides)
            cells = _canonical_anndata(data, spec)
            features, qc = _from_cells(model, cells, spec, source="adata")
            gene_coverage = _gene_coverage(_coverage_of(model, cells.var_names))
            meta = _cells_meta(model, cells.obs, where="adata")
    else:
        features = data.copy()
        ids = [c for c in _table_id_cols(model) if c in features.columns]
        if ids:
            features = _index_by_id(features, id_col=ids, source="the input table")
            id_col = str(features.index.name)
        meta = _canonical_columns(features, model)
    meta = _with_clinical(model, meta, clinical)
    features = model.apply_covariates(features, meta, where=where)
    aligned = model.check_features(features)
    coverage = model.feature_coverage(features)
    result = pyfunc.predict(aligned)
    result.index = aligned.index
    parts = [result]
    if model.kind not in ("bulk", "features"):  # cells used per patient; a feature-table model has none
        if qc is None:  # a feature table: report what it says, if anything
            qc = features.reindex(columns=list(QC_COLUMNS))
        parts.append(qc.reindex(aligned.index).astype(float))
    parts.append(_explanations(model, features, aligned, result, gene_coverage=gene_coverage, qc=qc))
    shown = aligned.drop(columns=[c for c in QC_COLUMNS if c in aligned.columns and model.kind not in ("bulk", "features")])
    table = pd.concat([*parts, shown, coverage.rename("feature_coverage")], axis=1)
    table.index.name = id_col
    table = table.reset_index()
    if report is not None:
        _write_report(table, model, model_uri, report)
    if out is not None:
        write_csv(table, out)
    return table


def _coverage_of(model: Any, var_names: Any) -> pd.DataFrame | None:
    from biomarkers.signatures import coverage_report

    pipe = model.feature_pipeline()
    return coverage_report({n: pipe.gene_sets[n] for n in pipe.plan}, list(map(str, var_names)))


def _explanations(
    model: Any,
    features: pd.DataFrame,
    aligned: pd.DataFrame,
    result: pd.DataFrame,
    *,
    gene_coverage: float | None,
    qc: pd.DataFrame | None,
) -> pd.DataFrame:
    """Return ``flags, reason, top_features, contrib__<feature>..., pctl__<feature>...`` per patient."""
    from biomarkers.models._explain import top_features
    from biomarkers.tracking._profile import flag_patients, percentiles, reasons

    contrib, _ = model.explain(aligned)
    used = [c for c in contrib.columns if (contrib[c] != 0).any()]
    profile = getattr(model, "profile", None) or {}
    pctl = percentiles(features, profile)
    n_cells = qc[K.N_CELLS] if qc is not None and K.N_CELLS in qc else None
    missing = sum(f not in features.columns for f in model.features)
    flags = flag_patients(
        features, profile, missing_features=missing, gene_coverage=gene_coverage, n_cells=n_cells, used=used
    )
    _warn_flags(flags)
    reason = reasons(result["p_non_response"], model.threshold, contrib[used], pctl, flags)
    out = pd.concat(
        [flags, reason, top_features(contrib[used]), contrib[used].add_prefix("contrib__"), pctl], axis=1
    )
    return out.reindex(aligned.index)


def _warn_flags(flags: pd.Series) -> None:
    """One warning line per flag code, naming (some of) the patients it concerns."""
    by_code: dict[str, list[str]] = {}
    for pid, codes in flags.items():
        for code in filter(None, str(codes).split(";")):
            by_code.setdefault(code, []).append(str(pid))
    for code, pids in sorted(by_code.items()):
        more = f" and {len(pids) - 5} more" if len(pids) > 5 else ""
        logger.warning(
            "predict: %s for %d patient(s) (%s%s): unlike the training cohort; read their probabilities with care",
            code, len(pids), ", ".join(pids[:5]), more,
        )  # fmt: skip


def _write_report(table: pd.DataFrame, model: Any, model_uri: str, path: str | Path) -> None:
    from biomarkers._atomic import write_atomic
    from biomarkers.tracking._report import predictions_report

    info = {"model_uri": model_uri, "threshold": model.threshold, **(model.metadata or {})}
    html = predictions_report(table, model_info=info)
    write_atomic(path, lambda p: p.write_text(html, encoding="utf-8"))
