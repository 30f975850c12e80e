"""``data.kind: features``: a patient x feature CSV/TSV (published scores, module eigengenes, deconvolution) as a cohort.

The table has one row per patient: the patient column, the label column, optionally the cohort column and raw
clinical columns, and every other column is a numeric feature. Labels are mapped exactly as for cells and bulk
(:class:`~biomarkers.io._obs.LabelSpec`), and a clinical table (``data.labels``) joins by patient id
(:meth:`~biomarkers.io._obs.ObsRules.join`), so the label or covariates may live there instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from biomarkers import _keys
from biomarkers._errors import DataSchemaError

from ._common import logger, missing_path_error, preview, read_delimited
from ._obs import LabelSpec, ObsRules, apply_obs_map, normalize_labels, resolve_obs_map

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# Feature names become model inputs: LightGBM rejects : , [ ] { } " (LightGBM issue #6202).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class FeatureTable:
    """A patient x feature table split into features and metadata.

    Attributes
    ----------
    features
        Patients (index: id as text, named ``patient_id``) x numeric features (float).
    meta
        Patients x metadata: ``response`` (canonical labels, when a label column was read), the cohort column,
        the clinical columns (after ``obs_map`` and the clinical-table join), as read.
    source
        The file name, for messages.
    """

    features: pd.DataFrame
    meta: pd.DataFrame
    source: str


def _numeric(series: pd.Series) -> pd.Series | None:
    """Return the column as float, or None when some non-missing value is not a number."""
    if pd.api.types.is_bool_dtype(series):
        return None
    if pd.api.types.is_numeric_dtype(series):
        return series.astype(float)
    converted = pd.to_numeric(series, errors="coerce")
    return converted.astype(float) if converted.notna().sum() == series.notna().sum() else None


def read_feature_table(
    path: str | Path,
    *,
    patient_col: str = _keys.PATIENT,
    label_col: str | None = _keys.RESPONSE,
    positive_label: str | None = None,
    negative_label: str | None = None,
    label_map: Mapping[Any, str | None] | None = None,
    obs_map: Mapping[str, str] | None = None,
    cohort_col: str | None = None,
    clinical: Sequence[str] = (),
    labels_table: str | Path | pd.DataFrame | None = None,
) -> FeatureTable:
    """Read a patient x feature CSV/TSV (``data.kind: features``).

    Parameters
    ----------
    path
        CSV/TSV (optionally gzipped), one row per patient.
    patient_col
        Column with the patient id (``data.patient_col``).
    label_col
        Column with the response label (``data.label_col``); None for new patients (predict).
    positive_label, negative_label, label_map
        How raw label values map to ``non_responder`` / ``responder`` (as :func:`biomarkers.io.read_cohort`).
    obs_map
        Canonical name -> column (``data.obs_map``), e.g. ``{severity: cdai}``.
    cohort_col
        Column naming each patient's cohort (``data.cohort_col``), kept as metadata.
    clinical
        Clinical columns (names after ``obs_map``, ``features.clinical``), kept as metadata, not features.
    labels_table
        A clinical table (``data.labels``) joined by patient id: it may hold the label and clinical columns.

    Returns
    -------
    A :class:`FeatureTable`.

    Raises
    ------
    DataSchemaError
        The patient column is absent or has missing or repeated ids; a feature column is not numeric (or has an
        unsafe name); there is no feature column; the labels do not map.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> d = tempfile.mkdtemp()
    >>> pd.DataFrame({"patient_id": ["a", "b"], "response": ["responder", "non_responder"], "score": [0.1, 0.9]}).to_csv(
    ...     f"{d}/t.csv", index=False)
    >>> read_feature_table(f"{d}/t.csv").features.columns.tolist()
    ['score']
    """
    path = Path(path)
    if not path.exists():
        raise missing_path_error(path)
    source = path.name
    table = read_delimited(path)
    if table.empty:
        msg = f"Feature table {source} has no rows. Give one row per patient (patient column, label, features)."
        raise DataSchemaError(msg)
    table.columns = [str(c) for c in table.columns]
    mapping = resolve_obs_map(obs_map, patient_col=patient_col, sample_col=None, label_col=label_col)
    pcol = mapping[_keys.PATIENT]
    if pcol not in table.columns:
        msg = (
            f"Patient column {pcol!r} not in {source} (have: {preview(table.columns, 10)}). "
            "Set data.patient_col to the id column of the table."
        )
        raise DataSchemaError(msg)
    ids = table[pcol].astype(object).where(table[pcol].notna())
    if ids.isna().any():
        msg = f"{int(ids.isna().sum())} of {len(ids)} rows of {source} have no id in column {pcol!r}. Fill them or drop those rows."
        raise DataSchemaError(msg)
    ids = ids.astype(str).str.strip()
    if ids.duplicated().any():
        dupes = ids[ids.duplicated()].unique()
        msg = (
            f"{len(dupes)} patient id(s) appear more than once in column {pcol!r} of {source} (e.g. {preview(dupes, 4)}). "
            "A feature table has one row per patient: keep one row each (or aggregate the samples first)."
        )
        raise DataSchemaError(msg)
    meta_raw = {pcol, *(v for v in mapping.values()), *(mapping.get(c, c) for c in clinical)}
    if cohort_col is not None:
        meta_raw.add(cohort_col)
    feature_cols = [c for c in table.columns if c not in meta_raw]
    if not feature_cols:
        msg = (
            f"{source} has no feature column: every column is metadata ({preview(table.columns, 10)}). "
            "Add numeric feature columns, one per feature."
        )
        raise DataSchemaError(msg)
    numeric = {c: _numeric(table[c]) for c in feature_cols}
    bad = [c for c, v in numeric.items() if v is None]
    if bad:
        example = table[bad[0]].dropna()
        example = example[pd.to_numeric(example, errors="coerce").isna()].iloc[0] if len(example) else None
        msg = (
            f"Non-numeric feature column(s) {preview(map(repr, bad), 5)} in {source} (e.g. {example!r} in {bad[0]!r}). "
            "Drop them, or list them in features.clinical (categorical covariates are one-hot encoded) or as data.cohort_col."
        )
        raise DataSchemaError(msg)
    unsafe = [c for c in feature_cols if not _SAFE_NAME.match(c)]
    if unsafe:
        msg = (
            f"Feature column name(s) {preview(map(repr, unsafe), 5)} in {source} use characters outside [A-Za-z0-9_.-] "
            "(model libraries reject them). Rename those columns."
        )
        raise DataSchemaError(msg)
    features = pd.DataFrame({c: numeric[c].to_numpy() for c in feature_cols}, index=pd.Index(ids.to_numpy(), name=_keys.PATIENT))
    meta = table[[c for c in table.columns if c in meta_raw]].copy()
    rules = _rules(labels_table)
    meta = apply_obs_map(meta, rules.obs_part(mapping, meta.columns), source=source)
    meta[_keys.PATIENT] = ids.to_numpy()
    meta = rules.join(meta, mapping, labels=_label_spec(label_map, positive_label, negative_label), source=source)
    if label_col is not None:
        if _keys.RESPONSE not in meta.columns:
            msg = (
                f"Label column {label_col!r} not in {source}{' or the clinical table' if labels_table is not None else ''} "
                f"(have: {preview(table.columns, 10)}). Set data.label_col."
            )
            raise DataSchemaError(msg)
        meta[_keys.RESPONSE] = normalize_labels(
            meta[_keys.RESPONSE], labels=_label_spec(label_map, positive_label, negative_label), source=source
        )
    meta.index = features.index
    logger.info("read_feature_table: %s -> %d patients x %d features", source, *features.shape)
    return FeatureTable(features=features, meta=meta.drop(columns=[_keys.PATIENT]), source=source)


def _label_spec(label_map: Mapping[Any, str | None] | None, positive: str | None, negative: str | None) -> LabelSpec:
    spec = LabelSpec(label_map=dict(label_map or {}), positive=positive, negative=negative)
    spec.positive_label()
    return spec


def _rules(labels_table: str | Path | pd.DataFrame | None) -> ObsRules:
    from ._read import obs_rules

    return obs_rules(None, labels_table)
