"""`read_cohort` / `iter_samples`: detect the input format and dispatch to the readers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from biomarkers import _keys
from biomarkers._errors import ConfigError, DataSchemaError

from ._bulk import read_bulk_table
from ._common import IO_STEP, missing_path_error, preview
from ._geo import is_series_matrix, read_series_matrix
from ._h5ad import iter_h5ad_samples, read_h5ad_cohort
from ._obs import LabelSpec, ObsRules, load_clinical, resolve_obs_map
from ._tenx import _CELLRANGER_NAMES, find_series_samples, iter_tenx, mtx_prefixes, read_tenx

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import pandas as pd
    from anndata import AnnData

CohortKind = Literal["h5ad", "10x_h5", "10x_mtx", "geo_10x_series", "bulk_table", "geo_series_matrix"]
KINDS: tuple[str, ...] = get_args(CohortKind)
SINGLE_CELL_KINDS = frozenset({"h5ad", "10x_h5", "10x_mtx", "geo_10x_series"})
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
# Never opened: unpickling runs whatever code the file holds; R objects need R (convert them to h5ad there).
_OBJECT_FILES = (".pkl", ".pickle", ".joblib", ".rds", ".rdata", ".rda")


def _hdf5_kind(path: Path) -> str | None:
    import h5py

    with path.open("rb") as handle:
        if handle.read(8) != _HDF5_MAGIC:
            return None
    with h5py.File(path, "r") as f:
        if "X" in f and "obs" in f:
            return "h5ad"
        if "matrix" in f or any(isinstance(f[k], h5py.Group) and "barcodes" in f[k] for k in f):
            return "10x_h5"
    return None


def _check_path(path: Path) -> None:
    """Raise for a path that does not exist or is an empty file (a failed download or export)."""
    if not path.exists():
        raise missing_path_error(path)
    if path.is_file() and path.stat().st_size == 0:
        msg = f"Input {path} is empty (0 bytes), so it holds no data. Re-export or re-download it, or fix data.path."
        raise DataSchemaError(msg)


def _unknown(path: Path, detail: str) -> DataSchemaError:
    msg = (
        f"Cannot tell the format of {path} ({detail}); supported kinds: {', '.join(KINDS)}. "
        "Pass kind=... (data.format in the experiment config)."
    )
    return DataSchemaError(msg)


def detect_kind(path: str | Path) -> CohortKind:
    r"""Detect which reader handles `path`.

    Parameters
    ----------
    path
        A file or directory.

    Returns
    -------
    One of ``"h5ad"`` (``.h5ad``, or an HDF5 file with ``X`` and ``obs``), ``"10x_h5"`` (HDF5 with a
    CellRanger ``/matrix`` group or v2 per-genome groups), ``"10x_mtx"`` (a directory holding one
    unprefixed ``matrix.mtx``/``barcodes.tsv``/``features.tsv`` triplet, or a CellRanger ``outs``-like
    folder), ``"geo_10x_series"`` (a directory of prefixed triplets, ``.h5`` files or per-sample
    sub-folders), ``"geo_series_matrix"`` (text whose first line starts with ``!Series_``) or
    ``"bulk_table"`` (any other CSV/TSV/TXT, optionally gzipped).

    Raises
    ------
    DataSchemaError
        The path does not exist, is an empty file, or matches no format.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from biomarkers.io import detect_kind
    >>> table = Path(tempfile.mkdtemp()) / "bulk.csv"
    >>> _ = table.write_text("sample_id,patient_id,IL6\ns1,p1,5.0\n")
    >>> detect_kind(table)
    'bulk_table'
    """
    path = Path(path)
    _check_path(path)
    if path.is_dir():
        complete = {p for p, parts in mtx_prefixes(path).items() if "matrix.mtx" in parts and "barcodes.tsv" in parts}
        if complete == {""} or any(child.name in _CELLRANGER_NAMES for child in path.iterdir()):
            return "10x_mtx"
        if find_series_samples(path):
            return "geo_10x_series"
        raise _unknown(path, f"directory without 10x files; has {preview(sorted(c.name for c in path.iterdir()), 6)}")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(_OBJECT_FILES):
        msg = (
            f"{path} is a pickle or R object file, which is never read (unpickling can run arbitrary code). "
            "Save the data as .h5ad (adata.write_h5ad; from R: zellkonverter or SeuratDisk), 10x files or a CSV table."
        )
        raise DataSchemaError(msg)
    if name.endswith(_ARCHIVES):
        msg = f"{path} is an archive; extract it first (tar -xf / unzip) and pass the extracted folder."
        raise DataSchemaError(msg)
    if name.endswith((".mtx", ".mtx.gz")):
        msg = f"{path} is one file of a 10x triplet; pass its directory ({path.parent}) instead."
        raise DataSchemaError(msg)
    if name.endswith((".h5", ".hdf5")):
        kind = _hdf5_kind(path)
        if kind is None:
            raise _unknown(path, "HDF5 without a CellRanger /matrix group or AnnData X/obs")
        return kind  # type: ignore[return-value]
    if name.removesuffix(".gz").endswith(_TEXT_SUFFIXES):
        return "geo_series_matrix" if is_series_matrix(path) else "bulk_table"
    raise _unknown(path, f"suffix {''.join(path.suffixes) or 'none'}")


def _check_kind(kind: str | None, path: Path) -> CohortKind:
    if kind is None:
        return detect_kind(path)
    if kind not in KINDS:
        msg = f"Unknown kind {kind!r}; use one of {', '.join(KINDS)} or None to auto-detect. Fix data.format."
        raise ConfigError(msg)
    _check_path(path)
    return kind  # type: ignore[return-value]


def read_cohort(
    path: str | Path,
    *,
    kind: CohortKind | None = None,
    obs_map: Mapping[str, str] | None = None,
    patient_col: str | None = None,
    sample_col: str | None = None,
    label_col: str | None = None,
    positive_label: str | None = None,
    negative_label: str | None = None,
    label_map: Mapping[Any, str | None] | None = None,
    sample_sheet: str | Path | pd.DataFrame | None = None,
    probe_map: Mapping[str, str] | str | Path | None = None,
    gene_map: Mapping[str, str] | None = None,
    orientation: Literal["samples_x_genes", "genes_x_samples"] | None = None,
    backed: Literal["r"] | None = None,
    allow_non_integer: bool = False,
    query: str | None = None,
    clinical: str | Path | pd.DataFrame | None = None,
    metadata_cols: list[str] | None = None,
) -> AnnData:
    """Read a public or private cohort into the canonical AnnData.

    Parameters
    ----------
    path
        File or folder: ``.h5ad``; CellRanger ``.h5``; a 10x mtx folder; a GEO folder of per-sample
        10x files (``GSM3972009_69_matrix.mtx.gz`` ...); a bulk CSV/TSV; a GEO series matrix.
    kind
        Format, or None to auto-detect (see :func:`detect_kind`).
    obs_map
        Canonical obs name -> column in the input's metadata, for any of ``patient_id``,
        ``sample_id``, ``response``, ``batch``, ``tissue``, ``inflamed``, ``severity``, ``cell_type``.
        Mapped columns are renamed to the canonical name.
    patient_col
        Shortcut for ``obs_map["patient_id"]``.
    sample_col
        Shortcut for ``obs_map["sample_id"]``. For inputs whose sample IDs come from the files (10x
        series, series matrix, genes x samples tables) it names the ID column of `sample_sheet`.
    label_col
        Shortcut for ``obs_map["response"]``; when set, the column must exist.
    positive_label
        The positive class: ``"non_responder"`` (canonical), or the raw value that means
        non-response in the file (e.g. ``"NR"``, ``"Non_Remission"``), which is then read as
        ``non_responder``. Its canonical form is recorded in ``uns['bm']['io']['positive_label']``.
    negative_label
        The raw value that means response (read as ``responder``), when not canonical.
    label_map
        Raw response value -> ``"responder"``, ``"non_responder"`` or None (no label), e.g.
        ``{"NR": "non_responder", "R": "responder", "Not_avail": None}``; applied before
        `positive_label` / `negative_label`. Values already canonical (any case, ``-``/space for
        ``_``) and blanks / ``NA`` / ``None`` need no entry. Unknown values raise.
    sample_sheet
        CSV/TSV (or DataFrame) with one row per sample, joined on the sample IDs (full ID, GSM
        accession, or the part after it). A 10x series folder's ``sample_sheet.csv`` or
        ``samples.csv`` (or ``.tsv``) is used when this is None.
    probe_map
        Series matrix only: probe ID -> gene symbol, as a dict or a GPL ``.annot(.gz)``/CSV file.
    gene_map
        Gene ID -> symbol, used when var names are Ensembl IDs without a symbol column.
    orientation
        Bulk tables only: override the detected orientation.
    backed
        ``"r"``: h5ad only; return a backed AnnData (obs/var canonical; X stays on disk as stored,
        see ``uns['bm']['io']['counts_source']``). Use :func:`iter_samples` to stream canonical counts.
    allow_non_integer
        Single-cell only: accept non-integer "counts" (e.g. depth-scaled) with a warning.
    query
        Rows to keep: a pandas query over the input's own metadata column names (before `obs_map`), e.g.
        ``"timepoint == 'baseline' and tissue == 'ileum'"``. For h5ad it runs on the cells' obs, for 10x series
        on the sample sheet, for bulk tables on the sample metadata. A column it names that is absent raises.
    clinical
        A clinical CSV/TSV (or DataFrame) with one row per patient, keyed by the patient column (or per sample,
        keyed by the sample column when it has that column). Its columns (the label, age, severity, ...) are
        joined to the metadata, through the same `obs_map`; where both carry a column, they must agree.
    metadata_cols
        Bulk tables only: numeric columns that are sample metadata, not genes (besides the mapped columns and
        the common clinical names such as Age or CRP, which are recognised).

    Returns
    -------
    Single-cell: cells x genes, ``X`` and ``layers['counts']`` = raw counts (float32 CSR), var_names
    = unique gene symbols (``var['gene_id']`` = Ensembl IDs where known), obs ``patient_id``,
    ``sample_id``, ``batch`` (default: sample), optional ``response`` (categorical ``responder`` /
    ``non_responder``), ``tissue``, ``inflamed`` (bool), ``severity``, ``cell_type``. Cell names are
    prefixed with the sample ID when several 10x samples are combined.
    Bulk: samples x genes, ``X`` = log-scale expression (float64), ``layers['counts']`` only when the
    table held counts. Both set ``uns['bm']['io']`` = ``{"params", "version", "kind": "single_cell" |
    "bulk", "format", "source", ...}``.

    Raises
    ------
    DataSchemaError
        Missing file, unknown format, values that are not counts / not finite, missing patient or label
        column, unknown labels, Ensembl IDs without symbols, duplicated barcodes within a sample.
    ConfigError
        Unknown `kind`, a bad `obs_map` key, or an option that does not apply to the format.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import pandas as pd
    >>> from biomarkers.io import read_cohort
    >>> table = Path(tempfile.mkdtemp()) / "bulk.csv"
    >>> pd.DataFrame(
    ...     {"sample_id": ["s1", "s2"], "patient_id": ["p1", "p2"], "response": ["R", "NR"], "IL6": [5.1, 7.3]}
    ... ).to_csv(table, index=False)
    >>> adata = read_cohort(table, label_col="response", label_map={"R": "responder", "NR": "non_responder"})
    >>> adata.shape
    (2, 1)
    >>> adata.obs["response"].tolist()
    ['responder', 'non_responder']
    """
    path = Path(path)
    fmt = _check_kind(kind, path)
    mapping = resolve_obs_map(obs_map, patient_col=patient_col, sample_col=sample_col, label_col=label_col)
    labels = LabelSpec(label_map=dict(label_map or {}), positive=positive_label, negative=negative_label)
    positive = labels.positive_label()
    rules = obs_rules(query, clinical)
    _check_options(fmt, probe_map=probe_map, orientation=orientation, backed=backed, metadata_cols=metadata_cols)
    params = {
        "path": str(path),
        "kind": fmt,
        "obs_map": mapping,
        "label_map": {str(k): ("" if v is None else v) for k, v in (label_map or {}).items()},
        "positive_label": positive_label,
        "negative_label": negative_label,
        "sample_sheet": sample_sheet if not hasattr(sample_sheet, "columns") else "<DataFrame>",
        "probe_map": probe_map if isinstance(probe_map, str | Path) else ("<mapping>" if probe_map else None),
        "orientation": orientation,
        "backed": backed,
        "allow_non_integer": allow_non_integer,
        "query": query,
        "clinical": rules.clinical_name if rules.clinical is not None else None,
    }
    if fmt == "h5ad":
        adata = read_h5ad_cohort(
            path,
            mapping=mapping,
            labels=labels,
            gene_map=gene_map,
            allow_non_integer=allow_non_integer,
            backed=backed,
            params=params,
            rules=rules,
        )
    elif fmt in SINGLE_CELL_KINDS:
        adata = read_tenx(
            path,
            fmt=fmt,
            mapping=mapping,
            sample_sheet=sample_sheet,
            labels=labels,
            gene_map=gene_map,
            allow_non_integer=allow_non_integer,
            params=params,
            rules=rules,
        )
    elif fmt == "bulk_table":
        adata = read_bulk_table(
            path,
            mapping=mapping,
            sample_sheet=sample_sheet,
            orientation=orientation,
            labels=labels,
            gene_map=gene_map,
            params=params,
            rules=rules,
            metadata_cols=metadata_cols,
        )
    else:
        adata = read_series_matrix(
            path,
            mapping=mapping,
            probe_map=probe_map,
            sample_sheet=sample_sheet,
            labels=labels,
            gene_map=gene_map,
            params=params,
            rules=rules,
        )
    if positive is not None:
        adata.uns[_keys.BM][IO_STEP]["positive_label"] = positive
    return adata


def obs_rules(query: str | None, clinical: str | Path | pd.DataFrame | None) -> ObsRules:
    """Build the sample selection and clinical table of a read (the table loaded)."""
    if clinical is None:
        return ObsRules(query=query or None)
    if hasattr(clinical, "columns"):
        return ObsRules(query=query or None, clinical=clinical, clinical_name="the clinical table")  # type: ignore[arg-type]
    table, name = load_clinical(clinical)  # type: ignore[arg-type]
    return ObsRules(query=query or None, clinical=table, clinical_name=name)


def _check_options(fmt: str, *, probe_map: Any, orientation: Any, backed: Any, metadata_cols: Any = None) -> None:
    if probe_map is not None and fmt != "geo_series_matrix":
        msg = f"probe_map applies to geo_series_matrix inputs, not {fmt}; use gene_map to rename genes."
        raise ConfigError(msg)
    if orientation is not None and fmt != "bulk_table":
        msg = f"orientation applies to bulk_table inputs, not {fmt}."
        raise ConfigError(msg)
    if metadata_cols is not None and fmt != "bulk_table":
        msg = f"metadata_cols applies to bulk_table inputs, not {fmt}."
        raise ConfigError(msg)
    if backed is not None and (fmt != "h5ad" or backed != "r"):
        msg = f"backed='r' is supported for h5ad inputs only (got backed={backed!r} for {fmt})."
        raise ConfigError(msg)


def iter_samples(
    path: str | Path,
    *,
    kind: CohortKind | None = None,
    obs_map: Mapping[str, str] | None = None,
    patient_col: str | None = None,
    sample_col: str | None = None,
    label_col: str | None = None,
    positive_label: str | None = None,
    negative_label: str | None = None,
    label_map: Mapping[Any, str | None] | None = None,
    sample_sheet: str | Path | pd.DataFrame | None = None,
    gene_map: Mapping[str, str] | None = None,
    allow_non_integer: bool = False,
    query: str | None = None,
    clinical: str | Path | pd.DataFrame | None = None,
) -> Iterator[AnnData]:
    """Stream a single-cell cohort one sample at a time, as canonical in-memory AnnData.

    For h5ad only the rows of the current sample are read from disk (counts from
    ``layers['counts']``, ``.raw.X`` or ``X``, whichever holds integers), so files larger than memory
    work. For 10x inputs each library is read in turn. Metadata (labels, patients) are checked for
    the whole cohort before the first sample is yielded. Arguments are as in :func:`read_cohort`.

    Returns
    -------
    An iterator of AnnData, one per ``sample_id``, in file order, each shaped like the output of
    :func:`read_cohort` (``uns['bm']['io']['sample']`` names the sample). Cell names are not prefixed.

    Raises
    ------
    ConfigError
        `path` is a bulk input (bulk tables are small: use :func:`read_cohort`).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> from biomarkers.io import iter_samples
    >>> obs = pd.DataFrame({"donor": ["p1", "p1", "p2"], "sample": ["s1", "s1", "s2"]}, index=["c1", "c2", "c3"])
    >>> file = Path(tempfile.mkdtemp()) / "cells.h5ad"
    >>> ad.AnnData(np.ones((3, 2), dtype=np.float32), obs=obs, var=pd.DataFrame(index=["IL6", "OSM"])).write_h5ad(file)
    >>> [a.n_obs for a in iter_samples(file, patient_col="donor", sample_col="sample")]
    [2, 1]
    """
    path = Path(path)
    fmt = _check_kind(kind, path)
    if fmt not in SINGLE_CELL_KINDS:
        msg = f"iter_samples streams single-cell inputs; {path.name} is {fmt}. Use read_cohort for bulk data."
        raise ConfigError(msg)
    mapping = resolve_obs_map(obs_map, patient_col=patient_col, sample_col=sample_col, label_col=label_col)
    labels = LabelSpec(label_map=dict(label_map or {}), positive=positive_label, negative=negative_label)
    labels.positive_label()
    rules = obs_rules(query, clinical)
    params = {
        "path": str(path),
        "kind": fmt,
        "obs_map": mapping,
        "allow_non_integer": allow_non_integer,
        "query": query,
    }
    if fmt == "h5ad":
        return iter_h5ad_samples(
            path,
            mapping=mapping,
            labels=labels,
            gene_map=gene_map,
            allow_non_integer=allow_non_integer,
            params=params,
            rules=rules,
        )
    return iter_tenx(
        path,
        fmt=fmt,
        mapping=mapping,
        sample_sheet=sample_sheet,
        labels=labels,
        gene_map=gene_map,
        allow_non_integer=allow_non_integer,
        params=params,
        rules=rules,
    )
