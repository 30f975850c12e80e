"""Shared pieces of the readers: gene names, count checks, provenance, text files.

Every reader produces raw data plus a metadata table; the functions here turn that into the
canonical AnnData described in the package brief, so that all formats fail (and succeed) alike.
"""

from __future__ import annotations

import gzip
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pandas as pd
from scipy import sparse

from biomarkers import _keys
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("biomarkers")

IO_STEP = "io"  # adata.uns["bm"]["io"]: provenance of the read (candidate for _keys.py)
MODALITY_SC = "single_cell"
MODALITY_BULK = "bulk"

CANONICAL_OBS: tuple[str, ...] = (
    _keys.PATIENT,
    _keys.SAMPLE,
    _keys.RESPONSE,
    _keys.BATCH,
    _keys.TISSUE,
    _keys.INFLAMED,
    _keys.TIMEPOINT,
    _keys.SEVERITY,
    _keys.CELL_TYPE,
)
LABELS: tuple[str, ...] = (_keys.RESPONDER, _keys.NON_RESPONDER)
ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
# HGNC-like: starts with a letter; letters, digits, '-' and '.' only (HLA-DRB1, C1orf112, MT-CO1).
SYMBOL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9.\-]*$")
SAMPLE_LIKE_RE = re.compile(r"^(GSM|GSE|SRR|SRX|SRS|ERR|ERS|ERX|DRR|SAMN|SAMEA|TCGA)[-_]?\d+", re.IGNORECASE)
# var columns that hold gene symbols, in order of preference (scanpy, CELLxGENE, Seurat exports).
SYMBOL_COLUMNS: tuple[str, ...] = (
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "gene_names",
    "symbol",
    "Symbol",
    "name",
)


@contextmanager
def duplicate_names_ok() -> Iterator[None]:
    """Silence anndata's 'names are not unique' warning where the caller resolves duplicates itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(Variable|Observation) names are not unique", category=UserWarning)
        yield


def package_version() -> str:
    """Return the installed version of `biomarkers`."""
    try:
        return version("biomarkers")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


def preview(values: Any, n: int = 6) -> str:
    """Comma-join the first `n` items of `values`, adding ', ...' when there are more."""
    items = [str(v) if str(v) else "''" for v in values]
    text = ", ".join(items[:n])
    return text + (", ..." if len(items) > n else "")


def is_ensembl(names: Any) -> bool:
    """Whether most of `names` are Ensembl gene IDs (``ENSG00000075624``, with or without version)."""
    names = [str(n) for n in names]
    if not names:
        return False
    return sum(bool(ENSEMBL_RE.match(n)) for n in names) / len(names) > 0.5


def gene_like_fraction(names: Any) -> float:
    """Fraction of `names` that look like gene symbols or Ensembl IDs (and not like sample accessions)."""
    names = [str(n) for n in names]
    if not names:
        return 0.0
    hits = sum(bool(ENSEMBL_RE.match(n)) or (bool(SYMBOL_RE.match(n)) and not SAMPLE_LIKE_RE.match(n)) for n in names)
    return hits / len(names)


def missing_path_error(path: Path) -> DataSchemaError:
    """Build the error for an input path that does not exist."""
    msg = f"Input not found: {path} (resolved from {Path.cwd()}). Check data.path in the experiment config."
    return DataSchemaError(msg)


# ----------------------------------------------------------------------------------------------------------------------
# var
# ----------------------------------------------------------------------------------------------------------------------


def _symbol_column(var: pd.DataFrame) -> str | None:
    for column in SYMBOL_COLUMNS:
        if column in var.columns and not is_ensembl(var[column].dropna().astype(str)):
            return column
    return None


def symbols_from_ids(
    var: pd.DataFrame, *, gene_map: Mapping[str, str] | None, source: str
) -> tuple[pd.Index, pd.DataFrame]:
    """Return gene symbols for `var` (index = names as read) and `var` with ``gene_id`` filled in.

    Ensembl IDs are replaced by symbols from `gene_map` or a symbol column of `var`; IDs without a
    symbol keep their ID. Non-Ensembl names pass through (renamed by `gene_map` where it has them).
    """
    var = var.copy()
    if "gene_ids" in var.columns and _keys.GENE_ID not in var.columns:
        var = var.rename(columns={"gene_ids": _keys.GENE_ID})
    names = pd.Index(var.index.astype(str))
    if not is_ensembl(names):
        if gene_map:
            names = pd.Index([gene_map.get(n, n) for n in names])
        return names, var
    ids = names
    if gene_map:
        unversioned = {k.split(".")[0]: v for k, v in gene_map.items()}
        symbols = pd.Series([gene_map.get(i, unversioned.get(i.split(".")[0])) for i in ids], index=var.index)
        where = "gene_map"
    else:
        column = _symbol_column(var)
        if column is None:
            msg = (
                f"Genes of {source} are Ensembl IDs (e.g. {ids[0]}) and var has no symbol column "
                f"(looked for {preview(SYMBOL_COLUMNS, 4)}; have: {preview(var.columns) or 'none'}). "
                "Add the symbols as a var column (adata.var['gene_symbols'] = ...) and re-save, pass "
                "gene_map={ensembl_id: symbol} to read_cohort, or read the 10x features.tsv/h5 (2nd column = symbols)."
            )
            raise DataSchemaError(msg)
        symbols = var[column].astype(object)
        where = f"var[{column!r}]"
    logger.info(
        "read_cohort: genes of %s are Ensembl IDs; symbols taken from %s, IDs kept in var['gene_id']", source, where
    )
    symbols = symbols.where(symbols.notna() & (symbols.astype(str).str.strip() != ""), None)
    n_unmapped = int(symbols.isna().sum())
    if n_unmapped:
        logger.info("read_cohort: %d Ensembl IDs of %s have no symbol; kept as IDs", n_unmapped, source)
    var[_keys.GENE_ID] = np.asarray(ids)
    return pd.Index([s if s is not None else i for s, i in zip(symbols, ids, strict=True)]).astype(str), var


def canonical_var(var: pd.DataFrame, *, gene_map: Mapping[str, str] | None, source: str) -> pd.DataFrame:
    """Symbols as unique var_names (duplicates get ``-1``, ``-2`` suffixes, logged), IDs in ``var['gene_id']``.

    Duplicated symbols (for example the ~20 in the GRCh38 10x reference) are kept as separate
    columns, not summed, so counts are never merged behind the user's back; this matches
    `scanpy.read_10x_mtx(make_unique=True)`.
    """
    from anndata.utils import make_index_unique

    names, var = symbols_from_ids(var, gene_map=gene_map, source=source)
    duplicated = names[names.duplicated()].unique()
    if len(duplicated):
        logger.warning(
            "read_cohort: %d duplicated gene symbols in %s made unique with -1, -2 suffixes (e.g. %s)",
            len(duplicated),
            source,
            preview(duplicated, 4),
        )
        names = make_index_unique(pd.Index(names))
    var.index = pd.Index(names, dtype=object).astype(str)
    var.index.name = None
    return var


# ----------------------------------------------------------------------------------------------------------------------
# counts
# ----------------------------------------------------------------------------------------------------------------------


def _values(matrix: Any) -> np.ndarray:
    if sparse.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


_CHUNK = 10_000_000  # values checked at a time, so a 1e9-nnz matrix needs no full-size temporaries


def count_problem(matrix: Any) -> str | None:
    """Describe why `matrix` is not raw counts (NaN/inf, negative, non-integer), or None if it is."""
    values = _values(matrix)
    if values.size == 0:
        return None
    if not np.issubdtype(values.dtype, np.number):
        return f"non-numeric values (dtype {values.dtype})"
    is_float = np.issubdtype(values.dtype, np.floating)
    n_bad = n_fractional = 0
    vmin, vmax, example = np.inf, -np.inf, None
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK]
        if is_float:
            finite = np.isfinite(chunk)
            n_bad += int((~finite).sum())
            chunk = chunk[finite]
            if chunk.size == 0:
                continue
            fractional = chunk != np.round(chunk)
            n_fractional += int(fractional.sum())
            if example is None and fractional.any():
                example = float(chunk[fractional][0])
        vmin, vmax = min(vmin, float(chunk.min())), max(vmax, float(chunk.max()))
    if n_bad:
        return f"{n_bad} NaN/inf values"
    if vmin < 0:
        return f"negative values (min {vmin:.3g})"
    if n_fractional:
        return (
            f"non-integer values (e.g. {example:.4g}; {n_fractional / values.size:.0%} of non-zeros, "
            f"max {vmax:.3g}): looks normalised or log-transformed"
        )
    return None


def check_counts(matrix: Any, *, what: str, source: str, allow_non_integer: bool) -> None:
    """Raise unless `matrix` holds finite, non-negative integers (non-integers only warn if allowed)."""
    problem = count_problem(matrix)
    if problem is None:
        return
    if problem.startswith("non-integer") and allow_non_integer:
        msg = f"{what} of {source} is not raw counts ({problem}); continuing because allow_non_integer=True."
        warnings.warn(msg, UserWarning, stacklevel=3)
        return
    msg = (
        f"{what} of {source} is not raw counts: {problem}. Raw integer UMI counts are expected; "
        "provide them (h5ad layers['counts'] or .raw, or the CellRanger matrix)."
    )
    raise DataSchemaError(msg)


def as_counts(matrix: Any) -> sparse.csr_matrix:
    """Return `matrix` as a float32 CSR matrix (the canonical count container)."""
    if sparse.issparse(matrix):
        out = sparse.csr_matrix(matrix, dtype=np.float32)
    else:
        out = sparse.csr_matrix(np.asarray(matrix, dtype=np.float32))
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def unique_obs_names(adata: AnnData, *, source: str) -> None:
    """Ensure unique cell names: prefix by sample where that helps, otherwise raise."""
    if adata.obs_names.is_unique:
        return
    original = adata.obs_names
    duplicated = original.duplicated()
    if _keys.SAMPLE in adata.obs.columns and adata.obs[_keys.SAMPLE].nunique() > 1:
        prefixed = pd.Index([f"{s}_{b}" for s, b in zip(adata.obs[_keys.SAMPLE].astype(str), original, strict=True)])
        if prefixed.is_unique:
            adata.obs_names = prefixed
            logger.info("read_cohort: cell names of %s prefixed with sample_id to make them unique", source)
            return
        duplicated = prefixed.duplicated()
    # Report the barcodes as the user wrote them (not sample-prefixed), with the sample they repeat in.
    dupes = original[duplicated].unique()
    where = ""
    if _keys.SAMPLE in adata.obs.columns:
        where = f" in sample {adata.obs[_keys.SAMPLE].to_numpy()[np.flatnonzero(duplicated)[0]]}"
    msg = (
        f"{len(dupes)} duplicated cell barcodes within one sample of {source} (e.g. {preview(dupes, 3)}{where}). "
        "Each barcode must occur once per sample; check that files of different samples were not merged."
    )
    raise DataSchemaError(msg)


# ----------------------------------------------------------------------------------------------------------------------
# provenance and sample sheets
# ----------------------------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """Make `value` writable to h5ad uns: no None, Paths as str, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value


def record_provenance(adata: AnnData, *, modality: str, fmt: str, params: Mapping[str, Any], **extra: Any) -> None:
    """Write ``adata.uns['bm']['io'] = {"params", "version", "kind", "format", ...}``."""
    entry = {"params": _clean(params), "version": package_version(), "kind": modality, "format": fmt}
    entry.update(_clean(extra))
    bm = dict(adata.uns.get(_keys.BM, {}))
    bm[IO_STEP] = entry
    adata.uns[_keys.BM] = bm


def open_text(path: Path) -> TextIO:
    """Open a plain or gzipped text file (recognised by its magic bytes, not its name)."""
    with path.open("rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("r", encoding="utf-8", errors="replace", newline="")


def table_separator(path: Path) -> str:
    """Separator of a delimited file: from the suffix (.csv, .tsv, .tab), else the first line's commonest of tab , ;."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return ","
    if name.endswith((".tsv", ".tab")):
        return "\t"
    with open_text(path) as handle:
        first = handle.readline()
    return max(("\t", ",", ";"), key=first.count)


def read_delimited(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV/TSV/TXT (optionally gzipped) with the separator from :func:`table_separator`."""
    try:
        return pd.read_csv(path, sep=table_separator(path), **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as err:
        msg = (
            f"Cannot parse {path} as a CSV/TSV table ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Pass a comma- or tab-separated text table (not a spreadsheet or binary file)."
        )
        raise DataSchemaError(msg) from err
