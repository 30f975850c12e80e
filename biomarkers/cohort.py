"""An experiment's cohort: read or simulate, process, and label patients (no MLflow here)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import pandas as pd
    from anndata import AnnData

    from biomarkers.config import ExperimentConfig
    from biomarkers.features import FeaturePipeline
    from biomarkers.io import ReadSpec

logger = logging.getLogger("biomarkers")


@dataclass
class Cohort:
    """Features and labels of an experiment's cohort, ready for :func:`biomarkers.models.evaluate_models`.

    Attributes
    ----------
    features
        Patients (or bulk samples) x features.
    labels
        0/1 per row of ``features`` (1 = the config's ``positive_label``).
    groups
        Patient per row when rows are samples (bulk), else None.
    kind
        ``'single_cell'``, ``'bulk'`` or ``'features'`` (a patient x feature table).
    pipeline
        The frozen single-cell feature pipeline (None for bulk).
    bulk
        Bulk feature settings (None for single-cell).
    cells
        Processed cells (single-cell), for plots.
    digest
        sha256 of the input file, or of the simulated counts.
    source
        Path of the input, or ``simulate_cohort(...)`` with its arguments.
    coverage
        Gene coverage of each gene set.
    read_spec
        The reader settings (:class:`biomarkers.io.ReadSpec`), stored with the model so predict reads alike.
    samples
        One row per sample kept: patient, tissue / timepoint / inflamed where known.
    model_kwargs
        Extra keyword arguments for :class:`biomarkers.tracking.BiomarkerModel` (e.g. clinical covariates and
        per-cohort standardisation settings), so the registered model re-applies them at predict time.
    cohorts
        Cohort name (text) per row of ``features`` (``data.cohort_col``); None when it is unset.
    split_features
        Under ``cv.strategy: leave_one_cohort_out`` with cells: ``f(train_positions) -> features`` rebuilt with the
        scoring reference fitted on the split's training patients only (None otherwise).
    """

    features: pd.DataFrame
    labels: pd.Series
    groups: pd.Series | None
    kind: str
    pipeline: FeaturePipeline | None
    bulk: dict[str, Any] | None
    cells: AnnData | None
    digest: str
    source: str
    coverage: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    read_spec: ReadSpec | None = None
    samples: pd.DataFrame | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    cohorts: pd.Series | None = None
    split_features: Callable[[np.ndarray], pd.DataFrame] | None = None


def file_digest(path: Path, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of every file under a folder (sorted by name)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def binary_labels(values: pd.Series, *, where: str) -> pd.Series:
    """Canonical labels (``responder`` / ``non_responder``) -> 0/1; unlabelled rows are dropped with a warning."""
    missing = values.isna()
    if missing.any():
        logger.warning("%d of %d rows have no label in %s and are left out", int(missing.sum()), len(values), where)
    mapped = values[~missing].astype(str)
    positive, allowed = K.NON_RESPONDER, {K.NON_RESPONDER, K.RESPONDER}
    bad = sorted(set(mapped) - allowed)
    if bad:
        msg = (
            f"Unknown label value(s) {bad[:5]} in {where} (expected {sorted(allowed)} after mapping). "
            "Set data.positive_label / data.negative_label, or map them with data.label_map."
        )
        raise DataSchemaError(msg)
    y = (mapped == positive).astype(int)
    counts = y.value_counts()
    if len(counts) < 2:
        msg = (
            f"Only one class in {where}: {int(counts.iloc[0])} x {'positive' if counts.index[0] == 1 else 'negative'} "
            f"(values found: {sorted(set(mapped))[:5]}). A classifier needs both classes: check data.label_col and data.positive_label."
        )
        raise DataSchemaError(msg)
    return y


def _patient_labels(obs: pd.DataFrame, cfg: ExperimentConfig) -> pd.Series:
    """One 0/1 label per patient from the cells' (or the streamed samples') ``obs``."""
    d = cfg.data
    if K.RESPONSE not in obs:
        msg = (
            f"Label column '{d.label_col}' not in the cohort (have: {', '.join(map(str, obs.columns[:12]))}). "
            "Set data.label_col in the experiment config."
        )
        raise DataSchemaError(msg)
    per_patient = obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].agg(lambda s: s.dropna().astype(str).unique().tolist())
    conflicting = per_patient[per_patient.map(len) > 1]
    if len(conflicting):
        msg = (
            f"Patient {conflicting.index[0]} has more than one label ({conflicting.iloc[0]}); "
            "a response label belongs to the patient. Fix data.label_col or the metadata."
        )
        raise DataSchemaError(msg)
    raw = per_patient.map(lambda v: v[0] if v else None)
    return binary_labels(raw, where=f"column '{d.label_col}'")


def load_cohort(cfg: ExperimentConfig) -> tuple[AnnData, str, str]:
    """Read (or simulate) the config's cohort as canonical AnnData; returns it, its digest and source."""
    d = cfg.data
    if d.path is None:
        from biomarkers.datasets import simulate_cohort

        s = d.simulate
        adata = simulate_cohort(
            n_patients=s.n_patients, cells_per_patient=s.cells_per_patient, n_genes=s.n_genes, effect_size=s.effect_size, seed=s.seed
        )
        x = adata.X.tocsr()
        h = hashlib.sha256(np.ascontiguousarray(x.data).tobytes())
        h.update(np.ascontiguousarray(x.indices).tobytes())
        args = ", ".join(f"{k}={v}" for k, v in s.model_dump().items())
        return adata, h.hexdigest(), f"simulate_cohort({args})"
    from biomarkers.io import read_cohort

    # read_cohort maps the user's columns and label values to the canonical ones (responder / non_responder).
    adata = read_cohort(d.path, **_read_kwargs(cfg), **_bulk_metadata(cfg))
    return adata, file_digest(Path(d.path)), str(d.path)


def read_spec(cfg: ExperimentConfig) -> ReadSpec:
    """Return the config's reader settings, shared by training (``read_cohort``, ``iter_samples``) and predict."""
    from biomarkers.io import ReadSpec

    return ReadSpec.from_config(cfg.data)


def _read_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    return read_spec(cfg).read_kwargs()


def _bulk_metadata(cfg: ExperimentConfig) -> dict[str, Any]:
    """``metadata_cols`` for a bulk table: numeric covariate / cohort columns are metadata, not genes."""
    from biomarkers.features._covariates import covariate_columns

    cols = covariate_columns(cfg)
    if cfg.data.kind != "bulk" or not cols or cfg.data.path is None:
        return {}
    from biomarkers.io import detect_kind
    from biomarkers.io._common import read_delimited
    from biomarkers.io._obs import resolve_obs_map

    path = Path(cfg.data.path)
    if (cfg.data.format or detect_kind(path)) != "bulk_table":
        return {}
    d = cfg.data
    mapping = resolve_obs_map(d.obs_map, patient_col=d.patient_col, sample_col=d.sample_col, label_col=d.label_col)
    header = set(map(str, read_delimited(path, nrows=0).columns))
    present = [mapping.get(c, c) for c in cols if mapping.get(c, c) in header]
    return {"metadata_cols": present} if present else {}


def _streamed_meta(cfg: ExperimentConfig, samples: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Per-patient covariates (``features.clinical``, ``data.cohort_col``) of a streamed input.

    The streamed sample table carries only labels and biopsy attributes, so the covariates are read from the
    file's metadata (obs only, no counts), or, for a single 10x library, from the clinical table joined to it.
    """
    import pandas as pd

    from biomarkers.features._clinical import patient_values
    from biomarkers.features._covariates import check_covariate_columns, covariate_columns

    cols = covariate_columns(cfg)
    if not cols:
        return pd.DataFrame(index=pd.Index(samples[K.PATIENT].astype(str).unique(), name=K.PATIENT))
    table = samples
    if any(c not in samples.columns for c in cols):
        from biomarkers.compute._sources import metadata_table

        meta = metadata_table(path, _read_kwargs(cfg))
        table = meta if meta is not None else _join_clinical(cfg, samples)
    check_covariate_columns(cfg, table.columns, where=path.name)
    return patient_values(table, cols, where=path.name)


def _join_clinical(cfg: ExperimentConfig, samples: pd.DataFrame) -> pd.DataFrame:
    """Return the streamed sample table with the clinical table (``data.labels``) joined, when there is one."""
    if cfg.data.labels is None:
        return samples
    from biomarkers.io._obs import LabelSpec, resolve_obs_map
    from biomarkers.io._read import obs_rules

    d = cfg.data
    mapping = resolve_obs_map(d.obs_map, patient_col=d.patient_col, sample_col=d.sample_col, label_col=d.label_col)
    labels = LabelSpec(label_map=dict(d.label_map), positive=d.positive_label, negative=d.negative_label)
    return obs_rules(None, d.labels).join(samples, mapping, labels=labels, source=Path(str(d.path)).name)


def _cell_meta(cfg: ExperimentConfig, obs: pd.DataFrame, *, where: str) -> pd.DataFrame:
    """Per-patient covariates from the cells' obs (after obs_map and the clinical-table join)."""
    import pandas as pd

    from biomarkers.features._clinical import patient_values
    from biomarkers.features._covariates import check_covariate_columns, covariate_columns

    cols = covariate_columns(cfg)
    if not cols:
        return pd.DataFrame(index=pd.Index(obs[K.PATIENT].astype(str).unique(), name=K.PATIENT))
    check_covariate_columns(cfg, obs.columns, where=where)
    return patient_values(obs, cols, where=where)


def _check_samples(samples: pd.DataFrame, cfg: ExperimentConfig, *, source: str) -> None:
    from biomarkers.io import check_sample_mix

    check_sample_mix(samples, allow=cfg.data.allow_mixed_samples, source=source)


def _streams(cfg: ExperimentConfig) -> bool:
    """Whether a single-cell file is read sample by sample (``compute.stream``, the default, or a Dask scheduler)."""
    return cfg.data.kind != "bulk" and (cfg.compute.scheduler is not None or cfg.compute.stream)


def _streamable(cfg: ExperimentConfig) -> bool:
    """Whether ``data.path`` is a single-cell input that streams; others are read whole, by the readers' own checks.

    A missing file, an unreadable one or a table in a single-cell experiment goes through ``read_cohort``, whose
    errors say what is wrong with the file.
    """
    from biomarkers.compute._sources import is_h5ad_folder
    from biomarkers.io import detect_kind
    from biomarkers.io._read import SINGLE_CELL_KINDS

    path = Path(cfg.data.path)  # type: ignore[arg-type]
    if is_h5ad_folder(path):
        return True
    try:
        kind = cfg.data.format or detect_kind(path)
    except DataSchemaError:
        return False
    return kind in SINGLE_CELL_KINDS


def _where(cfg: ExperimentConfig) -> str:
    s = cfg.compute.scheduler
    return "in process" if s is None else f"on Dask ({s}, {cfg.compute.n_workers} workers)" if s == "local" else f"on Dask ({s})"


def _pipeline(cfg: ExperimentConfig) -> FeaturePipeline:
    from biomarkers.features import FeaturePipeline

    return FeaturePipeline.from_config(cfg)


def _bulk_bridge(pipe: FeaturePipeline, var_names: Any) -> dict[str, Any] | None:
    """Bulk settings for a single-cell model whose ``pbz__<set>`` features can also be computed on bulk."""
    var = set(var_names) if var_names is not None else None
    bridge = {n: [g for g in gs if var is None or g in var] for n, gs in pipe.bridge_genes.items()}
    return {"gene_sets": bridge, "genes": []} if bridge else None


def _prepare_streaming(cfg: ExperimentConfig, *, t0: float) -> Cohort:
    """Features from ``data.path`` read one sample at a time: the cohort is never in memory whole.

    Labels come from the samples' metadata as they stream, so label problems are reported after the
    features are computed (``biomarkers run --dry-run`` checks them first).
    """
    from biomarkers.compute import sample_stats

    path = Path(cfg.data.path)  # type: ignore[arg-type]
    digest = file_digest(path)
    t_load = time.perf_counter() - t0
    pipe = _pipeline(cfg)
    t1 = time.perf_counter()
    logger.info("features: streaming %s one sample at a time %s", path.name, _where(cfg))
    res = sample_stats(
        pipe, path, scheduler=cfg.compute.scheduler, n_workers=cfg.compute.n_workers, read_kwargs=_read_kwargs(cfg),
        keep_cells=cfg.plots.umap_max_cells if cfg.plots.umap else 0,
    )  # fmt: skip
    _check_samples(res.labels, cfg, source=path.name)
    labels = _patient_labels(res.labels, cfg)
    pipe = pipe.fit_reference(res.stats)
    cells = res.cells
    if cells is not None:  # the UMAP subsample drawn while streaming, scored for the plot
        from biomarkers.features import score_by_compartment

        score_by_compartment(cells, reference=pipe.reference, plan=pipe.plan)
    return _single_cell_cohort(
        pipe.finalize(res.stats), labels, pipe, var_names=cells.var_names if cells is not None else None, cells=cells,
        digest=digest, source=str(path),
        coverage=res.coverage, timings={"load_s": t_load, "features_s": time.perf_counter() - t1},
        read_spec=read_spec(cfg), samples=res.labels,
        cfg=cfg, meta=_streamed_meta(cfg, res.labels, path), stats=res.stats,
    )  # fmt: skip


def _single_cell_cohort(
    features: pd.DataFrame,
    labels: pd.Series,
    pipe: FeaturePipeline,
    *,
    var_names: Any,
    cells: AnnData | None,
    digest: str,
    source: str,
    coverage: pd.DataFrame,
    timings: dict[str, float],
    read_spec: ReadSpec | None = None,
    samples: pd.DataFrame | None = None,
    cfg: ExperimentConfig,
    meta: pd.DataFrame,
    stats: pd.DataFrame,
) -> Cohort:
    """Keep the labelled patients that have features, add the covariates, and package a single-cell :class:`Cohort`."""
    from biomarkers.features._covariates import add_covariates

    features = features.loc[labels.index.intersection(features.index)]
    labels = labels.loc[features.index]
    features, cohorts, kwargs = add_covariates(cfg, features, meta, where=Path(source).name)
    return Cohort(
        features=features,
        labels=labels,
        groups=None,
        kind="single_cell",
        pipeline=pipe,
        bulk=_bulk_bridge(pipe, var_names),
        cells=cells,
        digest=digest,
        source=source,
        coverage=coverage,
        timings=timings,
        read_spec=read_spec,
        samples=samples,
        model_kwargs=kwargs,
        cohorts=cohorts,
        split_features=_loco_split_features(cfg, pipe, stats, features, cohorts),
    )


def _loco_split_features(
    cfg: ExperimentConfig, pipe: FeaturePipeline, stats: pd.DataFrame, features: pd.DataFrame, cohorts: pd.Series | None
) -> Callable[[np.ndarray], pd.DataFrame] | None:
    """Under leave-one-cohort-out, the scoring reference is refitted on each split's training cohorts."""
    if cfg.cv.strategy != "leave_one_cohort_out":
        return None
    from biomarkers.features._covariates import CLIN_PREFIX
    from biomarkers.features._splits import reference_split_features
    from biomarkers.features._standardize import standardize_per_cohort

    transform = None
    if cfg.features.standardize == "per_cohort":
        # Each cohort is standardised on its own rows: the held-out cohort sees nothing of the training ones.
        def transform(t: pd.DataFrame) -> pd.DataFrame:
            cols = [c for c in t.columns if not str(c).startswith(CLIN_PREFIX)]
            return standardize_per_cohort(t, cohorts=cohorts, columns=cols, where="a CV split")

    return reference_split_features(pipe, stats, features, transform=transform)


def prepare_cohort(cfg: ExperimentConfig, *, adata: AnnData | None = None) -> Cohort:
    """Load the cohort and build the patient x feature table and labels.

    Parameters
    ----------
    cfg
        The experiment.
    adata
        Use these cells instead of reading ``cfg.data`` (digest computed from the counts).

    Returns
    -------
    A :class:`Cohort`.
    """
    t0 = time.perf_counter()
    if cfg.data.kind == "features":
        return _prepare_features(cfg, t_load=0.0)
    if adata is None and cfg.data.path is not None and _streams(cfg) and _streamable(cfg):
        return _prepare_streaming(cfg, t0=t0)
    if adata is None:
        adata, digest, source = load_cohort(cfg)
    else:
        digest, source = "in-memory", "in-memory AnnData"
    t_load = time.perf_counter() - t0
    if cfg.data.kind == "bulk":
        return _prepare_bulk(cfg, adata, digest=digest, source=source, t_load=t_load)
    if K.PATIENT not in adata.obs:
        msg = (
            f"Patient column '{cfg.data.patient_col}' not in the cohort (have: {', '.join(map(str, adata.obs.columns[:12]))}). "
            "Set data.patient_col in the experiment config."
        )
        raise DataSchemaError(msg)
    from biomarkers.features import score_by_compartment
    from biomarkers.io import sample_table

    samples = sample_table(adata.obs)
    _check_samples(samples, cfg, source=Path(source).name)
    labels = _patient_labels(adata.obs, cfg)
    meta = _cell_meta(cfg, adata.obs, where=Path(source).name)
    pipe = _pipeline(cfg)
    coverage = pipe.check_genes(adata.var_names)
    t1 = time.perf_counter()
    if cfg.compute.scheduler is not None:
        # In-memory cells (simulated, or passed in) on Dask: split by sample and scattered one at a time.
        from biomarkers.compute import sample_stats

        logger.info("features: %d in-memory samples %s", adata.obs[K.SAMPLE].nunique(), _where(cfg))
        stats = sample_stats(pipe, adata, scheduler=cfg.compute.scheduler, n_workers=cfg.compute.n_workers).stats
        cells = None
    else:
        logger.info("features: %d cells in memory, in process", adata.n_obs)
        cells = pipe.process(adata)
        stats = pipe.stats(cells)
    # Control genes are fitted once on the training cohort (no labels involved) and frozen into the model.
    pipe = pipe.fit_reference(stats)
    features = pipe.finalize(stats)
    if cells is not None:
        score_by_compartment(cells, reference=pipe.reference, plan=pipe.plan)  # per-cell scores, for the plots
    return _single_cell_cohort(
        features, labels, pipe, var_names=adata.var_names, cells=cells, digest=digest, source=source,
        coverage=coverage, timings={"load_s": t_load, "features_s": time.perf_counter() - t1},
        read_spec=read_spec(cfg), samples=samples, cfg=cfg, meta=meta, stats=stats,
    )  # fmt: skip


def _prepare_bulk(cfg: ExperimentConfig, adata: AnnData, *, digest: str, source: str, t_load: float) -> Cohort:
    from biomarkers.features import bulk_features, bulk_settings
    from biomarkers.signatures import coverage_report, load_gene_sets

    d = cfg.data
    if K.RESPONSE not in adata.obs:
        msg = (
            f"Column '{d.label_col}' not in the bulk table (have: {', '.join(map(str, adata.obs.columns[:12]))}). "
            "Set data.label_col in the experiment config."
        )
        raise DataSchemaError(msg)
    from biomarkers.features._covariates import (
        add_covariates,
        check_covariate_columns,
        cohort_series,
        covariate_columns,
    )

    labels = binary_labels(adata.obs[K.RESPONSE], where=f"column '{d.label_col}'")
    where = Path(source).name
    check_covariate_columns(cfg, adata.obs.columns, where=where)
    meta = adata.obs.loc[labels.index, covariate_columns(cfg)]
    gene_sets = load_gene_sets(list(cfg.signatures), path=[str(p) for p in cfg.signature_files] or None)
    settings = bulk_settings(gene_sets=gene_sets, var_names=adata.var_names, families=cfg.features.families, genes=cfg.features.pb_genes)
    table = adata.to_df().loc[labels.index]
    # With several cohorts, genes are z-scored within each (the model stores the column to do the same at predict).
    cohorts = cohort_series(meta, d.cohort_col, where=where) if d.cohort_col is not None else None
    settings["cohort_col"] = d.cohort_col
    features = bulk_features(table, **settings, cohorts=cohorts)
    features, cohorts, kwargs = add_covariates(cfg, features, meta, where=where)
    groups = None
    if K.PATIENT in adata.obs:
        pid = adata.obs.loc[labels.index, K.PATIENT]
        if pid.isna().any():
            msg = (
                f"{int(pid.isna().sum())} of {len(pid)} samples have no patient id in column '{cfg.data.patient_col}': "
                "CV must group a patient's samples. Fill the ids (one per patient) or point data.patient_col elsewhere."
            )
            raise DataSchemaError(msg)
        groups = pid.astype(str)
    return Cohort(
        features=features,
        labels=labels.loc[features.index],
        groups=groups,
        kind="bulk",
        pipeline=None,
        bulk=settings,
        cells=None,
        digest=digest,
        source=source,
        coverage=coverage_report(gene_sets, list(adata.var_names)),
        timings={"load_s": t_load},
        read_spec=read_spec(cfg),
        model_kwargs=kwargs,
        cohorts=cohorts,
    )


def _read_features_table(cfg: ExperimentConfig) -> Any:
    """Read ``data.kind: features`` (:func:`biomarkers.io.read_feature_table`) with the config's columns."""
    from biomarkers.io import read_feature_table

    d = cfg.data
    return read_feature_table(
        d.path,  # type: ignore[arg-type]
        patient_col=d.patient_col, label_col=d.label_col, positive_label=d.positive_label,
        negative_label=d.negative_label, label_map=d.label_map, obs_map=d.obs_map, cohort_col=d.cohort_col,
        clinical=cfg.features.clinical, labels_table=d.labels,
    )  # fmt: skip


def _prepare_features(cfg: ExperimentConfig, *, t_load: float) -> Cohort:
    """``data.kind: features``: the table's numeric columns are the features, one row per patient."""
    import pandas as pd

    from biomarkers.features._covariates import add_covariates

    t0 = time.perf_counter()
    path = Path(cfg.data.path)  # type: ignore[arg-type]
    table = _read_features_table(cfg)
    labels = binary_labels(table.meta[K.RESPONSE], where=f"column '{cfg.data.label_col}' of {path.name}")
    features, cohorts, kwargs = add_covariates(cfg, table.features.loc[labels.index], table.meta, where=path.name)
    from biomarkers.signatures import coverage_report

    return Cohort(
        features=features,
        labels=labels.loc[features.index],
        groups=None,
        kind="features",
        pipeline=None,
        bulk=None,
        cells=None,
        digest=file_digest(path),
        source=str(path),
        coverage=pd.DataFrame(columns=coverage_report({}, []).columns),  # no gene sets: features are given
        timings={"load_s": t_load + time.perf_counter() - t0},
        read_spec=read_spec(cfg),
        model_kwargs=kwargs,
        cohorts=cohorts,
    )


def _metadata_only(cfg: ExperimentConfig) -> AnnData | None:
    """Return a streamed h5ad's obs and var without counts (what a dry run checks), or None for other inputs."""
    if cfg.data.path is None or not _streams(cfg) or not _streamable(cfg):
        return None
    import anndata as ad
    import pandas as pd

    from biomarkers.compute._sources import check_read_kwargs, path_refs

    refs, var = path_refs(Path(cfg.data.path), check_read_kwargs(_read_kwargs(cfg)))
    if var is None:  # 10x libraries: metadata come with the counts
        return None
    obs = pd.concat([r.obs for r in refs])
    return ad.AnnData(obs=obs, var=var)


def check_experiment(cfg: ExperimentConfig) -> None:
    """Validate an experiment's data without computing features (``run --dry-run``).

    A streamed h5ad is checked from its ``obs`` and ``var`` only (no counts are read). Checks the input reads (with
    ``data.query`` and ``data.labels``), the patient and label columns, label values
    and classes, that each patient's samples agree in tissue / timepoint / inflamed status, the number of
    patients per class against ``cv.n_splits``, and gene-set coverage. Raises a
    :class:`biomarkers.BiomarkersError` subclass on the first problem.
    """
    from biomarkers.models import patient_folds
    from biomarkers.signatures import coverage_report, load_gene_sets

    if cfg.data.kind == "features":
        _check_features_table(cfg)
        return
    adata = _metadata_only(cfg)
    if adata is None:
        adata, _, _ = load_cohort(cfg)
    if cfg.data.kind == "bulk":
        from biomarkers.features._covariates import check_covariate_columns

        check_covariate_columns(cfg, adata.obs.columns, where=Path(str(cfg.data.path)).name)
        y = binary_labels(adata.obs[K.RESPONSE], where=f"column '{cfg.data.label_col}'")
        if K.PATIENT in adata.obs:
            # Bulk CV is grouped by patient: check the class counts in patients, as the real run will.
            groups = adata.obs.loc[y.index, K.PATIENT].astype(str).to_numpy()
            patient_folds(y.to_numpy(), n_splits=cfg.cv.n_splits, n_repeats=1, seed=cfg.seed, groups=groups)
    else:
        if K.PATIENT not in adata.obs:
            msg = f"Patient column '{cfg.data.patient_col}' not in the cohort. Set data.patient_col in the experiment config."
            raise DataSchemaError(msg)
        from biomarkers.io import sample_table

        _check_samples(sample_table(adata.obs), cfg, source=Path(str(cfg.data.path or "simulated")).name)
        y = _patient_labels(adata.obs, cfg)
        _cell_meta(cfg, adata.obs, where=Path(str(cfg.data.path or "simulated")).name)
    _check_class_counts(cfg, y)
    gene_sets = load_gene_sets(list(cfg.signatures), path=[str(p) for p in cfg.signature_files] or None)
    report = coverage_report(gene_sets, list(adata.var_names))
    empty = report.loc[report["n_found"] == 0, "set"].tolist()
    if empty and cfg.data.kind != "bulk":
        msg = f"Gene set(s) {', '.join(empty)} have no gene in the data. Check gene symbols, or drop them from `signatures`."
        raise DataSchemaError(msg)


def _check_class_counts(cfg: ExperimentConfig, y: pd.Series) -> None:
    counts = y.value_counts()
    if counts.min() < cfg.cv.n_splits:
        msg = (
            f"Too few patients per class for {cfg.cv.n_splits}-fold CV: {int(counts.get(0, 0))} negative / "
            f"{int(counts.get(1, 0))} positive. Lower cv.n_splits (e.g. --set cv.n_splits={max(2, int(counts.min()))})."
        )
        raise DataSchemaError(msg)


def _check_features_table(cfg: ExperimentConfig) -> None:
    """Dry run of ``data.kind: features``: the table, labels, covariates and per-cohort sizes (the table is small)."""
    cohort = _prepare_features(cfg, t_load=0.0)
    _check_class_counts(cfg, cohort.labels)


def features_from_file(
    path: str | Path,
    *,
    config: Any | None = None,
    patient_col: str | None = None,
    sample_col: str | None = None,
    query: str | None = None,
    obs_map: Mapping[str, str] | None = None,
    seed: int | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
) -> pd.DataFrame:
    """Read a cohort file one sample at a time and build its patients x features table (``biomarkers features``).

    The scoring reference is fitted on this input (there is no model to take it from).

    Parameters
    ----------
    path
        h5ad / 10x file or folder of raw counts.
    config
        An :class:`biomarkers.config.ExperimentConfig`: its ``data`` reader settings (columns, ``obs_map``,
        ``query``) and its preprocess, signature and feature settings are used. None: the defaults.
    patient_col, sample_col, query, obs_map
        Override the reader settings (see :func:`biomarkers.io.read_cohort`); ``query=""`` keeps every row.
    seed
        Seed for control-gene sampling (default: the config's, else 0).
    scheduler, n_workers
        Where samples are processed: None (this process; the config's ``compute`` when given), ``'local'`` or
        ``'tcp://HOST:PORT'`` (see :func:`biomarkers.compute.sample_stats`).

    Returns
    -------
    Patients (index ``patient_id``) x features.
    """
    from biomarkers.compute import sample_stats
    from biomarkers.io import ReadSpec, check_sample_mix

    spec = ReadSpec.from_config(config.data) if config is not None else ReadSpec()
    spec = spec.for_predict(patient_col=patient_col, sample_col=sample_col, query=query, obs_map=obs_map)
    from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
    from biomarkers.signatures import load_gene_sets

    if config is not None:
        pipe = FeaturePipeline.from_config(config)
    else:
        pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))
    if seed is not None:
        pipe = replace(pipe, seed=seed)
    if scheduler is None and config is not None:
        scheduler, n_workers = config.compute.scheduler, config.compute.n_workers
    # One sample at a time: memory is bounded by the largest sample, not the file.
    res = sample_stats(pipe, path, scheduler=scheduler, n_workers=n_workers, read_kwargs=spec.read_kwargs())
    check_sample_mix(res.labels, allow=spec.allow_mixed_samples, source=Path(path).name)
    feats = pipe.finalize(res.stats)  # the scoring reference is fitted on this input
    feats.index.name = K.PATIENT
    return feats

