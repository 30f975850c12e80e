"""Pseudobulk sums added up one sample at a time, so ``biomarkers discover`` on a file needs one sample in memory.

Raw counts are additive: a patient's per-sample sums (:func:`pseudobulk` on each sample) add up to exactly the
integers :func:`pseudobulk` computes on the whole cohort. What pseudobulk and the DE design take per patient
besides counts (the most common ``response`` / ``batch`` of a compartment's cells, covariate modes and means, the
first label) are kept as per-patient value counts in order of first appearance, which also add up, and are reduced
at the end the way the in-memory functions reduce the cells. Peak memory: one sample plus the patients x genes
tables of the compartments asked for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys as k
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.discovery._de import DEFAULT_COMPARTMENTS
from biomarkers.discovery._pseudobulk import ALL, META_COLUMNS, count_columns, pseudobulk

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from os import PathLike

    from anndata import AnnData

    from biomarkers.features import FeaturePipeline

logger = logging.getLogger("biomarkers")

_VALUE_KEYS = ["scope", "column", "patient", "value", "isna"]


@dataclass(frozen=True)
class _Spec:
    """What each sample contributes: sums per compartment, value counts of `columns` per compartment and overall."""

    compartments: tuple[str, ...]
    columns: tuple[str, ...]
    keep_annotated: bool  # cells that already have obs['compartment'] are used as they are (annotate_cells)


@dataclass
class _SamplePart:
    counts: dict[str, pd.DataFrame]  # compartment -> patients x genes int64 (patients with >= 1 cell there)
    n_cells: dict[str, pd.Series]
    values: pd.DataFrame  # _VALUE_KEYS + n, num; rows in order of first appearance
    numeric: dict[str, bool]
    obs_columns: list[str]
    patients: list[str]
    samples: pd.DataFrame  # sample_table of the sample as read (for check_sample_mix)
    genes: pd.Index
    n_in: int
    n_kept: int


def _is_numeric(v: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v))


def _values(cells: AnnData, spec: _Spec) -> tuple[pd.DataFrame, dict[str, bool]]:
    """Cells per (scope, column, patient, value) in order of first appearance; scope = compartment or ``all``."""
    obs = cells.obs
    patients = obs[k.PATIENT].astype(str).to_numpy()
    comp = obs[k.COMPARTMENT].astype(str).to_numpy() if k.COMPARTMENT in obs else None
    cols = [c for c in spec.columns if c in obs]
    numeric = {c: _is_numeric(obs[c]) for c in cols}
    parts = []
    for scope in dict.fromkeys([*spec.compartments, ALL]):
        if scope != ALL and comp is None:
            continue
        mask = np.ones(len(obs), dtype=bool) if scope == ALL else comp == scope
        for col in cols:
            v = obs[col][mask]
            df = pd.DataFrame(
                {
                    "patient": patients[mask],
                    "value": v.astype(str).to_numpy(dtype=object),
                    "isna": v.isna().to_numpy(),
                    "num": v.to_numpy(dtype=float, na_value=np.nan) if numeric[col] else np.nan,
                }
            )
            g = df.groupby(["patient", "value", "isna"], sort=False).agg(n=("patient", "size"), num=("num", "first"))
            parts.append(g.reset_index().assign(scope=scope, column=col))
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in [*_VALUE_KEYS, "n", "num"]})
    return (pd.concat(parts, ignore_index=True) if parts else empty), numeric


def sample_part(pipe: FeaturePipeline, adata: AnnData, *, spec: _Spec) -> _SamplePart:
    """Process one sample (or chunk) and return its pseudobulk sums and value counts."""
    from biomarkers.io import sample_table

    samples = sample_table(adata.obs) if k.PATIENT in adata.obs else pd.DataFrame()
    cells = adata if spec.keep_annotated and k.COMPARTMENT in adata.obs else pipe.process(adata)
    counts, n_cells, genes = {}, {}, None
    for comp in spec.compartments:
        c, meta = pseudobulk(cells, compartment=comp, min_cells=0)
        counts[comp], n_cells[comp], genes = c, meta[k.N_CELLS], c.columns
    values, numeric = _values(cells, spec)
    return _SamplePart(
        counts=counts, n_cells=n_cells, values=values, numeric=numeric, obs_columns=list(map(str, cells.obs.columns)),
        patients=sorted(set(cells.obs[k.PATIENT].astype(str))), samples=samples, genes=genes, n_in=adata.n_obs,
        n_kept=cells.n_obs,
    )  # fmt: skip


@dataclass
class PseudobulkSums:
    """Raw-count pseudobulk of a cohort added up sample by sample (:func:`stream_pseudobulk`).

    :func:`biomarkers.discovery.discover`, :func:`~biomarkers.discovery.differential_expression` and
    :func:`~biomarkers.discovery.cv_with_discovery` accept it in place of the cells, with the same results.

    Attributes
    ----------
    counts
        Compartment -> patients (sorted) x genes int64 sums, every patient with at least one cell there.
    n_cells
        Compartment -> cells per patient.
    values
        Cells per ``scope`` (compartment or ``all``), ``column``, ``patient``, ``value`` (as ``str``) and ``isna``,
        in order of first appearance, with ``num`` (the value of a numeric column).
    numeric
        Columns whose dtype is numeric (covariates averaged, not voted).
    obs_columns
        Columns of the processed cells' ``obs``.
    patients
        Every patient with processed cells (sorted).
    samples
        One row per sample (:func:`biomarkers.io.sample_table` of the cells as read), for the mixed-sample check.
    n_cells_in, n_cells_kept
        Cells read, and kept by QC.
    uns
        ``truth`` of a simulated cohort (read from the file), else empty.
    digest
        sha256 of the input file (``"in-memory"`` for cells passed in).
    seconds
        Wall time of streaming.
    """

    counts: dict[str, pd.DataFrame]
    n_cells: dict[str, pd.Series]
    values: pd.DataFrame
    numeric: frozenset[str]
    obs_columns: frozenset[str]
    patients: pd.Index
    samples: pd.DataFrame
    n_cells_in: int = 0
    n_cells_kept: int = 0
    uns: dict[str, Any] = field(default_factory=dict)
    digest: str = "in-memory"
    seconds: float = 0.0

    def _check(self, compartment: str) -> None:
        if compartment not in self.counts:
            msg = (
                f"Compartment {compartment!r} was not accumulated (have: {', '.join(self.counts)}). "
                "Pass it in compartments= of stream_pseudobulk."
            )
            raise DataSchemaError(msg)

    def _column(self, scope: str, column: str, *, dropna: bool) -> pd.DataFrame:
        v = self.values
        t = v[(v["scope"] == scope) & (v["column"] == column)]
        return t[~t["isna"].astype(bool)] if dropna else t

    def _modes(self, scope: str, column: str, *, dropna: bool) -> pd.Series:
        """Most common value per patient, ties to the first seen: ``value_counts().index[0]`` over the cells."""
        t = self._column(scope, column, dropna=dropna)
        out = {}
        for patient, g in t.groupby("patient", sort=False):
            if len(g) == 1:
                out[patient] = g["value"].iloc[0]
            else:  # value_counts sorts the counts of the values in order of first appearance, exactly like this
                counts = pd.Series(g["n"].to_numpy(dtype=np.int64), index=pd.Index(g["value"].to_numpy(), dtype=object))
                out[patient] = counts.sort_values(ascending=False).index[0]
        return pd.Series(out, dtype=object)

    def pseudobulk(self, *, compartment: str, min_cells: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return ``counts`` and ``metadata`` of :func:`biomarkers.discovery.pseudobulk` for one compartment."""
        self._check(compartment)
        counts, n_cells = self.counts[compartment], self.n_cells[compartment]
        meta = pd.DataFrame(index=counts.index)
        for col in META_COLUMNS:
            if col in self.obs_columns:
                meta[col] = self._modes(compartment, col, dropna=True).reindex(counts.index)
            else:
                meta[col] = np.nan
        meta[k.N_CELLS] = n_cells.reindex(counts.index).to_numpy(dtype=np.int64)
        keep = meta[k.N_CELLS].to_numpy() >= min_cells
        if not keep.all():
            logger.info(
                "pseudobulk: %s: dropped %d/%d patient(s) with < %d cells",
                compartment,
                int((~keep).sum()),
                keep.size,
                min_cells,
            )
        return counts.loc[keep], meta.loc[keep]

    def first(self, column: str) -> pd.Series:
        """First non-missing value of `column` per patient over all its cells (``groupby().first()``)."""
        t = self._column(ALL, column, dropna=True)
        first = t.drop_duplicates("patient").set_index("patient")["value"].rename(column)
        first.index.name = k.PATIENT
        return first

    def covariates(self, covariates: Sequence[str]) -> pd.DataFrame:
        """Patient-level covariates over all cells: the mean of a numeric column, else the most common value."""
        cols = {}
        for c in covariates:
            if c not in self.obs_columns:
                continue
            if not (self.values["column"] == c).any():
                msg = f"Covariate {c!r} was not accumulated. Pass it in covariates= of stream_pseudobulk."
                raise DataSchemaError(msg)
            if c in self.numeric:
                t = self._column(ALL, c, dropna=True)
                means = {}
                for patient, g in t.groupby("patient", sort=False):
                    cells = pd.Series(np.repeat(g["num"].to_numpy(dtype=float), g["n"].to_numpy(dtype=np.int64)))
                    # The same pandas groupby mean as on the cells (identical when a patient's value is constant).
                    means[patient] = cells.groupby(np.zeros(len(cells), dtype=np.int64)).mean().iloc[0]
                cols[c] = pd.Series(means, dtype=float).reindex(self.patients)
            else:
                cols[c] = self._modes(ALL, c, dropna=False).reindex(self.patients)
        out = pd.DataFrame(cols, index=self.patients)
        out.index.name = k.PATIENT
        return out

    def table(self, *, compartments: Sequence[str], min_cells: int = 10) -> pd.DataFrame:
        """Return the wide table of :func:`biomarkers.discovery.pseudobulk_table` (for nested discovery)."""
        parts = []
        for comp in compartments:
            counts, _ = self.pseudobulk(compartment=comp, min_cells=min_cells)
            part = counts.reindex(self.patients).astype(float)
            part.columns = count_columns(comp, counts.columns)
            parts.append(part)
        return pd.concat(parts, axis=1)


class _Accumulator:
    """Adds sample parts as they arrive (any order for the counts; first-appearance data kept in sample order)."""

    def __init__(self, compartments: Sequence[str]) -> None:
        self.rows: dict[str, dict[str, np.ndarray]] = {c: {} for c in compartments}
        self.cells: dict[str, dict[str, int]] = {c: {} for c in compartments}
        self.genes: pd.Index | None = None
        self.ordered: list[tuple[tuple[int, int], pd.DataFrame, pd.DataFrame]] = []
        self.numeric: dict[str, bool] = {}
        self.obs_columns: set[str] = set()
        self.patients: set[str] = set()
        self.n_in = self.n_kept = 0

    def add(self, part: _SamplePart, order: tuple[int, int]) -> None:
        if self.genes is None:
            self.genes = part.genes
        elif not part.genes.equals(self.genes):
            msg = "Samples of the input have different genes; pseudobulk sums need one gene list. Re-export the cohort."
            raise DataSchemaError(msg)
        for comp, df in part.counts.items():
            rows, cells, x = self.rows[comp], self.cells[comp], df.to_numpy(dtype=np.int64)
            for i, patient in enumerate(df.index):
                if patient in rows:
                    rows[patient] += x[i]
                else:
                    rows[patient] = x[i].copy()
                cells[patient] = cells.get(patient, 0) + int(part.n_cells[comp].iloc[i])
        for col, is_num in part.numeric.items():
            self.numeric[col] = self.numeric.get(col, True) and is_num
        self.obs_columns.update(part.obs_columns)
        self.patients.update(part.patients)
        self.n_in, self.n_kept = self.n_in + part.n_in, self.n_kept + part.n_kept
        self.ordered.append((order, part.values, part.samples))

    def result(self) -> PseudobulkSums:
        if not self.ordered:
            msg = "No samples to process: the source yielded no cells. Check the path given."
            raise DataSchemaError(msg)
        counts, n_cells = {}, {}
        for comp in list(self.rows):
            rows = self.rows.pop(comp)
            index = pd.Index(sorted(rows), dtype=object, name=k.PATIENT)
            # Column-major, the layout of pseudobulk()'s tables: float reductions over patients (the DE's means) sum
            # in an order set by the layout, so only the same layout gives bit-identical DE tables.
            x = np.empty((len(index), len(self.genes)), dtype=np.int64, order="F")
            for i, patient in enumerate(index):
                x[i] = rows.pop(patient)
            counts[comp] = pd.DataFrame(x, index=index, columns=self.genes)
            n_cells[comp] = pd.Series(self.cells[comp], dtype=np.int64).reindex(index)
        self.ordered.sort(key=lambda t: t[0])
        values = pd.concat([v for _, v, _ in self.ordered], ignore_index=True)
        values = values.groupby(_VALUE_KEYS, sort=False).agg(n=("n", "sum"), num=("num", "first")).reset_index()
        return PseudobulkSums(
            counts=counts, n_cells=n_cells, values=values,
            numeric=frozenset(c for c, is_num in self.numeric.items() if is_num), obs_columns=frozenset(self.obs_columns),
            patients=pd.Index(sorted(self.patients), dtype=object, name=k.PATIENT),
            samples=pd.concat([s for _, _, s in self.ordered], ignore_index=True), n_cells_in=self.n_in,
            n_cells_kept=self.n_kept,
        )  # fmt: skip


# -- per-sample work: in process, or as Dask tasks (module level, so Dask can pickle them) -----------------------------
def _task_h5ad(pipe: FeaturePipeline, ref: Any, var: pd.DataFrame, *, spec: _Spec) -> list[_SamplePart]:
    """Read one sample's rows of an h5ad on the worker and return its part."""
    from biomarkers.compute._run import _collect

    part = sample_part(pipe, ref.load(var), spec=spec)
    _collect()
    return [part]


def _task_ref(pipe: FeaturePipeline, ref: Any, *, spec: _Spec) -> list[_SamplePart]:
    """Load a 10x library (or each sample of a whole file) on the worker and return the part(s)."""
    from biomarkers.compute import _sources as src
    from biomarkers.compute._run import _collect

    chunks = ref.load_all() if isinstance(ref, src.WholeFile) else iter([ref.load()])
    parts = []
    for adata in chunks:
        if adata.n_obs:
            parts.append(sample_part(pipe, adata, spec=spec))
        del adata
        _collect()
    return parts


def _serial(pipe: FeaturePipeline, chunks: Iterable[AnnData], spec: _Spec, acc: _Accumulator) -> None:
    from biomarkers.compute._run import _collect, _frozen_gc

    with _frozen_gc() as freeze:
        for i, adata in enumerate(chunks):
            if adata.n_obs == 0:
                continue
            part = sample_part(pipe, adata, spec=spec)
            del adata
            acc.add(part, (i, 0))
            del part
            _collect()  # a finished sample's matrices are in reference cycles: free them now, not later
            freeze()


def _on_dask(
    pipe: FeaturePipeline,
    path: Path,
    read_kwargs: Mapping[str, Any],
    spec: _Spec,
    acc: _Accumulator,
    *,
    scheduler: str | Any,
    n_workers: int,
) -> None:
    from biomarkers.compute import _sources as src
    from biomarkers.compute._dask import dask_client
    from biomarkers.compute._run import prepare_worker

    with dask_client(scheduler, n_workers=n_workers) as client:
        from distributed import as_completed

        if scheduler == "local":
            client.run(prepare_worker)
        refs, var = src.path_refs(path, read_kwargs)
        [pipe_f] = client.scatter([pipe], broadcast=True)
        if var is not None:
            [var_f] = client.scatter([var], broadcast=True)
            futures = [client.submit(_task_h5ad, pipe_f, r, var_f, spec=spec, pure=False) for r in refs]
        else:
            futures = [client.submit(_task_ref, pipe_f, r, spec=spec, pure=False) for r in refs]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                for j, part in enumerate(fut.result()):  # re-raises a worker's error here
                    acc.add(part, (index[fut.key], j))
                fut.release()
        except BaseException:
            for fut in futures:  # a caller's long-lived client must not keep computing the rest
                fut.cancel()
            raise


def _file_truth(path: Path) -> dict[str, Any]:
    """``uns['truth']`` of a simulated cohort saved as h5ad (what read_cohort would carry), else empty."""
    if path.suffix.lower() != ".h5ad" or not path.is_file():
        return {}
    import anndata as ad
    import h5py

    with h5py.File(path, "r") as f:
        if "uns" in f and k.TRUTH in f["uns"]:
            return {k.TRUTH: ad.io.read_elem(f["uns"][k.TRUTH])}
    return {}


def stream_pseudobulk(
    source: str | PathLike[str] | AnnData | Iterable[AnnData],
    *,
    pipe: FeaturePipeline | None = None,
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    covariates: Sequence[str] = (k.BATCH,),
    label_col: str = k.RESPONSE,
    read_kwargs: Mapping[str, Any] | None = None,
    scheduler: str | Any | None = None,
    n_workers: int = 2,
    seed: int | None = 0,
) -> PseudobulkSums:
    """Pseudobulk a cohort one sample at a time: process each sample, sum its raw counts per patient, add up.

    Each sample goes through ``pipe.process`` (QC, normalisation, annotation, all per sample) and
    :func:`biomarkers.discovery.pseudobulk`; the integer sums add up exactly, so discovery on the result gives the
    same DE tables as on the whole cohort processed in memory. Peak memory is one sample plus the patients x genes
    sums of `compartments`.

    Parameters
    ----------
    source
        A single-cell path (h5ad, also larger than memory; 10x file, folder or GEO series folder; a folder of h5ad
        files), an AnnData, or an iterable of AnnData chunks (each one or more whole samples).
    pipe
        The experiment's :class:`biomarkers.features.FeaturePipeline`, run on every sample. None: the default one
        of :func:`biomarkers.discovery.annotate_cells`, run only on cells without ``obs['compartment']``.
    compartments
        Compartments to sum (``'all'`` = every cell); discovery can test only these.
    covariates, label_col
        ``obs`` columns whose per-patient values the DE design will need (besides ``response`` and ``batch``).
    read_kwargs
        :func:`biomarkers.io.iter_samples` options for a path (``biomarkers.cohort.read_spec(cfg).read_kwargs()``).
    scheduler
        None: in this process. ``'local'``, ``'tcp://HOST:PORT'`` or a ``distributed.Client``: one Dask task per
        sample, each worker reading its own sample (paths only); see :func:`biomarkers.compute.dask_client`.
    n_workers
        Workers of ``scheduler='local'``.
    seed
        Seed of the default pipeline.

    Returns
    -------
    A :class:`PseudobulkSums`.

    Examples
    --------
    >>> import biomarkers as bm
    >>> from biomarkers.discovery import pseudobulk, stream_pseudobulk
    >>> adata = bm.simulate_cohort(n_patients=6, cells_per_patient=40, n_genes=300, seed=0)
    >>> adata.obs["compartment"] = "all_cells"
    >>> sums = stream_pseudobulk(adata, compartments=["all_cells"])
    >>> counts, _ = sums.pseudobulk(compartment="all_cells", min_cells=5)
    >>> bool((counts == pseudobulk(adata, compartment="all_cells", min_cells=5)[0]).all().all())
    True
    """
    from anndata import AnnData

    from biomarkers.compute import _sources as src

    t0 = time.perf_counter()
    keep_annotated = pipe is None
    if pipe is None:
        from biomarkers.discovery._discover import default_pipeline

        pipe = default_pipeline(seed=seed)
    columns = tuple(dict.fromkeys([*META_COLUMNS, label_col, *covariates]))
    spec = _Spec(tuple(dict.fromkeys(compartments)), columns, keep_annotated)
    acc = _Accumulator(spec.compartments)
    kw = src.check_read_kwargs(read_kwargs)
    is_path = isinstance(source, str | Path) or hasattr(source, "__fspath__")
    if scheduler is None:
        chunks = src.iter_source(Path(source) if is_path else source, kw)  # type: ignore[arg-type]
        _serial(pipe, chunks, spec, acc)
        where = "in process"
    elif is_path:
        _on_dask(pipe, Path(source), kw, spec, acc, scheduler=scheduler, n_workers=n_workers)  # type: ignore[arg-type]
        where = f"on Dask ({scheduler if isinstance(scheduler, str) else 'client'})"
    else:
        msg = "stream_pseudobulk runs on Dask from a path only (workers read their own samples). Pass the file path."
        raise ConfigError(msg)
    sums = acc.result()
    if is_path:
        from biomarkers.cohort import file_digest

        sums.uns, sums.digest = _file_truth(Path(source)), file_digest(Path(source))  # type: ignore[arg-type]
    elif isinstance(source, AnnData) and k.TRUTH in source.uns:
        sums.uns = {k.TRUTH: source.uns[k.TRUTH]}
    sums.seconds = time.perf_counter() - t0
    n_samples = sums.samples[k.SAMPLE].nunique() if k.SAMPLE in sums.samples else len(sums.samples)
    logger.info(
        "stream_pseudobulk: %d samples, %d -> %d cells, %d patients, %d compartment(s) summed %s (%.1f s)",
        n_samples, sums.n_cells_in, sums.n_cells_kept, len(sums.patients), len(spec.compartments), where, sums.seconds,
    )  # fmt: skip
    return sums
