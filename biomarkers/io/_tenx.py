"""10x Genomics matrices: CellRanger ``.h5``, mtx directories, and GEO series of per-sample 10x files.

GEO ships single-cell series as flat folders of prefixed files, e.g. GSE134809 (Martin et al. 2019
Cell): ``GSM3972009_69_barcodes.tsv.gz``, ``GSM3972009_69_genes.tsv.gz``, ``GSM3972009_69_matrix.mtx.gz``.
That is the gzipped CellRanger v2 layout, which `scanpy.read_10x_mtx` (1.11) does not find (it only
looks for ``.gz`` files in the v3 layout), so mtx files are read here with `scipy.io.mmread`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys
from biomarkers._errors import DataSchemaError

from ._common import (
    MODALITY_SC,
    as_counts,
    canonical_var,
    check_counts,
    duplicate_names_ok,
    logger,
    preview,
    record_provenance,
)
from ._obs import NO_RULES, LabelSpec, ObsRules, apply_obs_map, finalize_obs, join_sample_sheet, load_sample_sheet

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    from anndata import AnnData

_PART_RE = re.compile(r"^(?P<prefix>.*?)(?P<part>matrix\.mtx|barcodes\.tsv|features\.tsv|genes\.tsv)(?P<gz>\.gz)?$")
# Directory names CellRanger writes; a sample is named after the first ancestor that is not one of these.
_CELLRANGER_NAMES = frozenset(
    {
        "filtered_feature_bc_matrix",
        "raw_feature_bc_matrix",
        "filtered_gene_bc_matrices",
        "raw_gene_bc_matrices",
        "sample_filtered_feature_bc_matrix",
        "outs",
        "GRCh38",
        "hg19",
    }
)
_SKIP_H5 = ("raw_", "molecule_info")  # unfiltered droplets and per-molecule files are not samples
SAMPLE_SHEET_NAMES: tuple[str, ...] = ("sample_sheet.csv", "sample_sheet.tsv", "samples.csv", "samples.tsv")
GEX = "Gene Expression"


@dataclass(frozen=True)
class TenxSample:
    """One 10x library on disk: an ``.h5`` file, or an mtx triplet in `path` with file-name `prefix`."""

    sample_id: str
    path: Path
    prefix: str = ""

    @property
    def is_h5(self) -> bool:
        """Whether the library is a CellRanger ``.h5`` file."""
        return self.path.is_file()


def mtx_prefixes(directory: Path) -> dict[str, set[str]]:
    """Map each file-name prefix in `directory` to the 10x parts found (``matrix.mtx``, ``barcodes.tsv`` ...)."""
    groups: dict[str, set[str]] = {}
    for child in directory.iterdir():
        match = _PART_RE.match(child.name)
        if child.is_file() and match:
            groups.setdefault(match.group("prefix"), set()).add(match.group("part"))
    return groups


def _complete(parts: set[str]) -> bool:
    return {"matrix.mtx", "barcodes.tsv"} <= parts and bool({"features.tsv", "genes.tsv"} & parts)


def _sample_name(path: Path) -> str:
    """Name a library after its file/directory, skipping CellRanger's generic names."""
    candidate = path
    stem = path.name.removesuffix(".h5")
    while stem in _CELLRANGER_NAMES and candidate.parent != candidate:
        candidate = candidate.parent
        stem = candidate.name
    for suffix in ("_filtered_feature_bc_matrix", "_raw_feature_bc_matrix", "_filtered", "_raw", "_"):
        stem = stem.removesuffix(suffix)
    return stem or path.name


def _h5_files(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.glob("*.h5")) if not p.name.startswith(_SKIP_H5)]


def _find_library(directory: Path) -> TenxSample | None:
    """Find the single 10x library in `directory` (mtx triplet or one .h5), also in CellRanger sub-folders."""
    prefixes = {p: parts for p, parts in mtx_prefixes(directory).items() if _complete(parts)}
    if len(prefixes) == 1:
        prefix = next(iter(prefixes))
        return TenxSample(_sample_name(directory) if not prefix else prefix.rstrip("_.-"), directory, prefix)
    h5_files = _h5_files(directory)
    if len(h5_files) == 1 and not prefixes:
        return TenxSample(_sample_name(directory), h5_files[0])
    subdirs = [
        d
        for d in sorted(directory.iterdir(), key=lambda d: (not d.name.startswith("filtered"), d.name))
        if d.is_dir() and d.name in _CELLRANGER_NAMES and not d.name.startswith(_SKIP_H5)
    ]
    for sub in subdirs:
        found = _find_library(sub)
        if found is not None:
            return TenxSample(_sample_name(directory), found.path, found.prefix)
    return None


def find_series_samples(directory: Path) -> list[TenxSample]:
    """All 10x libraries of a GEO-style series folder, in sorted order.

    Recognises (1) prefixed mtx triplets in the folder itself (``GSM3972009_69_matrix.mtx.gz``),
    (2) several ``.h5`` files in the folder, and (3) one sub-folder per sample holding an mtx
    triplet or an ``.h5`` (e.g. GSE282122 ``CID003376-1/filtered_feature_bc_matrix.h5``).

    Raises
    ------
    DataSchemaError
        A prefix lacks one of its three files, or two libraries get the same sample name.
    """
    samples: list[TenxSample] = []
    for prefix, parts in sorted(mtx_prefixes(directory).items()):
        if not _complete(parts):
            msg = (
                f"10x files with prefix {prefix!r} in {directory} are incomplete (have: {preview(sorted(parts))}); "
                "each sample needs matrix.mtx(.gz), barcodes.tsv(.gz) and features.tsv(.gz) or genes.tsv(.gz)."
            )
            raise DataSchemaError(msg)
        samples.append(TenxSample(prefix.rstrip("_.-") or _sample_name(directory), directory, prefix))
    samples.extend(TenxSample(_sample_name(h5), h5) for h5 in _h5_files(directory))
    for sub in sorted(d for d in directory.iterdir() if d.is_dir() and d.name not in _CELLRANGER_NAMES):
        found = _find_library(sub)
        if found is not None:
            samples.append(TenxSample(sub.name, found.path, found.prefix))
    names = [s.sample_id for s in samples]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"Several 10x libraries in {directory} map to the same sample name {preview(dupes)}; rename them."
        raise DataSchemaError(msg)
    return samples


def _part(directory: Path, prefix: str, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for suffix in (".gz", ""):
            candidate = directory / f"{prefix}{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read_mtx_library(directory: Path, *, prefix: str = "") -> AnnData:
    """Read one mtx triplet (v2 ``genes.tsv`` or v3 ``features.tsv``, gzipped or not) as cells x genes.

    Keeps only 'Gene Expression' features when the file lists feature types (CellRanger v3);
    var_names are the symbols as written (not yet unique), Ensembl IDs go to ``var['gene_id']``.
    """
    import anndata as ad
    from scipy.io import mmread

    matrix_path = _part(directory, prefix, ("matrix.mtx",))
    barcode_path = _part(directory, prefix, ("barcodes.tsv",))
    feature_path = _part(directory, prefix, ("features.tsv", "genes.tsv"))
    if matrix_path is None or barcode_path is None or feature_path is None:
        have = preview(sorted(p.name for p in directory.iterdir()), 8)
        msg = (
            f"No complete 10x mtx triplet with prefix {prefix!r} in {directory} (have: {have}); need matrix.mtx(.gz), "
            "barcodes.tsv(.gz) and features.tsv(.gz)/genes.tsv(.gz)."
        )
        raise DataSchemaError(msg)
    try:
        matrix = mmread(matrix_path)
        features = pd.read_csv(feature_path, sep="\t", header=None, dtype=str)
        barcodes = pd.read_csv(barcode_path, sep="\t", header=None, dtype=str)[0]
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as err:
        msg = f"Cannot parse the 10x files {matrix_path.name} / {feature_path.name}: {err}."
        raise DataSchemaError(msg) from err
    n_genes, n_cells = matrix.shape
    if n_genes != len(features) or n_cells != len(barcodes):
        msg = (
            f"{matrix_path.name} is {n_genes} genes x {n_cells} barcodes but {feature_path.name} lists {len(features)} "
            f"genes and {barcode_path.name} {len(barcodes)} barcodes. The files belong to different samples."
        )
        raise DataSchemaError(msg)
    ids = features[0].astype(str)
    names = features[1].astype(str) if features.shape[1] > 1 else ids
    var = pd.DataFrame(index=pd.Index(names.to_numpy(), dtype=object))
    if features.shape[1] > 1:
        var[_keys.GENE_ID] = ids.to_numpy()
    counts = matrix.T.tocsr()
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
        keep = (features[2] == GEX).to_numpy()
        var, counts = var.loc[keep], counts[:, np.flatnonzero(keep)]
    with duplicate_names_ok():
        return ad.AnnData(X=counts, obs=pd.DataFrame(index=pd.Index(barcodes.to_numpy(), dtype=object)), var=var)


def read_h5_library(path: Path) -> AnnData:
    """Read a CellRanger ``.h5`` (v3 ``/matrix`` or legacy v2 per-genome layout) with `scanpy.read_10x_h5`."""
    import scanpy as sc

    try:
        with duplicate_names_ok():  # duplicated symbols are resolved (and logged) by canonical_var
            adata = sc.read_10x_h5(path, gex_only=True)
    except (KeyError, ValueError, OSError) as err:
        msg = (
            f"Cannot read {path} as a CellRanger .h5 ({type(err).__name__}: {err}); expected /matrix/{{data,indices,"
            "indptr,shape,barcodes,features}} (v3) or one group per genome (v2)."
        )
        raise DataSchemaError(msg) from err
    return adata


def read_library(sample: TenxSample) -> AnnData:
    """Read one library as raw AnnData (not yet canonical)."""
    return read_h5_library(sample.path) if sample.is_h5 else read_mtx_library(sample.path, prefix=sample.prefix)


def sample_metadata(
    samples: list[TenxSample],
    *,
    source: Path,
    mapping: Mapping[str, str],
    sample_sheet: str | Path | pd.DataFrame | None,
    labels: LabelSpec,
    rules: ObsRules = NO_RULES,
) -> pd.DataFrame:
    """One canonical metadata row per sample (index = sample_id), from an optional sample sheet.

    ``sample_sheet`` defaults to ``sample_sheet.csv|tsv`` or ``samples.csv|tsv`` inside a series
    folder. `mapping` maps canonical names to sheet columns; its ``sample_id`` entry names the sheet's
    key column (sample IDs themselves always come from the file names). ``rules.query`` runs on the
    sheet's own columns: samples it drops are not read.
    """
    sample_ids = [s.sample_id for s in samples]
    mapping = dict(mapping)
    key_col = mapping.pop(_keys.SAMPLE, None)
    if sample_sheet is None and source.is_dir():
        sample_sheet = next((source / n for n in SAMPLE_SHEET_NAMES if (source / n).is_file()), None)
    if sample_sheet is not None:
        sheet, sheet_name = load_sample_sheet(sample_sheet)
        meta = join_sample_sheet(sample_ids, sheet, key_col=key_col, sheet_name=sheet_name)
        logger.info("read_cohort: sample metadata from %s (columns: %s)", sheet_name, preview(meta.columns, 12))
    else:
        meta = pd.DataFrame(index=pd.Index(sample_ids))
        sheet_name = source.name
    keep = rules.select(meta, source=sheet_name)
    if keep is not None:
        meta = meta.loc[keep]
    meta = meta.drop(columns=[_keys.SAMPLE], errors="ignore")
    meta = apply_obs_map(meta, rules.obs_part(mapping, meta.columns), source=sheet_name)
    meta[_keys.SAMPLE] = meta.index.to_numpy()
    meta = rules.join(meta, {**mapping, _keys.SAMPLE: key_col or _keys.SAMPLE}, labels=labels, source=sheet_name)
    return finalize_obs(
        meta,
        source=sheet_name,
        labels=labels,
        patient_from_sample=True,
        label_required=_keys.RESPONSE in mapping,
    )


def canonical_library(
    adata: AnnData,
    *,
    sample_id: str,
    meta_row: pd.Series,
    gene_map: Mapping[str, str] | None,
    source: str,
    allow_non_integer: bool,
    prefix_barcodes: bool,
) -> AnnData:
    """Turn one raw library into canonical AnnData (counts checked, symbols unique, metadata broadcast)."""
    import anndata as ad

    check_counts(adata.X, what="Matrix", source=f"{source} [{sample_id}]", allow_non_integer=allow_non_integer)
    barcodes = adata.obs_names.astype(str)
    if not barcodes.is_unique:
        dupes = barcodes[barcodes.duplicated()].unique()
        msg = (
            f"{len(dupes)} duplicated barcodes in sample {sample_id} of {source} (e.g. {preview(dupes, 3)}). "
            "A 10x barcodes file lists each barcode once; the file is corrupt or concatenated."
        )
        raise DataSchemaError(msg)
    var = canonical_var(adata.var, gene_map=gene_map, source=f"{source} [{sample_id}]")
    obs = pd.DataFrame({c: [meta_row[c]] * adata.n_obs for c in meta_row.index}, index=barcodes)
    obs.index = [f"{sample_id}_{b}" for b in barcodes] if prefix_barcodes else list(barcodes)
    counts = as_counts(adata.X)
    out = ad.AnnData(X=counts, obs=obs, var=var)
    out.layers[_keys.COUNTS] = counts.copy()
    return out


def _restore_dtypes(obs: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    for column in meta.columns:
        if column in obs.columns and isinstance(meta[column].dtype, pd.CategoricalDtype):
            obs[column] = pd.Categorical(obs[column], categories=meta[column].cat.categories)
        elif column in obs.columns:
            obs[column] = obs[column].astype(meta[column].dtype)
    return obs


def iter_tenx(
    path: Path,
    *,
    fmt: str,
    mapping: Mapping[str, str],
    sample_sheet: str | Path | pd.DataFrame | None,
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    allow_non_integer: bool,
    params: Mapping[str, Any],
    rules: ObsRules = NO_RULES,
) -> Iterator[AnnData]:
    """Yield one canonical AnnData per library of a 10x file, directory or GEO series folder."""
    if fmt == "geo_10x_series":
        samples = find_series_samples(path)
        if not samples:
            msg = f"No 10x libraries found in {path} (mtx triplets, .h5 files, or one sub-folder per sample)."
            raise DataSchemaError(msg)
    elif fmt == "10x_h5":
        samples = [TenxSample(_sample_name(path), path)]
    else:
        found = _find_library(path)
        if found is None:
            msg = f"No 10x mtx triplet in {path} (need matrix.mtx(.gz), barcodes.tsv(.gz), features/genes.tsv(.gz))."
            raise DataSchemaError(msg)
        samples = [found]
    meta = sample_metadata(
        samples, source=path, mapping=mapping, sample_sheet=sample_sheet, labels=labels, rules=rules
    )
    prefix = len(samples) > 1
    for sample in samples:
        if sample.sample_id not in meta.index:  # dropped by data.query
            continue
        raw = read_library(sample)
        adata = canonical_library(
            raw,
            sample_id=sample.sample_id,
            meta_row=meta.loc[sample.sample_id],
            gene_map=gene_map,
            source=path.name,
            allow_non_integer=allow_non_integer,
            prefix_barcodes=prefix,
        )
        adata.obs = _restore_dtypes(adata.obs, meta)
        record_provenance(
            adata, modality=MODALITY_SC, fmt=fmt, params=params, source=str(path), sample=sample.sample_id
        )
        yield adata


def read_tenx(
    path: Path,
    *,
    fmt: str,
    mapping: Mapping[str, str],
    sample_sheet: str | Path | pd.DataFrame | None,
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    allow_non_integer: bool,
    params: Mapping[str, Any],
    rules: ObsRules = NO_RULES,
) -> AnnData:
    """Read all libraries and concatenate them (outer join on genes, missing genes = 0 counts)."""
    import anndata as ad

    parts = list(
        iter_tenx(
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
    )
    if len(parts) == 1:
        adata = parts[0]
    else:
        same_genes = all(p.var_names.equals(parts[0].var_names) for p in parts)
        if not same_genes:
            logger.warning("read_cohort: samples of %s have different gene lists; outer join, absent genes = 0", path)
        adata = ad.concat(parts, join="outer", merge="same", fill_value=0)
        adata.X = as_counts(adata.X)
        adata.layers[_keys.COUNTS] = adata.X.copy()
        adata.obs = _restore_dtypes(adata.obs, parts[0].obs)
    record_provenance(adata, modality=MODALITY_SC, fmt=fmt, params=params, source=str(path), n_samples=len(parts))
    logger.info("read_cohort: %s -> %d cells x %d genes from %d samples (%s)", path.name, *adata.shape, len(parts), fmt)
    return adata
