"""AnnData ``.h5ad`` files (Zenodo, CELLxGENE, e.g. the TAURUS atlas): find raw counts, rename obs.

Raw counts are looked for in ``layers['counts']``, then ``.raw.X``, then ``X``, and the first one
holding non-negative integers wins. CELLxGENE keeps counts in ``.raw.X`` with normalised ``X``; the
TAURUS objects keep integer-valued float counts in ``X``.
"""

from __future__ import annotations

import warnings
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
    count_problem,
    duplicate_names_ok,
    logger,
    preview,
    record_provenance,
    unique_obs_names,
)
from ._obs import NO_RULES, LabelSpec, ObsRules, apply_obs_map, finalize_obs

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    import h5py
    from anndata import AnnData

_PROBE_ROWS = 2000  # rows read to decide where the counts are when streaming
# uns entries that describe processing of the replaced X; "log1p" would make scanpy treat counts as logged.
_STALE_UNS = ("log1p",)
_CANDIDATES = (("layers['counts']", "layers/counts", "var"), (".raw.X", "raw/X", "raw/var"), ("X", "X", "var"))


def pick_counts(candidates: list[tuple[str, Any]], *, source: str, allow_non_integer: bool) -> int:
    """Index of the first candidate matrix that holds raw counts.

    Parameters
    ----------
    candidates
        ``(label, matrix or None if absent)`` in order of preference.
    source
        Input name for messages.
    allow_non_integer
        Accept the first present matrix (with a warning) when none is integer.

    Raises
    ------
    DataSchemaError
        No candidate holds non-negative integers.
    """
    reasons = []
    for i, (label, matrix) in enumerate(candidates):
        if matrix is None:
            reasons.append(f"{label} absent")
            continue
        problem = count_problem(matrix)
        if problem is None:
            return i
        reasons.append(f"{label} has {problem}")
    present = [i for i, (_, m) in enumerate(candidates) if m is not None]
    if allow_non_integer and present:
        msg = f"No raw integer counts in {source} ({'; '.join(reasons)}); using {candidates[present[0]][0]}."
        warnings.warn(msg, UserWarning, stacklevel=3)
        return present[0]
    msg = (
        f"No raw integer counts in {source}: {'; '.join(reasons)}. None of these holds raw counts; re-export "
        "the object with raw counts in layers['counts'] (adata.layers['counts'] = counts) or read the CellRanger files."
    )
    raise DataSchemaError(msg)


def _read_error(path: Path, err: Exception) -> DataSchemaError:
    msg = (
        f"Cannot read {path} as h5ad ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        "Is it an AnnData file written by write_h5ad (not truncated)? Re-export it, or fix data.path."
    )
    return DataSchemaError(msg)


def _check_cells(n_cells: int, *, source: str) -> None:
    """Raise if the file holds no cells: nothing downstream (QC, features, models) can use it."""
    if n_cells == 0:
        msg = (
            f"{source} has 0 cells (an empty obs table): there is nothing to read. Was it subset or filtered to "
            "nothing before saving? Re-export it with its cells, or fix data.path."
        )
        raise DataSchemaError(msg)


def _canonical_obs(
    obs: pd.DataFrame, *, mapping: Mapping[str, str], labels: LabelSpec, source: str, rules: ObsRules = NO_RULES
) -> pd.DataFrame:
    obs = apply_obs_map(obs, rules.obs_part(mapping, obs.columns), source=source)
    obs = rules.join(obs, mapping, labels=labels, source=source)
    return finalize_obs(
        obs, source=source, labels=labels, patient_from_sample=False, label_required=_keys.RESPONSE in mapping
    )


def read_h5ad_cohort(
    path: Path,
    *,
    mapping: Mapping[str, str],
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    allow_non_integer: bool,
    backed: str | None,
    params: Mapping[str, Any],
    rules: ObsRules = NO_RULES,
) -> AnnData:
    """Read an h5ad into canonical AnnData (in memory), or canonicalise obs/var of a backed view."""
    import anndata as ad

    source = path.name
    if backed is not None:
        if rules.active:
            msg = (
                "data.query / data.labels are applied while streaming or reading into memory, not to a backed view. "
                "Use iter_samples(...) (or read without backed='r')."
            )
            raise DataSchemaError(msg)
        return _read_backed(path, mapping=mapping, labels=labels, gene_map=gene_map, params=params)
    try:
        with duplicate_names_ok():
            adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise _read_error(path, err) from err
    out = canonical_anndata(
        adata, mapping=mapping, labels=labels, gene_map=gene_map, allow_non_integer=allow_non_integer, rules=rules,
        source=source,
    )  # fmt: skip
    record_provenance(
        out, modality=MODALITY_SC, fmt="h5ad", params=params, source=str(path),
        counts_source=out.uns.pop("_counts_source"),
    )  # fmt: skip
    return out


def canonical_anndata(
    adata: AnnData,
    *,
    mapping: Mapping[str, str],
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    allow_non_integer: bool,
    rules: ObsRules = NO_RULES,
    source: str = "the AnnData",
) -> AnnData:
    """Canonicalise an in-memory AnnData as ``read_cohort`` does an h5ad: rows kept, counts found, obs and var mapped.

    ``uns['_counts_source']`` names where the counts were found (popped by the caller).
    """
    import anndata as ad

    _check_cells(adata.n_obs, source=source)
    keep = rules.select(adata.obs, source=source)
    if keep is not None:
        adata = adata[keep].copy()
    layer = adata.layers.get(_keys.COUNTS)
    raw = adata.raw.X if adata.raw is not None else None
    choice = pick_counts(
        [("layers['counts']", layer), (".raw.X", raw), ("X", adata.X)],
        source=source,
        allow_non_integer=allow_non_integer,
    )
    matrix, var = [(layer, adata.var), (raw, adata.raw.var if adata.raw is not None else None), (adata.X, adata.var)][
        choice
    ]
    where = _CANDIDATES[choice][0]
    obs = _canonical_obs(adata.obs, mapping=mapping, labels=labels, source=source, rules=rules)
    var = canonical_var(var, gene_map=gene_map, source=source)
    counts = as_counts(matrix)
    uns = {k: v for k, v in adata.uns.items() if k not in _STALE_UNS}
    with duplicate_names_ok():  # cell names repeated across samples are prefixed just below
        out = ad.AnnData(X=counts, obs=obs, var=var, obsm=dict(adata.obsm.items()), uns=uns)
    out.layers[_keys.COUNTS] = counts.copy()
    unique_obs_names(out, source=source)
    out.uns["_counts_source"] = where
    logger.info("read_cohort: %s -> %d cells x %d genes (counts from %s)", source, *out.shape, where)
    return out


def _read_backed(
    path: Path,
    *,
    mapping: Mapping[str, str],
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    params: Mapping[str, Any],
) -> AnnData:
    import anndata as ad
    import h5py

    source = path.name
    with h5py.File(path, "r") as f:
        _check_cells(len(ad.io.read_elem(f["obs"])), source=source)  # before probing: there are no rows to probe
        choice = _probe_source(f, source=source, allow_non_integer=True)
    try:
        adata = ad.read_h5ad(path, backed="r")
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise _read_error(path, err) from err
    adata.obs = _canonical_obs(adata.obs, mapping=mapping, labels=labels, source=source)
    adata.var = canonical_var(adata.var, gene_map=gene_map, source=source)
    where = _CANDIDATES[choice][0]
    if where != "X":
        logger.warning(
            "read_cohort: X of backed %s is not raw counts (they are in %s); "
            "stream canonical samples with iter_samples()",
            source,
            where,
        )
    record_provenance(
        adata, modality=MODALITY_SC, fmt="h5ad", params=params, source=str(path), counts_source=where, backed=True
    )
    return adata


def _read_rows(elem: h5py.Dataset | h5py.Group, idx: np.ndarray) -> Any:
    """Rows `idx` (sorted) of a dense dataset or an anndata-encoded sparse group."""
    import anndata as ad
    import h5py

    contiguous = len(idx) > 0 and idx[-1] - idx[0] + 1 == len(idx)
    selector: Any = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx
    if isinstance(elem, h5py.Dataset):
        return elem[selector]
    return ad.io.sparse_dataset(elem)[selector]


def _n_rows(elem: h5py.Dataset | h5py.Group) -> int:
    import h5py

    return int(elem.shape[0]) if isinstance(elem, h5py.Dataset) else int(elem.attrs["shape"][0])


def _probe_source(f: h5py.File, *, source: str, allow_non_integer: bool) -> int:
    candidates = []
    for label, key, _ in _CANDIDATES:
        if key in f:
            elem = f[key]
            candidates.append((label, _read_rows(elem, np.arange(min(_PROBE_ROWS, _n_rows(elem))))))
        else:
            candidates.append((label, None))
    return pick_counts(candidates, source=source, allow_non_integer=allow_non_integer)


def iter_h5ad_samples(
    path: Path,
    *,
    mapping: Mapping[str, str],
    labels: LabelSpec,
    gene_map: Mapping[str, str] | None,
    allow_non_integer: bool,
    params: Mapping[str, Any],
    rules: ObsRules = NO_RULES,
) -> Iterator[AnnData]:
    """Yield one canonical in-memory AnnData per sample, reading only that sample's rows from disk."""
    import anndata as ad
    import h5py

    source = path.name
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise _read_error(path, err) from err
    with f:
        obs = ad.io.read_elem(f["obs"])
        _check_cells(len(obs), source=source)  # before probing: there are no rows to probe
        choice = _probe_source(f, source=source, allow_non_integer=allow_non_integer)
        label, key, var_key = _CANDIDATES[choice]
        keep = rules.select(obs, source=source)
        file_rows = np.arange(len(obs)) if keep is None else np.flatnonzero(keep)
        obs = _canonical_obs(obs.iloc[file_rows], mapping=mapping, labels=labels, source=source, rules=rules)
        var = canonical_var(ad.io.read_elem(f[var_key]), gene_map=gene_map, source=source)
        elem = f[key]
        if not isinstance(elem, h5py.Dataset) and elem.attrs.get("encoding-type") == "csc_matrix":
            logger.warning("iter_samples: %s stores %s as CSC; row-wise streaming is slow", source, label)
        samples = pd.unique(obs[_keys.SAMPLE].astype(str))
        positions = pd.Series(np.arange(len(obs))).groupby(obs[_keys.SAMPLE].astype(str).to_numpy()).indices
        for sample in samples:
            idx = np.sort(positions[sample])
            rows = _read_rows(elem, file_rows[idx])
            check_counts(rows, what=label, source=f"{source} [{sample}]", allow_non_integer=allow_non_integer)
            sample_obs = obs.iloc[idx].copy()
            if not sample_obs.index.is_unique:
                dupes = sample_obs.index[sample_obs.index.duplicated()].unique()
                msg = (
                    f"{len(dupes)} duplicated cell barcodes within one sample of {source} (e.g. {preview(dupes, 3)} in "
                    f"sample {sample}). Each barcode must occur once per sample; check that files of different samples "
                    "were not merged."
                )
                raise DataSchemaError(msg)
            counts = as_counts(rows)
            adata = ad.AnnData(X=counts, obs=sample_obs, var=var.copy())
            adata.layers[_keys.COUNTS] = counts.copy()
            record_provenance(
                adata,
                modality=MODALITY_SC,
                fmt="h5ad",
                params=params,
                source=str(path),
                counts_source=label,
                sample=sample,
            )
            yield adata
