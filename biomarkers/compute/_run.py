"""Per-sample processing, serial or on a Dask cluster, combined into patient statistics."""

from __future__ import annotations

import functools
import gc
import logging
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData as AnnDataType

from biomarkers import _keys as keys
from biomarkers._errors import DataSchemaError
from biomarkers.compute import _sources as src
from biomarkers.compute._progress import Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from anndata import AnnData

    from biomarkers.features import FeaturePipeline

logger = logging.getLogger("biomarkers")

SAMPLE_COLUMNS = (keys.PATIENT, "n_cells_in", "n_cells_kept", "seconds")


@dataclass
class SampleStats:
    """Additive per-patient statistics of a cohort processed sample by sample.

    Attributes
    ----------
    stats
        Patients x statistics (sums, see :func:`biomarkers.features.patient_stats`), combined over samples;
        ``pipe.finalize(stats)`` gives the feature table.
    samples
        One row per sample (index ``sample_id``): ``patient_id``, ``n_cells_in``, ``n_cells_kept``, ``seconds``.
    labels
        One row per sample seen: ``patient_id``, ``sample_id``, and ``response``, ``tissue``, ``timepoint``,
        ``inflamed`` where present, for labelling patients and checking their samples agree.
    coverage
        Gene coverage of each scored set in the first sample (see :meth:`FeaturePipeline.check_genes`).
    seconds
        Wall time.
    cells
        A uniform random subsample of the processed cells (``keep_cells`` of them, drawn while streaming, the same
        whatever the order or scheduler), for plots; None when not asked for.
    """

    stats: pd.DataFrame
    samples: pd.DataFrame
    labels: pd.DataFrame
    coverage: pd.DataFrame
    seconds: float
    cells: AnnData | None = None

    @property
    def n_cells(self) -> int:
        """Cells read."""
        return int(self.samples["n_cells_in"].sum())


@dataclass
class _Part:
    stats: pd.DataFrame
    samples: pd.DataFrame
    labels: pd.DataFrame
    coverage: pd.DataFrame | None
    cells: AnnData | None = None  # subsample of processed cells, obs['_key'] = its random keys


def _subsample(processed: AnnData, keep: int) -> AnnData | None:
    """Keep the `keep` cells with the smallest pseudo-random keys, hashed from sample and cell name (not order).

    Keeping the globally smallest keys across chunks is a uniform sample without replacement of all cells seen, so
    merging chunks in any order (serial, Dask) gives the same cells.
    """
    if keep <= 0 or processed.n_obs == 0:
        return None
    names = (processed.obs[keys.SAMPLE].astype(str) + "\x00" + processed.obs_names.astype(str)).to_numpy()
    key = np.array([zlib.crc32(n.encode()) for n in names], dtype=np.float64) / 2**32  # in [0, 1)
    order = np.argsort(key, kind="stable")[:keep]
    cols = [c for c in (keys.PATIENT, keys.SAMPLE, keys.CELL_TYPE, keys.COMPARTMENT, keys.AQP9_MAC) if c in processed.obs]
    sub = processed[np.sort(order)]
    out = AnnDataType(X=sub.X.copy(), obs=sub.obs[cols].copy(), var=pd.DataFrame(index=processed.var_names.copy()))
    out.obs["_key"] = key[np.sort(order)]
    return out


def _pool(a: AnnData | None, b: AnnData | None, keep: int) -> AnnData | None:
    """Merge two subsamples, keeping the `keep` smallest keys."""
    if a is None or b is None:
        return a if b is None else b
    import anndata as ad

    both = ad.concat([a, b], merge="first")
    if both.n_obs <= keep:
        return both
    order = np.sort(np.argsort(both.obs["_key"].to_numpy(), kind="stable")[:keep])
    return both[order].copy()


def _process(pipe: FeaturePipeline, adata: AnnData, *, coverage: bool = False, keep: int = 0) -> _Part:
    """QC -> normalise -> annotate -> score -> per-patient statistics for one chunk (usually one sample)."""
    t0 = time.perf_counter()
    for col in (keys.PATIENT, keys.SAMPLE):
        if col not in adata.obs:
            msg = (
                f"Column '{col}' not in the cells' obs (have: {', '.join(map(str, adata.obs.columns[:12]))}). "
                f"Map it when reading (read_kwargs={{'{'patient_col' if col == keys.PATIENT else 'sample_col'}': ...}})."
            )
            raise DataSchemaError(msg)
    report = pipe.check_genes(adata.var_names) if coverage else None  # process() checks every chunk itself
    processed = pipe.process(adata)
    stats = pipe.stats(processed)
    cells = _subsample(processed, keep)
    obs_in = adata.obs[[keys.SAMPLE, keys.PATIENT]].astype(str)
    n_in = obs_in.groupby(keys.SAMPLE, sort=False).size()
    n_kept = processed.obs[keys.SAMPLE].astype(str).value_counts()
    del processed
    seconds = time.perf_counter() - t0
    samples = pd.DataFrame(
        {
            keys.PATIENT: obs_in.drop_duplicates(keys.SAMPLE).set_index(keys.SAMPLE)[keys.PATIENT],
            "n_cells_in": n_in,
            "n_cells_kept": n_kept.reindex(n_in.index, fill_value=0),
            "seconds": seconds * n_in / n_in.sum(),
        }
    )
    samples.index.name = keys.SAMPLE
    # One row per sample: its patient, label and the attributes (tissue, timepoint, inflamed) that the mixed-sample
    # check reads.
    extra = [c for c in (keys.RESPONSE, keys.TISSUE, keys.TIMEPOINT, keys.INFLAMED) if c in adata.obs]
    labels = adata.obs[[keys.PATIENT, keys.SAMPLE, *extra]].drop_duplicates().reset_index(drop=True)
    return _Part(stats=stats, samples=samples, labels=labels, coverage=report, cells=cells)


def _merge(parts: list[_Part], *, keep: int = 0) -> _Part:
    from biomarkers.features import combine_stats

    if not parts:
        msg = "No samples to process: the source yielded no cells. Check the path (or the chunks) given."
        raise DataSchemaError(msg)
    labels = pd.concat([p.labels for p in parts], ignore_index=True)
    return _Part(
        stats=combine_stats([p.stats for p in parts]),
        samples=pd.concat([p.samples for p in parts]),
        labels=labels.astype(str).where(labels.notna()).drop_duplicates().reset_index(drop=True),
        coverage=next((p.coverage for p in parts if p.coverage is not None), None),
        cells=functools.reduce(lambda a, b: _pool(a, b, keep), [p.cells for p in parts], None),
    )


# -- worker entry points (module level, so Dask can pickle them) ---------------------------------------------------------
def prepare_worker() -> int:
    """Import the pipeline's dependencies, then freeze them out of garbage collection (workers we started only)."""
    import scanpy  # noqa: F401  # the import a first task would otherwise pay

    from biomarkers.preprocess import normalize  # noqa: F401
    from biomarkers.signatures import score_signatures  # noqa: F401

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _collect() -> None:
    # Every AnnData is in a reference cycle (its aligned mappings point back to it), so a finished sample's matrices
    # wait for the cyclic garbage collector; collecting after each sample keeps peak memory at about one sample
    # (1.1 vs 1.7 GB at 100k cells). With long-lived objects frozen (see _frozen_gc) a collection takes milliseconds.
    gc.collect()


@contextmanager
def _frozen_gc() -> Iterator[Callable[[], None]]:
    """Yield a function that freezes the objects alive now (imports, the source's obs) out of later collections.

    A full collection walks every tracked object: about 0.1 s per sample with scanpy loaded and a million-cell
    ``obs`` open, 20 s over 200 samples. Frozen objects are skipped; they are unfrozen on exit.
    """
    frozen = False

    def freeze() -> None:
        nonlocal frozen
        if not frozen and gc.get_freeze_count() == 0:  # leave a caller's own freeze alone
            gc.freeze()
            frozen = True

    try:
        yield freeze
    finally:
        if frozen:
            gc.unfreeze()


def task_anndata(pipe: FeaturePipeline, adata: AnnData, *, coverage: bool = False, keep: int = 0) -> _Part:
    """Process one in-memory chunk."""
    part = _process(pipe, adata, coverage=coverage, keep=keep)
    _collect()
    return part


def task_h5ad(
    pipe: FeaturePipeline, ref: src.H5adSample, var: pd.DataFrame, *, coverage: bool = False, keep: int = 0
) -> _Part:
    """Read one sample's rows from an h5ad and process them."""
    part = _process(pipe, ref.load(var), coverage=coverage, keep=keep)
    _collect()
    return part


def task_ref(pipe: FeaturePipeline, ref: Any, *, coverage: bool = False, keep: int = 0) -> _Part:
    """Load a 10x library (or every sample of a whole file) and process it."""
    if isinstance(ref, src.WholeFile):
        return _merge(_serial(pipe, ref.load_all(), None, coverage=coverage, keep=keep), keep=keep)
    part = _process(pipe, ref.load(), coverage=coverage, keep=keep)
    _collect()
    return part


# -- serial and Dask drivers -------------------------------------------------------------------------------------------
def _serial(
    pipe: FeaturePipeline,
    chunks: Iterator[AnnData],
    progress: Progress | None,
    *,
    coverage: bool = True,
    keep: int = 0,
) -> list[_Part]:
    parts: list[_Part] = []
    pool = None  # the cell subsample so far: merged as samples finish, so at most `keep` cells are held
    with _frozen_gc() as freeze:
        for adata in chunks:
            if adata.n_obs == 0:
                continue
            part = _process(pipe, adata, coverage=coverage and not parts, keep=keep)
            pool, part.cells = _pool(pool, part.cells, keep), None
            del adata
            _collect()
            freeze()  # after the first sample: the reader's metadata and the imports are in memory by now
            if progress is not None:
                progress.update(part)
            parts.append(part)
    if parts:
        parts[0].cells = pool
    return parts


def _gather_in_order(futures: list[Any], progress: Progress, parts: list[_Part | None], *, keep: int = 0) -> None:
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    pool = None
    try:
        for fut in as_completed(futures):
            part = fut.result()  # re-raises a worker's error (e.g. DataSchemaError) here
            pool, part.cells = _pool(pool, part.cells, keep), None
            parts[index[fut.key]] = part
            progress.update(part)
            fut.release()
        first = next((p for p in parts if p is not None), None)
        if first is not None:
            first.cells = pool
    except BaseException:
        for fut in futures:  # a caller's long-lived client must not keep computing the rest
            fut.cancel()
        raise


def _on_cluster(
    pipe: FeaturePipeline,
    source: Any,
    read_kwargs: Mapping[str, Any],
    *,
    client: Any,
    progress_show: bool | None,
    own_workers: bool = False,
    keep: int = 0,
) -> list[_Part]:
    from anndata import AnnData

    if own_workers:
        client.run(prepare_worker)
    [pipe_f] = client.scatter([pipe], broadcast=True)
    if isinstance(source, str | Path):
        refs, var = src.path_refs(Path(source), read_kwargs)
        progress = Progress(total=len(refs) if var is not None else None, show=progress_show)
        try:
            if var is not None:
                [var_f] = client.scatter([var], broadcast=True)
                futures = [
                    client.submit(task_h5ad, pipe_f, r, var_f, coverage=i == 0, keep=keep, pure=False)
                    for i, r in enumerate(refs)
                ]
            else:
                futures = [
                    client.submit(task_ref, pipe_f, r, coverage=i == 0, keep=keep, pure=False) for i, r in enumerate(refs)
                ]
            parts: list[_Part | None] = [None] * len(futures)
            _gather_in_order(futures, progress, parts, keep=keep)
        finally:
            progress.close()
        return [p for p in parts if p is not None]
    # In-memory data: scatter one chunk at a time, with a few in flight, so workers never hold the whole cohort.
    from distributed import wait

    chunks = src.split_by_sample(source) if isinstance(source, AnnData) else iter(source)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    progress = Progress(total=None, show=progress_show)
    futures, parts_all = [], []
    try:
        for chunk in chunks:
            if chunk.n_obs == 0:
                continue
            [chunk_f] = client.scatter([chunk])
            futures.append(client.submit(task_anndata, pipe_f, chunk_f, coverage=not futures, keep=keep, pure=False))
            del chunk, chunk_f
            if sum(not f.done() for f in futures) >= 2 * n_workers:
                wait([f for f in futures if not f.done()], return_when="FIRST_COMPLETED")
        parts_all = [None] * len(futures)
        _gather_in_order(futures, progress, parts_all, keep=keep)
    finally:
        progress.close()
    return [p for p in parts_all if p is not None]


def sample_stats(
    pipe: FeaturePipeline,
    source: str | Path | AnnData | Iterable[AnnData],
    *,
    scheduler: str | Any | None = None,
    n_workers: int = 2,
    progress: bool | None = None,
    read_kwargs: Mapping[str, Any] | None = None,
    keep_cells: int = 0,
) -> SampleStats:
    """Run the feature pipeline one sample at a time and add up per-patient statistics.

    Each sample goes through ``pipe.process`` (QC, normalisation, annotation, AQP9 call, compartment signature
    scores, all per sample) and ``pipe.stats``; the statistics are sums, so :func:`biomarkers.features.combine_stats`
    adds them up exactly and ``pipe.finalize`` gives the same patient table as ``pipe.transform`` on the whole cohort.
    Peak memory is set by the largest sample, not the cohort.

    Parameters
    ----------
    pipe
        The frozen feature pipeline.
    source
        A path (``.h5ad``, also larger than memory; a 10x file, folder or GEO series folder; a folder of ``.h5ad``
        files), an in-memory (or backed) AnnData of raw counts, or an iterable of AnnData chunks (each one or more
        whole samples).
    scheduler
        None: in this process. ``'local'``: a local Dask cluster of `n_workers` single-threaded processes on
        127.0.0.1. ``'tcp://HOST:PORT'``: a running Dask scheduler. A ``distributed.Client`` is used as is. One task
        per sample: from a path each worker reads its own sample; in-memory samples are scattered one by one.
    n_workers
        Worker processes for ``scheduler='local'``.
    progress
        Show a per-sample progress bar with cells/s (tqdm); None: on a TTY.
    keep_cells
        Also keep a uniform random subsample of this many processed cells (for the UMAP plot), merged as samples
        finish so memory stays bounded; 0: none.
    read_kwargs
        Options for :func:`biomarkers.io.iter_samples` when `source` is a path (``kind``, ``obs_map``,
        ``patient_col``, ``sample_col``, ``label_col``, ``positive_label``, ``negative_label``, ``label_map``,
        ``sample_sheet``, ``gene_map``, ``allow_non_integer``).

    Returns
    -------
    A :class:`SampleStats`.

    Raises
    ------
    ImportError
        A scheduler is given but dask.distributed is not installed (``pip install 'biomarkers[dask]'``).
    DataSchemaError
        A sample cannot be read or processed (the first error, re-raised from the worker).
    """
    from biomarkers.compute._dask import dask_client

    t0 = time.perf_counter()
    kw = src.check_read_kwargs(read_kwargs)
    if kw and not isinstance(source, str | Path):
        logger.warning("sample_stats: read_kwargs apply to paths only; ignored for %s", type(source).__name__)
    if scheduler is None:
        prog = Progress(total=None, show=progress)
        try:
            parts = _serial(pipe, src.iter_source(source, kw), prog, keep=keep_cells)
        finally:
            prog.close()
    else:
        with dask_client(scheduler, n_workers=n_workers) as client:
            parts = _on_cluster(
                pipe, source, kw, client=client, progress_show=progress, own_workers=scheduler == "local", keep=keep_cells
            )
    merged = _merge(parts, keep=keep_cells)
    seconds = time.perf_counter() - t0
    samples = merged.samples
    n_in, n_kept = int(samples["n_cells_in"].sum()), int(samples["n_cells_kept"].sum())
    where = "in process" if scheduler is None else f"on Dask ({scheduler if isinstance(scheduler, str) else 'client'})"
    logger.info(
        "sample_stats: %d samples, %d -> %d cells, %d patients %s in %.1f s (%s cells/s)",
        len(samples), n_in, n_kept, len(merged.stats), where, seconds, f"{n_in / max(seconds, 1e-9):,.0f}",
    )  # fmt: skip
    return SampleStats(
        stats=merged.stats,
        samples=samples,
        labels=merged.labels,
        coverage=merged.coverage if merged.coverage is not None else pd.DataFrame(),
        seconds=seconds,
        cells=merged.cells,
    )


def transform_samples(
    pipe: FeaturePipeline,
    source: str | Path | AnnData | Iterable[AnnData],
    *,
    scheduler: str | Any | None = None,
    n_workers: int = 2,
    progress: bool | None = None,
    read_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Raw-count cells -> patients x features, one sample at a time (in process or on Dask).

    The same table as ``pipe.transform(adata)`` on the whole cohort (to float precision), in memory bounded by
    the largest sample. Arguments are as in :func:`sample_stats`.

    Returns
    -------
    Patients (index ``patient_id``) x features.

    Examples
    --------
    >>> import numpy as np
    >>> import biomarkers as bm
    >>> from biomarkers.compute import transform_samples
    >>> from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
    >>> from biomarkers.signatures import load_gene_sets
    >>> adata = bm.simulate_cohort(n_patients=4, cells_per_patient=150, n_genes=500, seed=0)
    >>> pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))
    >>> streamed = transform_samples(pipe, adata)
    >>> whole = pipe.transform(adata)
    >>> bool(np.allclose(streamed, whole.loc[streamed.index], equal_nan=True))
    True
    """
    res = sample_stats(
        pipe, source, scheduler=scheduler, n_workers=n_workers, progress=progress, read_kwargs=read_kwargs
    )
    return pipe.finalize(res.stats)
