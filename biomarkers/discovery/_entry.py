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

    from anndata import AnnData

    from biomarkers.config import ExperimentConfig

logger = logging.getLogger("biomarkers")

CONFIG_SUFFIXES = (".yaml", ".yml")


def _cells_from_config(cfg: ExperimentConfig) -> tuple[AnnData, str]:
    """Load the config's cohort and process it exactly as :func:`biomarkers.prepare_cohort` does."""
    from biomarkers.cohort import load_cohort
    from biomarkers.features import FeaturePipeline
    from biomarkers.io import check_sample_mix, sample_table

    if cfg.data.kind != "single_cell":
        msg = (
            f"Experiment '{cfg.name}' has data.kind={cfg.data.kind!r}; discovery pseudobulks single cells per "
            "compartment. Point it at a single-cell cohort (data.kind: single_cell)."
        )
        raise ConfigError(msg)
    adata, _, source = load_cohort(cfg)
    # The same sample selection guard as training: DE must not pool baseline with post-treatment biopsies.
    check_sample_mix(sample_table(adata.obs), allow=cfg.data.allow_mixed_samples, source=Path(source).name)
    pipe = FeaturePipeline.from_config(cfg)
    # read_cohort has already applied data.label_map / positive_label: the labels are canonical here.
    return pipe.process(adata), source


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
        from biomarkers.config import load_config

        cfg = load_config(p, overrides=list(overrides or []))
        method = _deseq2_method(method, cfg)
        cells, source = _cells_from_config(cfg)
        # The cohort's labels are canonical (data.positive_label is the raw value read_cohort mapped), as in `run`.
        name, positive, negative, seed = cfg.name, k.NON_RESPONDER, k.RESPONDER, cfg.seed
        experiment = f"{cfg.name}-discovery"
    else:
        if overrides:
            msg = f"--set overrides apply to experiment configs, not to a cohort file ({p.name}). Drop --set."
            raise ConfigError(msg)
        from biomarkers.io import read_cohort

        cells, source = read_cohort(p), str(p)
        name, positive, negative, seed, experiment = p.stem, k.NON_RESPONDER, k.RESPONDER, 0, "discovery"
    out = Path(out_dir) if out_dir is not None else Path("discovery") / f"{name}-{stamp}"
    return discover(
        cells, out_dir=out, compartments=compartments, covariates=covariates, positive=positive, negative=negative,
        method=method, top_n=top_n, fdr=fdr, experiment_name=experiment, source=source, track=track, seed=seed,
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
    from biomarkers.cohort import prepare_cohort
    from biomarkers.models import patient_folds, spec_name

    method = _deseq2_method(method, cfg)
    cohort = prepare_cohort(cfg, adata=adata)
    if cohort.cells is None:
        msg = (
            "Nested discovery needs the processed cells in memory, but the experiment streams them "
            f"(compute.scheduler={cfg.compute.scheduler!r}, compute.stream={cfg.compute.stream}). "
            "Run it with --set compute.scheduler=null --set compute.stream=false."
        )
        raise ConfigError(msg)
    y = cohort.labels.sort_index()
    folds = patient_folds(y.to_numpy(), n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, seed=cfg.seed)
    out = {}
    for spec in (m.model_dump(exclude_none=True) for m in cfg.models):
        out[spec_name(spec)] = cv_with_discovery(
            cohort.cells, compartments=compartments, labels=y, folds=folds, model=spec, method=method, top_n=top_n,
            fdr=fdr, extra_features=cohort.features, n_boot=cfg.evaluation.n_boot if n_boot is None else n_boot,
            seed=cfg.seed,
        )  # fmt: skip
    return out
