"""An experiment's covariates: cohorts (``data.cohort_col``), standardisation and clinical columns, for every kind.

Training (:func:`add_covariates`) and predict (:meth:`biomarkers.tracking.BiomarkerModel.apply_covariates`) run
the same two steps in the same order: z-score the biomarker features within each cohort, then append the encoded
``clin__`` covariates (never standardised).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError
from biomarkers.features._clinical import SOURCE_INPUT, SOURCE_TABLE, clinical_spec, encode_clinical
from biomarkers.features._standardize import standardize_per_cohort, standardize_settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from biomarkers.config import ExperimentConfig

CLIN_PREFIX = f"{K.FAMILY_CLIN}{K.FEATURE_SEP}"


def covariate_columns(cfg: ExperimentConfig) -> list[str]:
    """Metadata columns an experiment reads per patient: ``features.clinical`` and ``data.cohort_col``."""
    cols = list(cfg.features.clinical)
    if cfg.data.cohort_col is not None:
        cols.append(cfg.data.cohort_col)
    return list(dict.fromkeys(cols))


def check_covariate_columns(cfg: ExperimentConfig, columns: Iterable[Any], *, where: str) -> None:
    """Raise :class:`DataSchemaError` (one line) for ``features.clinical`` / ``data.cohort_col`` names not in ``columns``."""
    have = [str(c) for c in columns]
    missing = [c for c in cfg.features.clinical if c not in have]
    if missing:
        msg = (
            f"features.clinical column(s) {', '.join(map(repr, missing))} not found in {where} "
            f"(have: {', '.join(have[:12])}{', ...' if len(have) > 12 else ''}). Use names after data.obs_map, "
            "from the input's metadata or the data.labels table, or drop them from features.clinical."
        )
        raise DataSchemaError(msg)
    col = cfg.data.cohort_col
    if col is not None and col not in have:
        msg = (
            f"data.cohort_col {col!r} not found in {where} (have: {', '.join(have[:12])}{', ...' if len(have) > 12 else ''}). "
            "Set data.cohort_col to the column naming each patient's cohort, or unset it."
        )
        raise DataSchemaError(msg)


def clinical_sources(cfg: ExperimentConfig) -> dict[str, str]:
    """Where each clinical column comes from: the ``data.labels`` table (predict then needs ``--clinical``) or the input."""
    from biomarkers.io import ReadSpec
    from biomarkers.io._obs import resolve_obs_map

    spec = ReadSpec.from_config(cfg.data)
    table = set(spec.clinical_columns)
    d = cfg.data
    mapping = resolve_obs_map(d.obs_map, patient_col=d.patient_col, sample_col=d.sample_col, label_col=d.label_col)
    return {c: SOURCE_TABLE if (mapping.get(c, c) in table or c in table) else SOURCE_INPUT for c in cfg.features.clinical}


def cohort_series(meta: pd.DataFrame, column: str, *, where: str) -> pd.Series:
    """Return the cohort of each row, as text; a row without one raises."""
    c = meta[column]
    if c.isna().any():
        missing = c.index[c.isna()]
        msg = (
            f"{len(missing)} of {len(c)} rows of {where} have no cohort in column {column!r} "
            f"(e.g. {', '.join(map(str, missing[:3]))}). Fill it for every patient, or unset data.cohort_col."
        )
        raise DataSchemaError(msg)
    return c.astype(str).str.strip().rename(column)


def add_covariates(
    cfg: ExperimentConfig, features: pd.DataFrame, meta: pd.DataFrame, *, where: str
) -> tuple[pd.DataFrame, pd.Series | None, dict[str, Any]]:
    """Standardise per cohort and append ``clin__`` covariates, as the config says.

    Parameters
    ----------
    cfg
        The experiment (``features.clinical``, ``features.standardize``, ``data.cohort_col``).
    features
        Rows (patients or bulk samples) x biomarker features.
    meta
        Rows (the same index) x raw metadata holding :func:`covariate_columns`.
    where
        Name of the input, for messages.

    Returns
    -------
    (features, cohorts or None, the :class:`biomarkers.tracking.BiomarkerModel` keyword arguments ``clinical`` /
    ``standardize`` that re-apply both at predict time).
    """
    check_covariate_columns(cfg, meta.columns, where=where)
    meta = meta.reindex(features.index)
    col = cfg.data.cohort_col
    cohorts = cohort_series(meta, col, where=where) if col is not None else None
    kwargs: dict[str, Any] = {}
    if cfg.features.standardize == "per_cohort":
        cols = [c for c in features.columns if not str(c).startswith(CLIN_PREFIX)]
        features = standardize_per_cohort(features, cohorts=cohorts, columns=cols, where=where)
        kwargs["standardize"] = standardize_settings(cohort_col=col, columns=cols)
    if cfg.features.clinical:
        raw = meta[list(cfg.features.clinical)]
        spec = clinical_spec(raw, sources=clinical_sources(cfg))
        encoded = encode_clinical(raw, spec, where=where)
        clash = sorted(set(encoded.columns) & set(features.columns))
        if clash:
            msg = (
                f"Clinical feature(s) {', '.join(clash[:3])} already exist as columns of {where}. Rename the "
                "input's column, or drop it from features.clinical."
            )
            raise DataSchemaError(msg)
        features = pd.concat([features, encoded], axis=1)
        kwargs["clinical"] = spec
    return features, cohorts, kwargs
