"""``discover``: pseudobulk DE per compartment -> tables, volcano plots, a gene-set file, an MLflow run."""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys as k
from biomarkers._errors import DataSchemaError
from biomarkers.discovery._compartments import differential_expression
from biomarkers.discovery._de import DEFAULT_COMPARTMENTS, Method
from biomarkers.discovery._report import (
    KNOWN_GENES,
    KNOWN_SETS,
    SET_PREFIX,
    discovered_gene_sets,
    known_signature_ranks,
    significant,
    truth_metrics,
    truth_sets,
    volcano_figure,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from os import PathLike

    from anndata import AnnData

    from biomarkers.discovery._stream import PseudobulkSums
    from biomarkers.features import FeaturePipeline
    from biomarkers.signatures import GeneSet

logger = logging.getLogger("biomarkers")

GENE_SET_FILE = "discovered_gene_sets.tsv"


@dataclass
class DiscoveryResult:
    """What :func:`discover` found and wrote.

    Attributes
    ----------
    tables
        Compartment -> DE table (``gene, log2FC, lfcSE, stat, pvalue, padj, baseMean, rank``).
    summary
        One row per tested compartment: patients, genes tested, significant (up/down), top genes, covariates
        used, seconds, and precision/recall when the truth is known.
    known
        Where the known signatures and genes rank (:func:`known_signature_ranks`).
    truth
        Precision/recall against ``uns['truth']`` (:func:`truth_metrics`), or None.
    gene_sets
        Discovered sets (``DISCOVERED_<COMPARTMENT>_UP``).
    gene_set_path
        The TSV with those sets (None when nothing was significant); load it with
        ``load_gene_sets([...], path=gene_set_path)`` or list it in a config's ``signature_files``.
    out_dir, files
        Where the outputs are.
    skipped
        Compartments not tested (too few patients per group).
    experiment_name, run_id
        The MLflow run (None when not tracked).
    seconds
        Wall time; ``timings`` splits it.
    """

    tables: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    known: pd.DataFrame
    truth: pd.DataFrame | None
    gene_sets: dict[str, GeneSet]
    gene_set_path: Path | None
    out_dir: Path
    files: list[Path]
    skipped: list[str]
    experiment_name: str | None
    run_id: str | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def counts_digest(adata: AnnData) -> str:
    """sha256 of the raw counts (``layers['counts']`` or ``X``), to tie outputs to their input."""
    from scipy import sparse

    x = adata.layers.get(k.COUNTS, adata.X)
    x = x.tocsr() if sparse.issparse(x) else sparse.csr_matrix(np.asarray(x))
    h = hashlib.sha256(np.ascontiguousarray(x.data).tobytes())
    h.update(np.ascontiguousarray(x.indices).tobytes())
    return h.hexdigest()


def default_pipeline(*, seed: int | None = 0) -> FeaturePipeline:
    """Return the :class:`biomarkers.features.FeaturePipeline` that :func:`annotate_cells` runs (no labels used)."""
    from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
    from biomarkers.signatures import load_gene_sets

    return FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)), seed=seed)


def annotate_cells(adata: AnnData, *, seed: int | None = 0) -> AnnData:
    """Return cells with ``obs['compartment']``, processing them first when they are not annotated.

    Unannotated cells go through the default :class:`biomarkers.features.FeaturePipeline` (QC, normalisation,
    annotation), which uses no labels; annotated cells are returned as they are.
    """
    if k.COMPARTMENT in adata.obs:
        return adata
    logger.info("discover: obs['compartment'] missing; running QC, normalisation and annotation first")
    return default_pipeline(seed=seed).process(adata)


def _summary(tables: dict[str, pd.DataFrame], truth: pd.DataFrame | None, *, fdr: float) -> pd.DataFrame:
    rows = []
    for comp, t in tables.items():
        rows.append(
            {
                "compartment": comp,
                "n_patients": t.attrs.get("n_patients"),
                "n_non_responders": t.attrs.get("n_positive"),
                "n_tested": len(t),
                "n_significant": len(significant(t, fdr=fdr)),
                "n_up": len(significant(t, fdr=fdr, direction="up")),
                "n_down": len(significant(t, fdr=fdr, direction="down")),
                "top_genes": ",".join(t["gene"].head(5)),
                "covariates": ",".join(t.attrs.get("covariates", [])),
                "seconds": round(float(t.attrs.get("seconds", np.nan)), 2),
            }
        )
    out = pd.DataFrame(rows)
    if truth is not None and len(out):
        out = out.merge(truth[["compartment", "precision", "recall"]], on="compartment", how="left")
    return out


def _write_outputs(
    out_dir: Path,
    *,
    tables: dict[str, pd.DataFrame],
    summary: pd.DataFrame,
    known: pd.DataFrame,
    truth: pd.DataFrame | None,
    truth_record: dict[str, Any] | None,
    gene_sets: dict[str, GeneSet],
    fdr: float,
) -> tuple[list[Path], Path | None]:
    from biomarkers._atomic import write_atomic, write_csv
    from biomarkers.signatures import load_gene_sets, write_gene_sets

    files = [write_csv(t, out_dir / "de" / f"{comp}.csv") for comp, t in tables.items()]
    for comp, t in tables.items():
        planted = set().union(*truth_sets(truth_record, comp)) if truth_record is not None else None
        fig = volcano_figure(t, compartment=comp, fdr=fdr, planted=planted)
        files.append(
            write_atomic(
                out_dir / "plots" / f"volcano_{comp}.png", lambda p, f=fig: f.savefig(p, dpi=110, format="png")
            )
        )
    files.append(write_csv(summary, out_dir / "summary.csv"))
    files.append(write_csv(known, out_dir / "known_signatures.csv"))
    if truth is not None:
        files.append(write_csv(truth, out_dir / "truth_metrics.csv"))
    path = None
    if gene_sets:
        path = write_atomic(out_dir / "gene_sets" / GENE_SET_FILE, lambda p: write_gene_sets(p, gene_sets=gene_sets))
        load_gene_sets(list(gene_sets), path=path)  # the file must load exactly as an experiment would load it
        files.append(path)
    return files, path


def discover(
    adata: AnnData | PseudobulkSums,
    *,
    out_dir: str | PathLike[str],
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    covariates: Sequence[str] = (k.BATCH,),
    label_col: str = k.RESPONSE,
    positive: str = k.NON_RESPONDER,
    negative: str | None = k.RESPONDER,
    method: Method = "deseq2",
    top_n: int = 25,
    fdr: float = 0.05,
    min_patients_per_group: int = 3,
    min_cells: int = 10,
    min_counts: int = 10,
    min_expressed: int = 3,
    known_sets: Sequence[str] = KNOWN_SETS,
    known_genes: Sequence[str] = KNOWN_GENES,
    set_prefix: str = SET_PREFIX,
    experiment_name: str = "discovery",
    source: str | None = None,
    digest: str | None = None,
    track: bool = True,
    seed: int | None = 0,
) -> DiscoveryResult:
    """Find candidate biomarkers: pseudobulk DE (non-responders vs responders) per compartment, with outputs.

    Everything is computed and written to ``out_dir`` before an MLflow run is opened, so bad input never leaves
    a run behind. Outputs: ``de/<compartment>.csv``, ``plots/volcano_<compartment>.png``, ``summary.csv``,
    ``known_signatures.csv``, ``truth_metrics.csv`` (simulated data) and ``gene_sets/discovered_gene_sets.tsv``
    (sets ``<set_prefix>_<COMPARTMENT>_UP``: genes with ``padj < fdr`` up in non-responders, at most ``top_n``,
    in the package's ``set, gene, role, source`` format; list it under ``signature_files:`` of a config).

    A discovered set is chosen with this cohort's labels: evaluating it on the same cohort (e.g. as a feature of
    ``biomarkers run``) is optimistic. Use :func:`cv_with_discovery` for an honest estimate, or another cohort.

    Parameters
    ----------
    adata
        Cells with raw counts; annotated (``obs['compartment']``) or raw (then processed with the default
        :class:`biomarkers.features.FeaturePipeline`). Or a :class:`PseudobulkSums` of a cohort streamed sample by
        sample (:func:`stream_pseudobulk`), which gives the same results in bounded memory.
    out_dir
        Folder for the outputs (created).
    compartments, covariates, label_col, positive, negative, method, min_patients_per_group, min_cells, min_counts, min_expressed
        See :func:`differential_expression`.
    top_n, fdr
        Discovered-set size and significance threshold.
    known_sets, known_genes
        Published sets and genes to locate in the results.
    set_prefix
        Prefix of the discovered set names.
    experiment_name
        MLflow experiment (``<config name>-discovery`` from the CLI).
    source
        Where the cells came from (file or simulation call), recorded in the gene sets and the run.
    digest
        sha256 recorded as the run's ``data_digest`` and in the gene sets; default: of the raw counts
        (:func:`counts_digest`), or the :class:`PseudobulkSums`' file digest.
    track
        Log an MLflow run.
    seed
        Seed of the processing step.

    Returns
    -------
    A :class:`DiscoveryResult`. The MLflow run gets params, metrics ``n_tested_<c>``, ``n_significant_<c>``,
    ``n_up_<c>`` (and ``precision_<c>``, ``recall_<c>``) and every output file as an artifact.

    Examples
    --------
    >>> import tempfile
    >>> import biomarkers as bm
    >>> from biomarkers import _celltypes as ct
    >>> from biomarkers.discovery import discover
    >>> adata = bm.simulate_cohort(n_patients=12, cells_per_patient=80, n_genes=400, seed=0)
    >>> adata.obs["compartment"] = adata.obs["true_cell_type"].map(ct.FINE_TO_MAJOR).map(ct.COMPARTMENT_OF)
    >>> res = discover(adata, out_dir=tempfile.mkdtemp(), compartments=["stroma"], method="ttest", min_cells=3, track=False)
    >>> list(res.summary["compartment"])
    ['stroma']
    """
    from biomarkers.discovery._stream import PseudobulkSums

    t0 = time.perf_counter()
    out = Path(out_dir)
    streamed = isinstance(adata, PseudobulkSums)
    cells = adata if streamed else annotate_cells(adata, seed=seed)
    t_annot = time.perf_counter()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = differential_expression(
            cells, compartments=compartments, covariates=covariates, label_col=label_col, positive=positive,
            negative=negative, method=method, min_patients_per_group=min_patients_per_group, min_cells=min_cells,
            min_counts=min_counts, min_expressed=min_expressed, seed=seed,
        )  # fmt: skip
    for w in caught:  # re-raise at the caller's level, once
        warnings.warn(str(w.message), w.category, stacklevel=2)
    skipped = [c for c in compartments if c not in tables]
    if not tables:
        msg = (
            f"No compartment could be tested ({', '.join(compartments)}): too few patients per response group with "
            f">= {min_cells} cells. Lower min_cells / min_patients_per_group, or check the labels."
        )
        raise DataSchemaError(msg)
    t_de = time.perf_counter()
    truth_record = adata.uns.get(k.TRUTH)
    truth = truth_metrics(tables, truth_record, fdr=fdr) if truth_record is not None else None
    from biomarkers.signatures import load_gene_sets

    known = known_signature_ranks(tables, gene_sets=load_gene_sets(list(known_sets)), genes=known_genes, fdr=fdr)
    if digest is None:
        digest = adata.digest if streamed else counts_digest(adata)
    stamp = datetime.now(tz=UTC)
    run_name = f"{experiment_name}-{stamp.strftime('%Y%m%d-%H%M%S')}"
    src = source or "in-memory AnnData"
    provenance = (
        f"biomarkers discover, run {run_name} ({stamp.strftime('%Y-%m-%d %H:%M UTC')}) on {src} "
        f"(counts sha256 {digest[:12]}); {method}, padj < {fdr}"
    )
    gene_sets = discovered_gene_sets(tables, top_n=top_n, fdr=fdr, source=provenance, prefix=set_prefix)
    summary = _summary(tables, truth, fdr=fdr)
    files, gs_path = _write_outputs(
        out,
        tables=tables,
        summary=summary,
        known=known,
        truth=truth,
        truth_record=truth_record,
        gene_sets=gene_sets,
        fdr=fdr,
    )
    t_out = time.perf_counter()
    timings = {"annotate_s": t_annot - t0, "de_s": t_de - t_annot, "report_s": t_out - t_de}
    if streamed:
        timings = {"stream_s": adata.seconds, **timings}
    params = {
        "method": method, "fdr": fdr, "top_n": top_n, "compartments": ",".join(compartments),
        "covariates": ",".join(covariates), "label_col": label_col, "positive": positive, "min_cells": min_cells,
        "min_counts": min_counts, "min_expressed": min_expressed, "min_patients_per_group": min_patients_per_group,
        "n_patients": _n_patients(cells, streamed=streamed), "seed": seed,
    }  # fmt: skip
    run_id = None
    if track:
        run_id = _log_run(
            experiment_name, run_name, params=params, summary=summary, truth=truth, files=files, out_dir=out,
            tags={"data_digest": digest, "data_source": src, "kind": "discovery"}, timings=timings,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    timings["total_s"] = seconds
    logger.info(
        "discover: %d compartment(s) tested, %d discovered set(s) -> %s (%.1f s)",
        len(tables),
        len(gene_sets),
        out,
        seconds,
    )
    return DiscoveryResult(
        tables=tables, summary=summary, known=known, truth=truth, gene_sets=gene_sets, gene_set_path=gs_path,
        out_dir=out, files=files, skipped=skipped, experiment_name=experiment_name if track else None, run_id=run_id,
        seconds=seconds, timings=timings,
    )  # fmt: skip


def _n_patients(cells: Any, *, streamed: bool) -> int:
    if streamed:
        return len(cells.patients)
    return int(cells.obs[k.PATIENT].nunique()) if k.PATIENT in cells.obs else -1


def _log_run(
    experiment_name: str,
    run_name: str,
    *,
    params: dict[str, Any],
    summary: pd.DataFrame,
    truth: pd.DataFrame | None,
    files: list[Path],
    out_dir: Path,
    tags: dict[str, str],
    timings: dict[str, float],
) -> str:
    import mlflow

    from biomarkers.tracking._run import _git_sha, _versions
    from biomarkers.tracking._store import get_or_create_experiment, setup_mlflow

    setup_mlflow()
    exp_id = get_or_create_experiment(experiment_name)
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
    try:
        mlflow.log_params({name: str(v)[:6000] for name, v in params.items()})
        mlflow.set_tags({**tags, "git_sha": _git_sha(), "bm.version": _versions()["biomarkers"]})
        metrics: dict[str, float] = {name: float(v) for name, v in timings.items()}
        for row in summary.itertuples(index=False):
            for m in ("n_tested", "n_significant", "n_up", "n_down"):
                metrics[f"{m}_{row.compartment}"] = float(getattr(row, m))
        if truth is not None:
            for row in truth.itertuples(index=False):
                for m in ("precision", "recall", "precision_planted"):
                    v = float(getattr(row, m))
                    if np.isfinite(v):
                        metrics[f"{m}_{row.compartment}"] = v
        mlflow.log_metrics(metrics)
        for f in files:
            rel = f.relative_to(out_dir).parent
            mlflow.log_artifact(str(f), artifact_path=None if str(rel) == "." else str(rel))
        mlflow.end_run(status="FINISHED")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    return run.info.run_id
