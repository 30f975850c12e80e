"""Where samples come from: a path read one sample at a time, an in-memory AnnData split by sample, or chunks.

The serial path reads with :func:`biomarkers.io.iter_samples`. For a Dask cluster each sample becomes a small,
picklable reference (file, rows, canonical obs) that a worker loads itself, so no counts travel from the client.
The references use the readers behind ``iter_samples`` (``biomarkers.io._h5ad`` / ``_tenx``) directly, because
``iter_samples`` cannot yet be asked for one sample only (a ``samples=`` argument there would remove this coupling).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys as keys
from biomarkers._errors import ConfigError, DataSchemaError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from anndata import AnnData

READ_KWARGS = frozenset(
    {
        "kind",
        "obs_map",
        "patient_col",
        "sample_col",
        "label_col",
        "positive_label",
        "negative_label",
        "label_map",
        "sample_sheet",
        "gene_map",
        "allow_non_integer",
        "query",
        "clinical",
    }
)


def check_read_kwargs(read_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the reader options passed through to :func:`biomarkers.io.iter_samples`."""
    kw = {k: v for k, v in (read_kwargs or {}).items() if v is not None}
    bad = sorted(set(kw) - READ_KWARGS)
    if bad:
        msg = f"Unknown read_kwargs {bad} (allowed: {', '.join(sorted(READ_KWARGS))}). They are iter_samples arguments."
        raise ConfigError(msg)
    return kw


def is_h5ad_folder(path: Path) -> bool:
    """Tell whether `path` is a folder of ``.h5ad`` files (e.g. one per sample) without 10x files."""
    from biomarkers.io import detect_kind

    if not path.is_dir() or not any(path.glob("*.h5ad")):
        return False
    try:
        detect_kind(path)
    except DataSchemaError:
        return True
    return False


def iter_path(path: Path, read_kwargs: Mapping[str, Any]) -> Iterator[AnnData]:
    """Canonical samples of a path, one at a time (an h5ad folder is read file by file)."""
    from biomarkers.io import iter_samples

    if is_h5ad_folder(path):
        files = sorted(path.glob("*.h5ad"))
        return itertools.chain.from_iterable(iter_samples(f, **read_kwargs) for f in files)
    return iter_samples(path, **read_kwargs)


def split_by_sample(adata: AnnData) -> Iterator[AnnData]:
    """In-memory copies of each sample of `adata`, in order of first appearance; memory grows by one sample."""
    if keys.SAMPLE not in adata.obs:
        msg = (
            f"Column '{keys.SAMPLE}' not in adata.obs (have: {', '.join(map(str, adata.obs.columns[:12]))}); "
            "streaming works sample by sample. Read the cohort with sample_col=... (data.sample_col)."
        )
        raise DataSchemaError(msg)
    samples = adata.obs[keys.SAMPLE].astype(str).to_numpy()
    groups = pd.Series(np.arange(adata.n_obs)).groupby(samples, sort=False).indices
    for _, idx in sorted(groups.items(), key=lambda kv: kv[1][0]):
        view = adata[np.sort(idx)]
        yield view.to_memory() if adata.isbacked else view.copy()


def iter_source(source: str | Path | AnnData | Iterable[AnnData], read_kwargs: Mapping[str, Any]) -> Iterator[AnnData]:
    """Iterate over any source serially, one chunk (usually one sample) at a time."""
    from anndata import AnnData

    if isinstance(source, str | Path):
        return iter_path(Path(source), read_kwargs)
    if isinstance(source, AnnData):
        return split_by_sample(source)
    return iter(source)


# ----------------------------------------------------------------------------------------------------------------------
# per-sample references that a Dask worker loads itself
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class H5adSample:
    """Rows of one sample in an h5ad: the counts element at `key`, the canonical obs of those rows."""

    path: str
    key: str
    label: str
    sample: str
    rows: np.ndarray
    obs: pd.DataFrame
    allow_non_integer: bool

    @property
    def n_cells(self) -> int:
        """Cells in the sample."""
        return len(self.rows)

    def load(self, var: pd.DataFrame) -> AnnData:
        """Read the sample's rows (only those) as canonical AnnData."""
        import anndata as ad
        import h5py

        from biomarkers.io._common import as_counts, check_counts
        from biomarkers.io._h5ad import _read_rows

        source = Path(self.path).name
        with h5py.File(self.path, "r") as f:
            rows = _read_rows(f[self.key], self.rows)
        check_counts(
            rows, what=self.label, source=f"{source} [{self.sample}]", allow_non_integer=self.allow_non_integer
        )
        counts = as_counts(rows)
        if not self.obs.index.is_unique:
            dupes = self.obs.index[self.obs.index.duplicated()].unique()
            msg = (
                f"{len(dupes)} duplicated cell barcodes within one sample of {source} (e.g. {', '.join(dupes[:3])} in "
                f"sample {self.sample}). Each barcode must occur once per sample; check that files of different "
                "samples were not merged."
            )
            raise DataSchemaError(msg)
        del rows
        adata = ad.AnnData(X=counts, obs=self.obs.copy(), var=var.copy())
        # The same raw counts, one matrix: the pipeline copies before changing anything (qc(copy=True)), so sharing
        # it saves a copy of the sample on the worker.
        adata.layers[keys.COUNTS] = counts
        return adata


@dataclass(frozen=True)
class TenxLibrary:
    """One library of a 10x series folder with its sample-sheet metadata."""

    library: Any  # biomarkers.io._tenx.TenxSample
    meta: pd.DataFrame
    source: str
    gene_map: Mapping[str, str] | None
    allow_non_integer: bool
    prefix_barcodes: bool

    @property
    def n_cells(self) -> int | None:
        """Unknown until read."""
        return None

    def load(self) -> AnnData:
        """Read and canonicalise the library, as :func:`biomarkers.io.iter_samples` does."""
        from biomarkers.io._tenx import _restore_dtypes, canonical_library, read_library

        sample_id = self.library.sample_id
        adata = canonical_library(
            read_library(self.library),
            sample_id=sample_id,
            meta_row=self.meta.loc[sample_id],
            gene_map=self.gene_map,
            source=self.source,
            allow_non_integer=self.allow_non_integer,
            prefix_barcodes=self.prefix_barcodes,
        )
        adata.obs = _restore_dtypes(adata.obs, self.meta)
        return adata


@dataclass(frozen=True)
class WholeFile:
    """A file read whole with :func:`biomarkers.io.iter_samples` on the worker (a single 10x library, an h5ad of a folder)."""

    path: str
    read_kwargs: dict[str, Any]

    @property
    def n_cells(self) -> int | None:
        """Unknown until read."""
        return None

    def load_all(self) -> Iterator[AnnData]:
        """Its samples, one at a time."""
        from biomarkers.io import iter_samples

        return iter_samples(self.path, **self.read_kwargs)


def _label_spec(read_kwargs: Mapping[str, Any]) -> tuple[dict[str, str], Any, Any]:
    from biomarkers.io._obs import LabelSpec, resolve_obs_map
    from biomarkers.io._read import obs_rules

    mapping = resolve_obs_map(
        read_kwargs.get("obs_map"),
        patient_col=read_kwargs.get("patient_col"),
        sample_col=read_kwargs.get("sample_col"),
        label_col=read_kwargs.get("label_col"),
    )
    labels = LabelSpec(
        label_map=dict(read_kwargs.get("label_map") or {}),
        positive=read_kwargs.get("positive_label"),
        negative=read_kwargs.get("negative_label"),
    )
    labels.positive_label()
    return mapping, labels, obs_rules(read_kwargs.get("query"), read_kwargs.get("clinical"))


def h5ad_refs(path: Path, read_kwargs: Mapping[str, Any]) -> tuple[list[H5adSample], pd.DataFrame]:
    """One reference per sample of an h5ad, and the canonical var; reads obs and var only (as iter_samples does)."""
    import anndata as ad
    import h5py

    from biomarkers.io._common import canonical_var
    from biomarkers.io._h5ad import _CANDIDATES, _canonical_obs, _check_cells, _probe_source

    mapping, labels, rules = _label_spec(read_kwargs)
    allow = bool(read_kwargs.get("allow_non_integer", False))
    source = path.name
    with h5py.File(path, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        _check_cells(len(obs), source=source)  # before probing: there are no rows to probe
        label, key, var_key = _CANDIDATES[_probe_source(f, source=source, allow_non_integer=allow)]
        keep = rules.select(obs, source=source)
        file_rows = np.arange(len(obs)) if keep is None else np.flatnonzero(keep)
        obs = _canonical_obs(obs.iloc[file_rows], mapping=mapping, labels=labels, source=source, rules=rules)
        var = canonical_var(ad.io.read_elem(f[var_key]), gene_map=read_kwargs.get("gene_map"), source=source)
    sample_of = obs[keys.SAMPLE].astype(str).to_numpy()
    positions = pd.Series(np.arange(len(obs))).groupby(sample_of).indices
    refs = []
    for sample in pd.unique(sample_of):
        idx = np.sort(positions[sample])
        refs.append(H5adSample(str(path), key, label, str(sample), file_rows[idx], obs.iloc[idx].copy(), allow))
    return refs, var


def tenx_refs(path: Path, read_kwargs: Mapping[str, Any]) -> list[TenxLibrary]:
    """One reference per library of a 10x series folder."""
    from biomarkers.io._tenx import find_series_samples, sample_metadata

    mapping, labels, rules = _label_spec(read_kwargs)
    samples = find_series_samples(path)
    if not samples:
        msg = f"No 10x libraries found in {path} (mtx triplets, .h5 files, or one sub-folder per sample)."
        raise DataSchemaError(msg)
    meta = sample_metadata(
        samples,
        source=path,
        mapping=mapping,
        sample_sheet=read_kwargs.get("sample_sheet"),
        labels=labels,
        rules=rules,
    )
    samples = [s for s in samples if s.sample_id in meta.index]  # data.query may drop libraries
    return [
        TenxLibrary(
            s,
            meta,
            path.name,
            read_kwargs.get("gene_map"),
            bool(read_kwargs.get("allow_non_integer", False)),
            len(samples) > 1,
        )
        for s in samples
    ]


def path_refs(path: Path, read_kwargs: Mapping[str, Any]) -> tuple[list[Any], pd.DataFrame | None]:
    """Units of work for a path: per-sample references where the format allows it, else whole files."""
    from biomarkers.io import detect_kind

    if is_h5ad_folder(path):
        return [WholeFile(str(f), dict(read_kwargs)) for f in sorted(path.glob("*.h5ad"))], None
    kind = read_kwargs.get("kind") or detect_kind(path)
    if kind == "h5ad":
        return h5ad_refs(path, read_kwargs)
    if kind == "geo_10x_series":
        return tenx_refs(path, read_kwargs), None
    if kind in {"10x_h5", "10x_mtx"}:
        return [WholeFile(str(path), dict(read_kwargs))], None
    msg = f"{path.name} is {kind}, not single-cell; sample streaming needs cells. Use read_cohort for bulk data."
    raise ConfigError(msg)


def metadata_table(path: Path, read_kwargs: Mapping[str, Any]) -> pd.DataFrame | None:
    """Canonical metadata of a streamed input without its counts: one row per cell (h5ad) or sample (10x series).

    The rows are those a stream reads (after ``data.query``), with the columns after ``obs_map`` and the clinical
    join, so per-patient covariates and cohorts can be read without a second pass over the counts. None for a
    single 10x library, whose only metadata is what the clinical table adds (join it to the sample table instead).
    """
    kwargs = check_read_kwargs(read_kwargs)
    refs, _ = path_refs(path, kwargs)
    frames = []
    for ref in refs:
        if isinstance(ref, H5adSample):
            frames.append(ref.obs)
        elif isinstance(ref, TenxLibrary):
            frames.append(ref.meta.loc[[ref.library.sample_id]])
        elif isinstance(ref, WholeFile) and ref.path.endswith(".h5ad"):
            frames.extend(r.obs for r in h5ad_refs(Path(ref.path), kwargs)[0])
        else:
            return None
    return pd.concat(frames) if frames else None
