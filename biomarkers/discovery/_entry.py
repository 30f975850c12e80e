"""``run_discovery``: an experiment config or a cohort file -> :func:`discover` (the CLI's one-call equivalent)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from biomarkers import _keys as k
from biomarkers._errors import ConfigError
from biomarkers.discovery._de import DEFAULT_COMPARTMENTS, DESEQ2_METHODS, Method
from biomarkers.discovery._discover import DiscoveryResult, discover
from biomarkers.discovery._nested import NestedCVResult, cv_with_discovery

if TYPE_CHECKING:
    from collections.abc import Sequence
    from os import PathLike
    from typing import Any

    from anndata import AnnData

    from biomarkers.config import ExperimentConfig
    from biomarkers.discovery._stream import PseudobulkSums

logger = logging.getLogger("biomarkers")

CONFIG_SUFFIXES = (".yaml", ".yml")


def _check_single_cell(cfg: ExperimentConfig) -> None:
    if cfg.data.kind != "single_cell":
        msg = (
            f"Experiment '{cfg.name}' has data.kind={cfg.data.kind!r}; discovery pseudobulks single cells per "
            "compartment. Point it at a single-cell cohort (data.kind: single_cell)."
        )
        raise ConfigError(msg)


def _cells_from_config(cfg: ExperimentConfig) -> tuple[AnnData, str, str | None]:
    """Load the config's cohort and process it exactly as :func:`biomarkers.prepare_cohort` does.

    Returns the cells, their source and the input file's digest (None for a simulated cohort).
    """
    from biomarkers.cohort import load_cohort
    from biomarkers.features import FeaturePipeline
    from biomarkers.io import check_sample_mix, sample_table

    _check_single_cell(cfg)
    adata, digest, source = load_cohort(cfg)
    # The same sample selection guard as training: DE must not pool baseline with post-treatment biopsies.
    check_sample_mix(sample_table(adata.obs), allow=cfg.data.allow_mixed_samples, source=Path(source).name)
    pipe = FeaturePipeline.from_config(cfg)
    # read_cohort has already applied data.label_map / positive_label: the labels are canonical here.
    return pipe.process(adata), source, digest if cfg.data.path is not None else None


def _sums_from_config(
    cfg: ExperimentConfig, *, compartments: Sequence[str], covariates: Sequence[str], label_col: str = k.RESPONSE
) -> PseudobulkSums:
    """Stream the config's cohort file one sample at a time (as :func:`_cells_from_config` processes it whole)."""
    from biomarkers.cohort import _read_kwargs
    from biomarkers.discovery._stream import stream_pseudobulk
    from biomarkers.features import FeaturePipeline
    from biomarkers.io import check_sample_mix

    _check_single_cell(cfg)
    path = Path(cfg.data.path)  # type: ignore[arg-type]
    sums = stream_pseudobulk(
        path, pipe=FeaturePipeline.from_config(cfg), compartments=compartments, covariates=covariates,
        label_col=label_col, read_kwargs=_read_kwargs(cfg), scheduler=cfg.compute.scheduler,
        n_workers=cfg.compute.n_workers,
    )  # fmt: skip
    # The same guard as in memory, on the samples seen (streaming can only check them once read).
    check_sample_mix(sums.samples, allow=cfg.data.allow_mixed_samples, source=path.name)
    return sums


def _where(scheduler: Any, n_workers: int) -> str:
    if scheduler is None:
        return "streaming one sample at a time, in process"
    workers = f", {n_workers} workers" if scheduler == "local" else ""
    return f"streaming one sample at a time on Dask ({scheduler}{workers})"


def _deseq2_method(method: Method, cfg: ExperimentConfig) -> Method:
    """``deseq2`` becomes the experiment's ``discovery.method`` (``deseq2`` or the opt-in ``deseq2_fast``)."""
    return cfg.discovery.method if method == "deseq2" else method


def run_discovery(
    path: str | PathLike[str],
    *,
    out_dir: str | PathLike[str] | None = None,
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    covariates: Sequence[str] = (k.BATCH,),
    method: Method = "deseq2",
    fdr: float = 0.05,
    top_n: int = 25,
    overrides: Sequence[str] | None = None,
    track: bool = True,
    stream: bool | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
) -> DiscoveryResult:
    """Run :func:`discover` on an experiment's cohort (a ``.yaml`` config) or on a cohort file (h5ad, 10x, ...).

    Parameters
    ----------
    path
        Experiment YAML (its data, preprocessing, labels and seed are used; the MLflow experiment is
        ``<name>-discovery``) or a file readable by :func:`biomarkers.read_cohort` (experiment ``discovery``).
    out_dir
        Output folder; default ``discovery/<name>-<UTC timestamp>``.
    compartments, covariates, method, fdr, top_n, track
        As in :func:`discover`. With an experiment YAML, ``method='deseq2'`` is fitted as its ``discovery.method``
        says (``deseq2``: PyDESeq2's own inference, the default; ``deseq2_fast``: the vectorised one).
    overrides
        ``key=value`` config overrides (``--set``), for a YAML ``path`` only.
    stream
        Read a single-cell file one sample at a time (:func:`stream_pseudobulk`; same results, memory bounded by
        one sample plus the pseudobulk tables) or whole into memory. None: the config's ``compute.stream``
        (default true); streaming for a cohort file. A simulated cohort is always in memory.
    scheduler, n_workers
        Process the samples on Dask (``'local'`` or ``'tcp://HOST:PORT'``, implies streaming) instead of in this
        process; default: the config's ``compute.scheduler`` / ``compute.n_workers`` (none / 2).

    Returns
    -------
    The :class:`DiscoveryResult`.
    """
    p = Path(path)
    if method in DESEQ2_METHODS:  # before reading and processing the cohort, not after
        from biomarkers._optional import require

        require("pydeseq2", "discover", purpose="biomarkers discover (method deseq2)")
    stamp = datetime.now(tz=UTC).strftime("%Y%m%d-%H%M%S")
    if p.suffix.lower() in CONFIG_SUFFIXES:
        from biomarkers.cohort import _streams
        from biomarkers.config import load_config

        compute = [f"compute.scheduler={scheduler}"] if scheduler is not None else []
        compute += [f"compute.n_workers={n_workers}"] if n_workers is not None else []
        compute += [f"compute.stream={str(stream).lower()}"] if stream is not None else []
        cfg = load_config(p, overrides=[*(overrides or []), *compute])  # validated like the config's own keys
        method = _deseq2_method(method, cfg)
        data: AnnData | PseudobulkSums
        if cfg.data.path is not None and _streams(cfg):
            where = _where(cfg.compute.scheduler, cfg.compute.n_workers)
            logger.info("discover: %s, %s", Path(cfg.data.path).name, where)
            data = _sums_from_config(cfg, compartments=compartments, covariates=covariates)
            source, digest = str(cfg.data.path), data.digest
        else:
            if cfg.compute.scheduler is not None:
                logger.warning(
                    "discover: the simulated cohort is in memory already; processing it in process, not on Dask (%s)",
                    cfg.compute.scheduler,
                )
            data, source, digest = _cells_from_config(cfg)
            logger.info("discover: %s in memory (whole cohort), in process", source)
        # The cohort's labels are canonical (data.positive_label is the raw value read_cohort mapped), as in `run`.
        name, positive, negative, seed = cfg.name, k.NON_RESPONDER, k.RESPONDER, cfg.seed
        experiment = f"{cfg.name}-discovery"
    else:
        if overrides:
            msg = f"--set overrides apply to experiment configs, not to a cohort file ({p.name}). Drop --set."
            raise ConfigError(msg)
        from biomarkers.cohort import file_digest

        if scheduler is not None or stream is not False:
            from biomarkers.discovery._stream import stream_pseudobulk

            logger.info("discover: %s, %s", p.name, _where(scheduler, n_workers or 2))
            data = stream_pseudobulk(
                p, compartments=compartments, covariates=covariates, scheduler=scheduler, n_workers=n_workers or 2
            )
            digest = data.digest
        else:
            from biomarkers.io import read_cohort

            data, digest = read_cohort(p), file_digest(p)
            logger.info("discover: %s in memory (whole cohort), in process", p.name)
        source = str(p)
        name, positive, negative, seed, experiment = p.stem, k.NON_RESPONDER, k.RESPONDER, 0, "discovery"
    out = Path(out_dir) if out_dir is not None else Path("discovery") / f"{name}-{stamp}"
    return discover(
        data, out_dir=out, compartments=compartments, covariates=covariates, positive=positive, negative=negative,
        method=method, top_n=top_n, fdr=fdr, experiment_name=experiment, source=source, digest=digest, track=track,
        seed=seed,
    )  # fmt: skip


def cv_experiment_with_discovery(
    cfg: ExperimentConfig,
    *,
    compartments: Sequence[str] = ("stroma",),
    method: Method = "ttest",
    top_n: int = 25,
    fdr: float | None = None,
    adata: AnnData | None = None,
    n_boot: int | None = None,
) -> dict[str, NestedCVResult]:
    """Cross-validate an experiment's models with discovered signatures added as features, discovered per fold.

    The experiment's own features (:func:`biomarkers.prepare_cohort`, computed without labels) are kept; for
    each model of ``cfg.models`` a :class:`NestedDiscoveryFeature` step in front of it re-runs discovery on every
    training fold (the config's ``cv`` folds and seed), adding ``disc__<compartment>`` scores. This is the honest
    way to evaluate "the experiment plus a discovered signature"; a set discovered on the whole cohort and loaded
    through ``signature_files`` would be scored with every patient's label already used.

    Parameters
    ----------
    cfg
        The experiment (single-cell).
    compartments, method, top_n, fdr
        Discovery settings (see :class:`NestedDiscoveryFeature`); ``method='deseq2'`` follows ``discovery.method``.
    adata
        Cells to use instead of ``cfg.data``.
    n_boot
        Bootstrap resamples of the CIs (default ``cfg.evaluation.n_boot``).

    Returns
    -------
    Model name -> :class:`NestedCVResult`.
    """
    from biomarkers.cohort import _streams, prepare_cohort
    from biomarkers.models import patient_folds, spec_name

    method = _deseq2_method(method, cfg)
    cohort = prepare_cohort(cfg, adata=adata)
    cells: AnnData | PseudobulkSums | None = cohort.cells
    if adata is None and cfg.data.path is not None and _streams(cfg):
        # A streamed cohort keeps only a plotting subsample of its cells: the folds' DE needs every cell's counts,
        # so the file is streamed again for its pseudobulk sums (one sample in memory at a time).
        logger.info(
            "cv_experiment_with_discovery: pseudobulk of %s, %s",
            Path(cfg.data.path).name,
            _where(cfg.compute.scheduler, cfg.compute.n_workers),
        )
        cells = _sums_from_config(cfg, compartments=compartments, covariates=())
    if cells is None:
        msg = (
            "Nested discovery needs the processed cells, but in-memory cells sent to Dask are not kept "
            f"(compute.scheduler={cfg.compute.scheduler!r}). Run it with --set compute.scheduler=null."
        )
        raise ConfigError(msg)
    y = cohort.labels.sort_index()
    folds = patient_folds(y.to_numpy(), n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, seed=cfg.seed)
    out = {}
    for spec in (m.model_dump(exclude_none=True) for m in cfg.models):
        out[spec_name(spec)] = cv_with_discovery(
            cells, compartments=compartments, labels=y, folds=folds, model=spec, method=method, top_n=top_n,
            fdr=fdr, extra_features=cohort.features, n_boot=cfg.evaluation.n_boot if n_boot is None else n_boot,
            seed=cfg.seed,
        )  # fmt: skip
    return out
