"""``BiomarkerModel``: one MLflow pyfunc carrying the whole path from raw cells to probability."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

try:  # mlflow is a core dependency, but keep `import biomarkers` light
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

from biomarkers import _keys as K
from biomarkers._errors import FeatureMismatchError

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("biomarkers")

OUTPUT_COLUMNS = ("p_non_response", "prediction")
QC_COLUMNS = (K.N_CELLS, K.N_SAMPLES)  # what predict used per patient, reported whether or not they are features
# 2: the feature pipeline carries a frozen scoring reference, and the model carries the reader settings.
# Version-1 models (v0.1) scored each sample against itself and read new files with default columns only.
# The clinical encoding and per-cohort standardisation are optional attributes (absent: not used), so adding
# them needed no new version: models pickled before them read as "neither".
FORMAT_VERSION = 2


class BiomarkerModel(PythonModel):
    """A fitted classifier plus everything needed to rebuild its features.

    The pyfunc input is the patient x feature table (checked by the model signature). The frozen
    feature pipeline (QC / normalisation / annotation parameters, gene sets, scoring plan) travels
    with it, so :meth:`predict_cells` and :meth:`predict_bulk` start from raw counts or a bulk table.

    Parameters
    ----------
    estimator
        Fitted scikit-learn pipeline with ``predict_proba``.
    features
        Feature names, in the order the estimator expects.
    threshold
        Probability at or above which a patient is called a non-responder.
    pipeline
        :meth:`biomarkers.features.FeaturePipeline.to_dict` output (single-cell models), or ``None``.
    kind
        ``'single_cell'``, ``'bulk'`` or ``'features'`` (trained on a patient x feature table).
    min_coverage
        Smallest fraction of model features (or signature genes) an input must have.
    bulk
        Bulk feature settings (gene sets, genes, standardisation) for bulk models.
    metadata
        Free-form provenance (experiment, CV metrics).
    read_spec
        :meth:`biomarkers.io.ReadSpec.to_dict` of the training data: ``predict`` reads new files the same way.
    clinical
        The clinical encoding fitted on the training patients (:func:`biomarkers.features.clinical_spec`):
        ``{"columns": [{"name", "type": "numeric" | "categorical", "levels", "source": "input" | "clinical_table"}]}``.
        None: the model uses no clinical covariates.
    standardize
        The per-cohort standardisation rule (:func:`biomarkers.features.standardize_settings`): ``{"method":
        "per_cohort", "min_cohort", "ddof", "cohort_col", "columns"}``. None: features are used as built.
    profile
        The training cohort's profile (:func:`biomarkers.tracking._profile.training_profile`): feature ranges,
        key-feature quantiles, compartments present, minimum cells; for percentiles and out-of-distribution flags.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        features: list[str],
        threshold: float,
        pipeline: dict[str, Any] | None = None,
        kind: str = "single_cell",
        min_coverage: float = 0.9,
        bulk: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        read_spec: dict[str, Any] | None = None,
        clinical: dict[str, Any] | None = None,
        standardize: dict[str, Any] | None = None,
        profile: dict[str, Any] | None = None,
    ) -> None:
        self.estimator = estimator
        self.features = list(features)
        self.threshold = float(threshold)
        self.pipeline = pipeline
        self.kind = kind
        self.min_coverage = float(min_coverage)
        self.bulk = bulk
        self.metadata = metadata or {}
        self.read_spec = read_spec or {}
        self.clinical = clinical
        self.standardize = standardize
        self.profile = profile
        self.format_version = FORMAT_VERSION

    def check_format(self) -> None:
        """Raise :class:`FeatureMismatchError` for a model whose stored format cannot rebuild features from cells."""
        version = getattr(self, "format_version", 1)  # attribute absent in models pickled before versioning
        if version < FORMAT_VERSION:
            msg = (
                f"This model was registered in format {version} (biomarkers 0.1), which scored each sample against "
                f"itself and did not store its reader settings; the current format is {FORMAT_VERSION}. Retrain it "
                "with `biomarkers run EXPERIMENT.yaml` (a patient x feature table still predicts)."
            )
            raise FeatureMismatchError(msg)

    # -- the pyfunc entry point -------------------------------------------------------------------
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ARG002
        """Patient x feature table -> ``p_non_response``, ``prediction`` (one row per input row)."""
        return self.predict_features(model_input)

    # -- helpers used by `biomarkers predict` -----------------------------------------------------
    def feature_coverage(self, table: pd.DataFrame) -> pd.Series:
        """Per row: fraction of model features present and finite."""
        present = [f for f in self.features if f in table.columns]
        if not present:
            return pd.Series(0.0, index=table.index)
        return table[present].notna().sum(axis=1) / len(self.features)

    def check_features(self, table: pd.DataFrame) -> pd.DataFrame:
        """Align columns to the model; raise :class:`FeatureMismatchError` below ``min_coverage``."""
        present = [f for f in self.features if f in table.columns]
        frac = len(present) / len(self.features)
        if frac < self.min_coverage:
            missing = [f for f in self.features if f not in table.columns]
            msg = (
                f"Only {len(present)}/{len(self.features)} model features present (min {self.min_coverage:.0%}). "
                f"Missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}. "
                "Is this the input kind the model was trained on (cells / features / bulk), with the same gene sets?"
            )
            raise FeatureMismatchError(msg)
        aligned = table.reindex(columns=self.features)
        text = [c for c in aligned.columns if not pd.api.types.is_numeric_dtype(aligned[c]) and
                pd.to_numeric(aligned[c].dropna(), errors="coerce").isna().any()]  # fmt: skip
        if text:
            msg = (
                f"Model feature column(s) {', '.join(text[:5])} of the input are not numeric (e.g. "
                f"{aligned[text[0]].dropna().iloc[0]!r}). Give numbers (empty for missing)."
            )
            raise FeatureMismatchError(msg)
        return aligned.apply(pd.to_numeric, errors="coerce").astype(np.float64)

    def predict_features(self, table: pd.DataFrame) -> pd.DataFrame:
        """Probabilities and calls for a feature table (rows = patients or samples)."""
        x = self.check_features(table)
        p = self.estimator.predict_proba(x)[:, 1]
        return pd.DataFrame(
            {"p_non_response": p, "prediction": np.where(p >= self.threshold, K.NON_RESPONDER, K.RESPONDER)},
            index=table.index,
        )

    def explain(self, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
        """Each model feature's contribution to each row's log-odds of non-response, and the base log-odds.

        See :func:`biomarkers.models._explain.contributions`; ``table`` is aligned to the model's features first.
        """
        from biomarkers.models._explain import contributions

        return contributions(self.estimator, self.check_features(table))

    def features_from_cells(self, adata: AnnData) -> pd.DataFrame:
        """Rebuild the patient feature table from raw-count cells with the frozen pipeline."""
        return self.cells_table(adata)[0]

    def feature_pipeline(self) -> Any:
        """Return the frozen :class:`biomarkers.features.FeaturePipeline` (with its scoring reference) of a cells model."""
        from biomarkers.features import FeaturePipeline

        if self.pipeline is None:
            msg = f"This is a {self.kind} model: it takes a {self.kind} table, not single cells."
            raise FeatureMismatchError(msg)
        self.check_format()
        return FeaturePipeline.from_dict(self.pipeline)

    def cells_table(self, adata: AnnData) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Raw-count cells -> (patients x features, patients x ``n_cells, n_samples``), with the frozen pipeline."""
        # Gene coverage is checked against the frozen scoring reference in process() (min 70% of each set's
        # genes and of its controls).
        pipe = self.feature_pipeline()
        stats = pipe.stats(pipe.process(adata))
        return pipe.finalize(stats), stats[list(QC_COLUMNS)]

    def features_from_bulk(self, table: pd.DataFrame, *, cohorts: pd.Series | None = None) -> pd.DataFrame:
        """Bulk samples x genes (log scale) -> the model's bulk features, standardised within the cohort.

        ``cohorts`` (one per row): genes are z-scored within each, as training did with ``data.cohort_col``.
        """
        from biomarkers.features import bulk_features

        if self.bulk is None:
            msg = "This is a single-cell model: it needs cells or a patient x feature table, not a bulk table."
            raise FeatureMismatchError(msg)
        from biomarkers.signatures import resolve_genes

        needed = {g for gs in self.bulk["gene_sets"].values() for g in gs} | set(self.bulk["genes"])
        found = set(resolve_genes(sorted(needed), list(map(str, table.columns)))[0])  # by alias too (IL8 <-> CXCL8)
        if len(found) < self.min_coverage * len(needed):
            missing = sorted(needed - found)
            msg = (
                f"Only {len(found)}/{len(needed)} of the model's genes are in the bulk table (min {self.min_coverage:.0%}). "
                f"Missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}. Are columns HGNC symbols (not probe IDs)?"
            )
            raise FeatureMismatchError(msg)
        return bulk_features(table, **self.bulk, cohorts=cohorts)

    # -- covariates: clinical columns and per-cohort standardisation, re-applied as in training ----------
    def covariate_columns(self) -> list[str]:
        """Raw metadata columns predict reads per patient: the clinical columns and the cohort column(s)."""
        cols = [c["name"] for c in (getattr(self, "clinical", None) or {}).get("columns", [])]
        for col in ((getattr(self, "standardize", None) or {}).get("cohort_col"), (self.bulk or {}).get("cohort_col")):
            if col:
                cols.append(col)
        return list(dict.fromkeys(cols))

    def apply_covariates(self, features: pd.DataFrame, meta: pd.DataFrame, *, where: str = "the input") -> pd.DataFrame:
        """Standardise per cohort and append the ``clin__`` covariates, exactly as training did.

        Parameters
        ----------
        features
            Rows (patients or samples) x the model's biomarker features, as built.
        meta
            Rows (same index) x raw metadata: the clinical columns and the cohort column, where known.
        where
            Name of the input, for messages.

        Returns
        -------
        The feature table the estimator reads (biomarker features standardised, ``clin__`` columns added).
        """
        from biomarkers.features import encode_clinical, standardize_per_cohort
        from biomarkers.features._clinical import SOURCE_TABLE, clinical_feature_names

        meta = meta.reindex(features.index)
        out = features
        std = getattr(self, "standardize", None)
        if std:
            col = std.get("cohort_col")
            cohorts = meta[col] if col and col in meta.columns else None
            if col and cohorts is None:
                logger.info("predict: no cohort column %r in %s; its %d rows are standardised as one cohort", col, where, len(out))
            cols = [c for c in std["columns"] if c in out.columns]
            out = standardize_per_cohort(out, cohorts=cohorts, columns=cols, min_cohort=int(std["min_cohort"]), where=where)
        spec = getattr(self, "clinical", None)
        if not spec:
            return out
        names = clinical_feature_names(spec)
        raw = [c["name"] for c in spec["columns"]]
        absent = [c for c in spec["columns"] if c["name"] not in meta.columns]
        if absent and all(n in out.columns for n in names):
            return out  # an already-encoded feature table (e.g. the run's features.csv)
        if absent:
            where_from = {c["name"]: "the data.labels table" if c["source"] == SOURCE_TABLE else "the training input" for c in absent}
            msg = (
                f"This model uses clinical covariates {', '.join(f'{n!r} (from {w})' for n, w in where_from.items())} "
                f"that {where} does not have. Pass a CSV/TSV of them by patient id with --clinical PATH "
                "(predict(..., clinical=PATH))."
            )
            raise FeatureMismatchError(msg)
        encoded = encode_clinical(meta[raw], spec, where=where)
        return pd.concat([out.drop(columns=[n for n in names if n in out.columns]), encoded], axis=1)
