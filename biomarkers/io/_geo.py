"""GEO series-matrix files (``GSExxxx_series_matrix.txt.gz``) and GPL probe annotations.

A series matrix is a header of ``!Series_*`` and ``!Sample_*`` lines (one tab-separated, quoted value
per sample; ``!Sample_characteristics_ch1`` lines hold ``"key: value"`` pairs) followed by the
expression table between ``!series_matrix_table_begin`` and ``!series_matrix_table_end`` (``ID_REF``
x GSM accessions). Microarray rows are probe IDs: map them with a GPL annotation (``probe_map``),
then several probes of one gene are collapsed to the probe with the highest mean expression.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pandas as pd

from biomarkers import _keys
from biomarkers._errors import DataSchemaError

from ._bulk import build_bulk
from ._common import (
    MODALITY_BULK,
    gene_like_fraction,
    is_ensembl,
    logger,
    missing_path_error,
    open_text,
    preview,
    read_delimited,
    record_provenance,
)
from ._obs import NO_RULES, LabelSpec, ObsRules, apply_obs_map, finalize_obs, join_sample_sheet, load_sample_sheet

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

PROBE_ID = "probe_id"  # var column: the probe kept for each gene (candidate for _keys.py)
TABLE_BEGIN = "!series_matrix_table_begin"
TABLE_END = "!series_matrix_table_end"
PLATFORM_BEGIN = "!platform_table_begin"
PLATFORM_END = "!platform_table_end"
_SAMPLE_FIELDS = {
    "!Sample_title": "title",
    "!Sample_source_name_ch1": "source_name",
    "!Sample_description": "description",
    "!Sample_platform_id": "platform_id",
}
_PROBE_ID_COLUMNS = ("ID", "ID_REF", "probe_id", "probe", "ProbeID", "Probe_ID")
_SYMBOL_COLUMNS = ("gene symbol", "gene_symbol", "symbol", "gene.symbol", "gene_name", "gene name")


@dataclass
class SeriesMatrix:
    """Parsed series matrix: per-sample metadata, the ID_REF x sample table, and ``!Series_*`` fields."""

    meta: pd.DataFrame
    table: pd.DataFrame
    series: dict[str, str] = field(default_factory=dict)


def _cells(line: str) -> list[str]:
    return [cell.strip().strip('"').strip() for cell in line.rstrip("\r\n").split("\t")[1:]]


def _key(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", text.strip().lower()).strip("_") or "characteristic"


def is_series_matrix(path: Path) -> bool:
    """Whether `path` starts like a GEO series matrix (``!Series_`` header lines)."""
    try:
        with open_text(path) as handle:
            for line in handle:
                if line.strip():
                    return line.startswith("!Series_")
    except (OSError, EOFError, UnicodeDecodeError):
        return False
    return False


def _header_lines(handle: TextIO, table: list[str]) -> Iterator[str]:
    """Yield header lines; collect the table lines into `table`."""
    in_table = False
    for line in handle:
        if line.startswith(TABLE_BEGIN):
            in_table = True
        elif line.startswith(TABLE_END):
            break
        elif in_table:
            table.append(line)
        else:
            yield line


def parse_series_matrix(path: Path) -> SeriesMatrix:
    """Parse a series matrix (plain or gzipped) into metadata and table.

    Characteristics become columns named after their key (lower-case, non-alphanumerics as ``_``):
    ``"response to infliximab: Yes"`` -> ``response_to_infliximab = "Yes"``. A value without
    ``key:`` goes to ``characteristics_<n>`` (n = line number among characteristics lines).
    """
    series: dict[str, str] = {}
    accessions: list[str] = []
    fields: dict[str, list[str]] = {}
    characteristics: list[list[str]] = []
    table_lines: list[str] = []
    with open_text(path) as handle:
        for line in _header_lines(handle, table_lines):
            tag = line.split("\t", 1)[0].strip()
            if tag.startswith("!Series_"):
                series.setdefault(tag.removeprefix("!Series_"), " ".join(_cells(line)))
            elif tag == "!Sample_geo_accession":
                accessions = _cells(line)
            elif tag == "!Sample_characteristics_ch1":
                characteristics.append(_cells(line))
            elif tag in _SAMPLE_FIELDS:
                fields.setdefault(_SAMPLE_FIELDS[tag], _cells(line))
    if not accessions:
        msg = f"{path.name} has no !Sample_geo_accession line; it is not a GEO series matrix (or is truncated)."
        raise DataSchemaError(msg)
    rows: list[dict[str, str]] = [{} for _ in accessions]
    for n, line_values in enumerate(characteristics, start=1):
        for row, value in zip(rows, line_values, strict=False):
            if not value:
                continue
            key, sep, rest = value.partition(":")
            name, val = (_key(key), rest.strip()) if sep else (f"characteristics_{n}", value)
            while name in row:
                name = f"{name}_{n}"
            row[name] = val
    meta = pd.DataFrame(rows, index=pd.Index(accessions, dtype=object))
    for name, values in fields.items():
        meta.insert(0, name, (values + [None] * len(accessions))[: len(accessions)])
    if not table_lines or not "".join(table_lines[1:]).strip():
        msg = (
            f"The expression table of {path.name} is empty: GEO keeps RNA-seq data in supplementary files, not the "
            "series matrix. Download the count table and read it with kind='bulk_table' and sample_sheet=<metadata>."
        )
        raise DataSchemaError(msg)
    table = pd.read_csv(
        io.StringIO("".join(table_lines)), sep="\t", index_col=0, quotechar='"', na_values=["null", "NA", "", "NaN"]
    )
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    return SeriesMatrix(meta=meta, table=table.apply(pd.to_numeric, errors="coerce"), series=series)


def load_probe_map(probe_map: Mapping[str, str] | str | Path) -> dict[str, str]:
    """Read a probe -> gene symbol mapping from a dict, a GPL ``.annot(.gz)``/SOFT file, or a CSV/TSV.

    In files, the ID column is ``ID`` (or ``ID_REF``, ``probe_id``, else the first column) and the
    symbol column is ``Gene symbol`` (or ``gene_symbol``, ``symbol``, else the second column). Probes
    annotated to several genes (``A /// B``) are dropped: they cannot be attributed to one gene.
    """
    if isinstance(probe_map, Mapping):
        pairs = {str(k): str(v) for k, v in probe_map.items() if v is not None and str(v).strip()}
    else:
        path = Path(probe_map)
        if not path.exists():
            raise missing_path_error(path)
        with open_text(path) as handle:
            text = handle.read()
        if PLATFORM_BEGIN in text:
            body = text.split(PLATFORM_BEGIN, 1)[1].split(PLATFORM_END, 1)[0].lstrip("\r\n")
            table = pd.read_csv(io.StringIO(body), sep="\t", dtype=str)
        else:
            table = read_delimited(path, dtype=str)
        id_col = next((c for c in _PROBE_ID_COLUMNS if c in table.columns), table.columns[0])
        lowered = {str(c).lower(): c for c in table.columns}
        symbol_col = next((lowered[c] for c in _SYMBOL_COLUMNS if c in lowered), None)
        if symbol_col is None:
            if table.shape[1] < 2:
                msg = f"Probe map {path.name} needs an ID and a gene symbol column (have: {preview(table.columns)})."
                raise DataSchemaError(msg)
            symbol_col = table.columns[1] if table.columns[1] != id_col else table.columns[0]
        table = table[[id_col, symbol_col]].dropna()
        pairs = dict(zip(table[id_col].astype(str).str.strip(), table[symbol_col].astype(str).str.strip(), strict=True))
    ambiguous = [k for k, v in pairs.items() if "///" in v]
    if ambiguous:
        logger.info("read_cohort: %d probes annotated to several genes dropped from the probe map", len(ambiguous))
    return {k: v for k, v in pairs.items() if v and "///" not in v}


def read_series_matrix(
    path: Path,
    *,
    mapping: Mapping[str, str],
    probe_map: Mapping[str, str] | str | Path | None,
    sample_sheet: str | Path | pd.DataFrame | None,
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    params: Mapping[str, Any],
    rules: ObsRules = NO_RULES,
) -> AnnData:
    """Read a GEO series matrix into bulk AnnData (obs = GSM samples with their characteristics)."""
    source = path.name
    parsed = parse_series_matrix(path)
    table = parsed.table
    incomplete = table.isna().any(axis=1)
    if incomplete.all():
        msg = f"Every row of the {source} table has missing values; the table cannot be used."
        raise DataSchemaError(msg)
    if incomplete.any():
        logger.warning(
            "read_cohort: %d of %d rows of %s have missing values; dropped", incomplete.sum(), len(table), source
        )
        table = table.loc[~incomplete]
    ids = pd.Index(table.index.astype(str))
    if probe_map is not None:
        pm = load_probe_map(probe_map)
        symbols = ids.map(lambda i: pm.get(i))
        mapped = pd.notna(symbols)
        if not mapped.any():
            msg = (
                f"probe_map maps none of the {len(ids)} row IDs of {source} (e.g. {preview(ids, 3)}; map keys e.g. "
                f"{preview(list(pm)[:3], 3)}). Use the GPL annotation of this series' platform "
                f"({parsed.series.get('platform_id', 'see !Series_platform_id')})."
            )
            raise DataSchemaError(msg)
        logger.info("read_cohort: %d of %d probes of %s mapped to genes", int(mapped.sum()), len(ids), source)
        table, ids, symbols = table.loc[mapped], ids[mapped], pd.Index(symbols[mapped])
    else:
        symbols = ids
        if not is_ensembl(ids) and gene_like_fraction(ids) < 0.5:
            msg = (
                f"Row IDs of {source} look like probe IDs (e.g. {preview(ids, 3)}), not gene symbols; kept as "
                f"var_names. Pass probe_map=<GPL annotation, e.g. {parsed.series.get('platform_id', 'GPLxxx')}"
                ".annot.gz> to map them."
            )
            warnings.warn(msg, UserWarning, stacklevel=3)
    var = pd.DataFrame({PROBE_ID: ids.to_numpy()}, index=pd.Index(symbols, dtype=object))
    expr = table.T
    meta = parsed.meta.reindex(expr.index)
    mapping = dict(mapping)
    key_col = mapping.pop(_keys.SAMPLE, None)
    if sample_sheet is not None:
        sheet, sheet_name = load_sample_sheet(sample_sheet)
        extra = join_sample_sheet(list(expr.index), sheet, key_col=key_col, sheet_name=sheet_name)
        meta = meta.join(extra.drop(columns=[c for c in extra.columns if c in meta.columns]))
    meta[_keys.SAMPLE] = meta.index.to_numpy()
    logger.info("read_cohort: %s sample metadata columns: %s", source, preview(meta.columns, 20))
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
        fmt="geo_series_matrix",
        params=params,
        source=str(path),
        series=parsed.series.get("geo_accession"),
        platform=parsed.series.get("platform_id"),
        transform=transform,
    )
    logger.info("read_cohort: %s -> %d samples x %d genes (transform: %s)", source, *adata.shape, transform)
    return adata
