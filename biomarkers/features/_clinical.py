"""Clinical covariates as features: ``clin__<col>`` (numeric) and ``clin__<col>__<level>`` (one-hot).

The encoding is fitted once on the training cohort (which columns are numeric, the levels of the others) and
stored with the model (:func:`clinical_spec`), so predict encodes new patients identically (:func:`encode_clinical`).
Every level of a categorical column is kept (no reference level dropped): the models are penalised or tree-based,
so collinear dummies do no harm, and a level unseen in training can then be all-zero without meaning "the
reference level". A missing value is NaN in all of its column's dummies; imputation happens inside the CV folds
(the model pipelines' median imputer), never here, so nothing is fitted on held-out patients.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError
from biomarkers.features._names import feature_name

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

logger = logging.getLogger("biomarkers")

#: Where training took a covariate from: the input's own metadata (cells' obs, bulk or feature table columns),
#: or the clinical table (``data.labels``; predict then needs ``--clinical``).
SOURCE_INPUT = "input"
SOURCE_TABLE = "clinical_table"


def patient_values(obs: pd.DataFrame, columns: Sequence[str], *, where: str, patient_col: str = K.PATIENT) -> pd.DataFrame:
    """One value per patient for each column of ``obs`` (cells or samples as rows); conflicting values raise.

    Parameters
    ----------
    obs
        Rows with a patient column and ``columns``.
    columns
        Columns to collapse (each must be constant within a patient, missing values aside).
    where
        Name of the input, for messages.
    patient_col
        The patient column.

    Returns
    -------
    Patients (index, as text) x ``columns``; a patient with no value is NaN.
    """
    cols = list(dict.fromkeys(columns))
    frame = obs[[patient_col, *cols]].copy()
    frame[patient_col] = frame[patient_col].astype(str)
    for c in cols:
        # Categoricals and text compare as text, so 3 and "3.0" from a streamed table are not a conflict.
        frame[c] = frame[c].astype(object).where(frame[c].notna())
    grouped = frame.groupby(patient_col, sort=False)
    counts = grouped[cols].nunique(dropna=True)
    for c in cols:
        bad = counts.index[counts[c] > 1]
        if len(bad):
            found = sorted(map(str, frame.loc[frame[patient_col] == bad[0], c].dropna().unique()))[:4]
            msg = (
                f"Column {c!r} has more than one value for patient {bad[0]!r} in {where} ({', '.join(found)}); "
                "a clinical covariate or cohort belongs to the patient. Fix the metadata, or drop the column from "
                "features.clinical / data.cohort_col."
            )
            raise DataSchemaError(msg)
    out = grouped[cols].first()
    out.index = out.index.astype(str)
    out.index.name = K.PATIENT
    return out


def _is_numeric(values: pd.Series) -> bool:
    """Whether every non-missing value reads as a number (text from a streamed table included); bools are levels."""
    if pd.api.types.is_bool_dtype(values):
        return False
    present = values.dropna()
    if pd.api.types.is_numeric_dtype(values):
        return True
    if present.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        return False
    return bool(len(present)) and bool(pd.to_numeric(present.astype(str), errors="coerce").notna().all())


def _levels(values: pd.Series) -> pd.Series:
    """Values as level names (text, stripped); missing stays missing."""
    present = values.notna()
    return values.astype(object).map(str).str.strip().where(present)


def clinical_spec(values: pd.DataFrame, *, sources: Mapping[str, str]) -> dict[str, Any]:
    """Fit the encoding on the training patients: the type of each column and the levels of categorical ones.

    Parameters
    ----------
    values
        Patients x raw clinical columns (:func:`patient_values`).
    sources
        Column -> :data:`SOURCE_INPUT` or :data:`SOURCE_TABLE`.

    Returns
    -------
    ``{"columns": [{"name", "type": "numeric" | "categorical", "levels", "source"}, ...]}`` (JSON-serialisable),
    stored with the model.
    """
    out = []
    for c in values.columns:
        s = values[c]
        if s.notna().sum() == 0:
            msg = f"Clinical column {c!r} has no value for any patient. Fill it, or drop it from features.clinical."
            raise DataSchemaError(msg)
        if _is_numeric(s):
            out.append({"name": str(c), "type": "numeric", "levels": [], "source": sources.get(c, SOURCE_INPUT)})
            continue
        levels = sorted(_levels(s).dropna().unique().tolist())
        names = [feature_name(K.FAMILY_CLIN, str(c), lv) for lv in levels]
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            msg = (
                f"Levels of clinical column {c!r} collide as feature names ({dup}: feature names keep only "
                "[A-Za-z0-9_.-]). Recode the levels so they differ in letters or digits."
            )
            raise DataSchemaError(msg)
        out.append({"name": str(c), "type": "categorical", "levels": levels, "source": sources.get(c, SOURCE_INPUT)})
    return {"columns": out}


def clinical_feature_names(spec: Mapping[str, Any]) -> list[str]:
    """Return the ``clin__`` feature columns an encoding produces, in order."""
    names = []
    for col in spec["columns"]:
        if col["type"] == "numeric":
            names.append(feature_name(K.FAMILY_CLIN, col["name"]))
        else:
            names.extend(feature_name(K.FAMILY_CLIN, col["name"], lv) for lv in col["levels"])
    return names


def encode_clinical(values: pd.DataFrame, spec: Mapping[str, Any], *, where: str = "the input") -> pd.DataFrame:
    """Encode raw clinical columns with a fitted :func:`clinical_spec`.

    Parameters
    ----------
    values
        Rows (patients) x raw clinical columns; every column of ``spec`` must be present.
    spec
        The fitted encoding.
    where
        Name of the input, for messages.

    Returns
    -------
    Rows x :func:`clinical_feature_names` (float). Missing values are NaN (all dummies of the column); a level
    unseen in training gives all-zero dummies and a warning.

    Examples
    --------
    >>> import pandas as pd
    >>> raw = pd.DataFrame({"age": [30, None], "sex": ["F", None]}, index=["p1", "p2"])
    >>> spec = clinical_spec(raw, sources={})
    >>> encode_clinical(raw, spec).columns.tolist()
    ['clin__age', 'clin__sex__F']
    """
    out: dict[str, pd.Series] = {}
    for col in spec["columns"]:
        name, s = col["name"], values[col["name"]]
        if col["type"] == "numeric":
            num = pd.to_numeric(_levels(s), errors="coerce")
            bad = s.notna() & num.isna()
            if bad.any():
                msg = (
                    f"Clinical column {name!r} was numeric in training but has text in {where} "
                    f"(e.g. {s[bad].iloc[0]!r}). Give numbers (or leave the value empty)."
                )
                raise DataSchemaError(msg)
            out[feature_name(K.FAMILY_CLIN, name)] = num.astype(float)
            continue
        lv = _levels(s)
        unseen = sorted(set(lv.dropna()) - set(col["levels"]))
        if unseen:
            logger.warning(
                "clinical column %r: level(s) %s of %s not seen in training (%s); their one-hot columns are all 0",
                name, ", ".join(map(repr, unseen[:5])), where, ", ".join(map(repr, col["levels"])),
            )  # fmt: skip
        for level in col["levels"]:
            out[feature_name(K.FAMILY_CLIN, name, level)] = (lv == level).astype(float).where(lv.notna())
    return pd.DataFrame(out, index=values.index)
