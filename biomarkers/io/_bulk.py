"""Bulk expression tables (CSV/TSV): samples x genes or genes x samples, with metadata columns.

Expression scale: values with max <= 100 are taken as already log-scaled and kept as given (log data
may be negative). Larger values are linear: integer tables are treated as read counts, kept in
``layers['counts']`` and log-transformed as ``log2(CPM + 1)`` (depth-normalised, so samples are
comparable); non-integer linear values (TPM, FPKM, MAS5) become ``log2(x + 1)``. Either transform
is logged and recorded in ``uns['bm']['io']['transform']``. Duplicated genes (probes, aliases) are
collapsed to the row with the highest mean expression, the usual choice for microarrays.

Numeric columns of a samples x genes table that are sample metadata stay in ``obs``, not genes: the columns
named by the obs mapping (``obs_map`` / ``*_col``), those named in :data:`CLINICAL_COLUMNS` (any case, space or
``-`` for ``_``: ``Age``, ``CRP``, ``Disease duration``), lower-case names (``dose_mg``: not HGNC symbols), and
any listed in the reader's ``metadata_cols``. Which numeric columns were taken as metadata is logged (INFO).
"""

from __future__ import annotations

import csv
import difflib
import re
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from biomarkers import _keys
from biomarkers._errors import DataSchemaError

from ._common import (
    CANONICAL_OBS,
    MODALITY_BULK,
    gene_like_fraction,
    logger,
    open_text,
    preview,
    read_delimited,
    record_provenance,
    symbols_from_ids,
    table_separator,
)
from ._obs import NO_RULES, LabelSpec, ObsRules, apply_obs_map, finalize_obs, join_sample_sheet, load_sample_sheet

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from anndata import AnnData

Orientation = Literal["samples_x_genes", "genes_x_samples"]
LOG_SCALE_MAX = 100.0  # log2 microarray/RNA-seq values stay far below this; linear values exceed it
_METADATA_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # 'age', 'dose_mg': lower-case names are not HGNC symbols
#: Clinical columns often found next to the genes of a samples x genes table; a numeric column with one of these
#: names (matched in any case, space or ``-`` read as ``_``) is sample metadata (obs), not a gene. ``CRP`` is also
#: the symbol of the C-reactive protein gene: a table measuring that gene must name its column otherwise.
#: For other names pass ``metadata_cols`` to the reader.
CLINICAL_COLUMNS: tuple[str, ...] = (
    "age", "age_years", "age_at_diagnosis", "age_at_onset", "sex", "gender", "bmi", "weight", "weight_kg", "height",
    "height_cm", "crp", "crp_mg_l", "esr", "albumin", "hemoglobin", "haemoglobin", "calprotectin",
    "fecal_calprotectin", "faecal_calprotectin", "smoking", "smoker", "smoking_status", "disease_duration",
    "duration", "disease_duration_years", "severity", "disease_severity", "mayo", "mayo_score", "cdai", "hbi",
    "ses_cd", "uceis", "dose", "week", "timepoint", "visit",
)  # fmt: skip
_CLINICAL = frozenset(CLINICAL_COLUMNS)


def _clinical_key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def check_finite(values: np.ndarray, *, source: str) -> None:
    """Raise if the expression values contain NaN or inf."""
    finite = np.isfinite(values)
    if not finite.all():
        msg = (
            f"{source} has {int((~finite).sum())} missing/NaN/inf expression values; "
            "drop or impute those genes or samples before reading."
        )
        raise DataSchemaError(msg)


def to_log_scale(values: np.ndarray, *, source: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Return ``(log-scale X, raw counts or None, transform name)`` for a samples x genes array."""
    check_finite(values, source=source)
    vmax = float(values.max()) if values.size else 0.0
    if vmax <= LOG_SCALE_MAX:
        return values.astype(np.float64), None, "none"
    if values.min() < 0:
        msg = (
            f"{source} has values up to {vmax:.3g} (linear scale) and negative values (min {values.min():.3g}); "
            "cannot log-transform. Provide log-scale expression or raw counts."
        )
        raise DataSchemaError(msg)
    if np.all(values == np.round(values)):
        library = values.sum(axis=1, keepdims=True)
        if (library <= 0).any():
            msg = f"{source} has samples with zero total counts; remove them before reading."
            raise DataSchemaError(msg)
        logger.warning(
            "read_cohort: %s looks like raw counts (integers, max %.0f): X = log2(CPM + 1), counts in layers['counts']",
            source,
            vmax,
        )
        return np.log2(values / library * 1e6 + 1.0), values.astype(np.float64), "log2(CPM+1)"
    logger.warning("read_cohort: %s looks linear-scale (max %.3g): X = log2(x + 1)", source, vmax)
    return np.log2(values + 1.0), None, "log2(x+1)"


def collapse_max_mean(values: np.ndarray, names: pd.Index, *, source: str) -> np.ndarray:
    """Positions of the columns to keep so that each gene name occurs once: the one with the highest mean.

    `values` is samples x features, `names` the gene name of each feature.
    """
    names = pd.Index(names).astype(str)
    if names.is_unique:
        return np.arange(len(names))
    means = values.mean(axis=0)
    order = np.lexsort((np.arange(len(names)), -means))  # highest mean first, ties by position
    keep = np.sort(order[~names[order].duplicated()])
    logger.info(
        "read_cohort: %d features of %s collapsed to %d genes (highest mean kept)", len(names), source, len(keep)
    )
    return keep


def _raw_header(path: Path, sep: str) -> list[str]:
    """Return the header fields exactly as written (pandas would rename duplicated genes to ``IL6.1``)."""
    with open_text(path) as handle:
        first = handle.readline()
    return next(csv.reader([first.rstrip("\r\n")], delimiter=sep))


def _numeric_positions(table: pd.DataFrame) -> set[int]:
    """Positions of numeric (not boolean) columns, from the dtypes (no per-column indexing: tables can be wide)."""
    return {
        i
        for i, dtype in enumerate(table.dtypes)
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    }


def detect_orientation(table: pd.DataFrame, *, metadata_names: set[str]) -> Orientation:
    """Decide whether rows are samples or genes.

    A header naming a metadata column (sample_id, patient_id, response, a mapped column) means rows
    are samples; otherwise the axis whose labels look more like gene symbols / Ensembl IDs holds the
    genes, and on a tie the longer axis does (there are usually more genes than samples).
    """
    columns = [str(c) for c in table.columns]
    if metadata_names & set(columns):
        return "samples_x_genes"
    numeric = _numeric_positions(table)
    numeric_headers = [columns[i] for i in range(1, len(columns)) if i in numeric]
    row_score = 0.0 if 0 in numeric else gene_like_fraction(table.iloc[:, 0].astype(str))
    col_score = gene_like_fraction(numeric_headers)
    if row_score != col_score:
        return "genes_x_samples" if row_score > col_score else "samples_x_genes"
    return "genes_x_samples" if len(table) > len(numeric_headers) else "samples_x_genes"


def _samples_x_genes(
    table: pd.DataFrame,
    *,
    metadata_names: set[str],
    sample_col: str | None,
    source: str,
    metadata_cols: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split a samples x genes table into expression, metadata (incl. the ID column) and var."""
    columns = [str(c) for c in table.columns]
    if sample_col is not None and sample_col in columns:
        id_pos = columns.index(sample_col)
    elif _keys.SAMPLE in columns:
        id_pos = columns.index(_keys.SAMPLE)
    elif 0 not in _numeric_positions(table):
        id_pos = 0
    else:
        msg = (
            f"Cannot find sample IDs in {source} (columns: {preview(columns, 10)}). "
            f"Add a {_keys.SAMPLE!r} column or set data.sample_col."
        )
        raise DataSchemaError(msg)
    numeric = _numeric_positions(table)
    extra = set(metadata_cols)
    gene_pos, taken = [], []
    for i, c in enumerate(columns):
        if i == id_pos or i not in numeric:
            continue
        if c in metadata_names or c in extra:
            taken.append(c)
        elif _clinical_key(c) in _CLINICAL:
            taken.append(f"{c} (clinical name)")
        elif _METADATA_NAME_RE.match(c):
            taken.append(f"{c} (lower-case name)")
        else:
            gene_pos.append(i)
    if taken:
        logger.info(
            "read_cohort: %s: numeric columns kept as sample metadata (obs), not genes: %s", source, ", ".join(taken)
        )
    gene_set = set(gene_pos)
    meta_pos = [i for i in range(len(columns)) if i not in gene_set]
    if not gene_pos:
        msg = f"No numeric gene columns in {source} (columns: {preview(columns, 10)}); is the orientation right?"
        raise DataSchemaError(msg)
    index = pd.Index(table.iloc[:, id_pos].astype(str).to_numpy(), dtype=object)
    meta = table.iloc[:, meta_pos].set_axis(index, axis=0)
    expr = table.iloc[:, gene_pos].set_axis(index, axis=0)
    logger.info("read_cohort: %s is samples x genes; metadata columns: %s", source, preview(meta.columns, 12) or "none")
    return expr, meta, pd.DataFrame(index=pd.Index([columns[i] for i in gene_pos], dtype=object))


def _genes_x_samples(table: pd.DataFrame, *, source: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split a genes x samples table (first column = gene IDs) into expression, empty metadata and var."""
    columns = [str(c) for c in table.columns]
    numeric = _numeric_positions(table)
    sample_pos = [i for i in range(1, len(columns)) if i in numeric]
    sample_set = set(sample_pos)
    annotation_pos = [i for i in range(1, len(columns)) if i not in sample_set]
    if not sample_pos:
        msg = f"No numeric sample columns in {source} (columns: {preview(columns, 10)}); is the orientation right?"
        raise DataSchemaError(msg)
    genes = pd.Index(table.iloc[:, 0].astype(str).to_numpy(), dtype=object)
    var = table.iloc[:, annotation_pos].set_axis(genes, axis=0)
    samples = pd.Index([columns[i] for i in sample_pos], dtype=object)
    expr = table.iloc[:, sample_pos].set_axis(genes, axis=0).T.set_axis(samples, axis=0)
    logger.info(
        "read_cohort: %s is genes x samples (%d samples); gene annotation columns: %s",
        source,
        len(samples),
        preview(var.columns) or "none",
    )
    return expr, pd.DataFrame(index=samples), var


def build_bulk(
    expr: pd.DataFrame,
    var: pd.DataFrame,
    obs: pd.DataFrame,
    *,
    source: str,
    gene_map: Mapping[str, str] | None,
) -> tuple[AnnData, str]:
    """Build bulk AnnData from a samples x features table: symbols, duplicates collapsed, log-scale X.

    Returns the AnnData and the name of the transform applied (``"none"``, ``"log2(CPM+1)"``, ``"log2(x+1)"``).
    """
    import anndata as ad

    if not expr.index.is_unique:
        dupes = expr.index[expr.index.duplicated()].unique()
        msg = f"Duplicated sample IDs in {source}: {preview(dupes, 4)}. Each sample must appear once."
        raise DataSchemaError(msg)
    names, var = symbols_from_ids(var, gene_map=gene_map, source=source)
    values = expr.to_numpy(dtype=np.float64)
    check_finite(values, source=source)
    keep = collapse_max_mean(values, names, source=source)
    var = var.iloc[keep].set_axis(pd.Index(names[keep], dtype=object), axis=0)
    x, counts, transform = to_log_scale(values[:, keep], source=source)
    obs = obs.loc[expr.index].copy()
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=x, obs=obs, var=var)
    if counts is not None:
        adata.layers[_keys.COUNTS] = counts
    return adata, transform


def read_bulk_table(
    path: Path,
    *,
    mapping: Mapping[str, str],
    sample_sheet: str | Path | pd.DataFrame | None,
    orientation: Orientation | None,
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    params: Mapping[str, Any],
    metadata_cols: Sequence[str] | None = None,
    rules: ObsRules = NO_RULES,
) -> AnnData:
    """Read a bulk CSV/TSV into AnnData (obs = samples, X = log-scale expression).

    `metadata_cols` names further numeric columns of a samples x genes table that are sample metadata (obs),
    beyond the mapped columns and :data:`CLINICAL_COLUMNS`.
    """
    source = path.name
    table = read_delimited(path, low_memory=False)  # one dtype per column, and faster for wide tables
    header = _raw_header(path, table_separator(path))
    if not isinstance(table.index, pd.RangeIndex):  # R write.table: one header field fewer than data fields
        table = table.reset_index()
        header = ["", *header]
    if len(header) != table.shape[1]:
        msg = f"{source} has {len(header)} header fields but {table.shape[1]} data columns; check the separator."
        raise DataSchemaError(msg)
    table.columns = header
    table = _coerce_numeric(table)
    metadata_names = set(CANONICAL_OBS) | set(mapping.values())
    metadata_cols = list(metadata_cols or [])
    absent = [c for c in metadata_cols if c not in table.columns]
    if absent:
        names = list(map(str, table.columns))
        close = [m[0] for c in absent for m in [difflib.get_close_matches(c, names, n=1)] if m]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        msg = (
            f"metadata_cols {', '.join(map(repr, absent[:5]))} not among the columns of {source}{hint} "
            f"(columns: {preview(names, 8)}). Fix metadata_cols."
        )
        raise DataSchemaError(msg)
    metadata_names |= set(metadata_cols)
    if orientation is None:
        orientation = detect_orientation(table, metadata_names=metadata_names)
    mapping = dict(mapping)
    if orientation == "samples_x_genes":
        expr, meta, var = _samples_x_genes(
            table, metadata_names=metadata_names, sample_col=mapping.get(_keys.SAMPLE), source=source,
            metadata_cols=metadata_cols,
        )  # fmt: skip
        key_col = None  # the sheet's sample column is found by matching IDs
    else:
        if metadata_cols:
            msg = (
                f"metadata_cols {preview(metadata_cols)} name columns of a samples x genes table, but {source} is "
                "genes x samples. Put sample metadata in a sample_sheet, or set orientation='samples_x_genes'."
            )
            raise DataSchemaError(msg)
        expr, meta, var = _genes_x_samples(table, source=source)
        key_col = mapping.pop(_keys.SAMPLE, None)
    if sample_sheet is not None:
        sheet, sheet_name = load_sample_sheet(sample_sheet)
        extra = join_sample_sheet(list(expr.index), sheet, key_col=key_col, sheet_name=sheet_name)
        meta = meta.join(extra.drop(columns=[c for c in extra.columns if c in meta.columns]))
    if _keys.SAMPLE not in meta.columns and _keys.SAMPLE not in mapping:
        meta[_keys.SAMPLE] = meta.index.to_numpy()
    keep = rules.select(meta, source=source)
    if keep is not None:
        meta, expr = meta.loc[keep], expr.loc[keep]
    obs = apply_obs_map(meta, rules.obs_part(mapping, meta.columns), source=source)
    obs = rules.join(obs, mapping, labels=labels, source=source)
    obs = finalize_obs(
        obs, source=source, labels=labels, patient_from_sample=True, label_required=_keys.RESPONSE in mapping
    )
    adata, transform = build_bulk(expr, var, obs, source=source, gene_map=gene_map)
    record_provenance(
        adata,
        modality=MODALITY_BULK,
        fmt="bulk_table",
        params=params,
        source=str(path),
        orientation=orientation,
        transform=transform,
    )
    logger.info("read_cohort: %s -> %d samples x %d genes (bulk, transform: %s)", source, *adata.shape, transform)
    return adata


def _coerce_numeric(table: pd.DataFrame) -> pd.DataFrame:
    """Columns read as text only because of NA tokens become numeric; real text stays text."""
    out = table.copy()
    for column, dtype in enumerate(table.dtypes):
        if not pd.api.types.is_object_dtype(dtype):
            continue
        series = out.iloc[:, column]
        if series.dtype == object:
            converted = pd.to_numeric(series, errors="coerce")
            if converted.notna().sum() == series.notna().sum() and series.notna().any():
                out.isetitem(column, converted)
    return out
