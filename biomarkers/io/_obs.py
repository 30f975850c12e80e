"""Canonical obs: mapping the user's columns, response labels, patient/sample checks, sample sheets."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys
from biomarkers._errors import ConfigError, DataSchemaError

from ._common import CANONICAL_OBS, LABELS, logger, missing_path_error, preview, read_delimited

if TYPE_CHECKING:
    from collections.abc import Mapping

_CONFIG_KEY = {_keys.PATIENT: "data.patient_col", _keys.SAMPLE: "data.sample_col", _keys.RESPONSE: "data.label_col"}
# Values read as "no label" (healthy donors, untreated samples), compared after strip + lower.
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null"})
_TRUE_TOKENS = frozenset({"inflamed", "involved", "yes", "true", "1", "y"})
_FALSE_TOKENS = frozenset(
    {"uninflamed", "non_inflamed", "noninflamed", "not_inflamed", "uninvolved", "non_involved", "no", "false", "0", "n"}
)


def resolve_obs_map(
    obs_map: Mapping[str, str] | None,
    *,
    patient_col: str | None,
    sample_col: str | None,
    label_col: str | None,
) -> dict[str, str]:
    """Merge `obs_map` and the ``*_col`` shortcuts into one ``{canonical: source column}`` mapping.

    Raises
    ------
    ConfigError
        An `obs_map` key is not a canonical name, or a ``*_col`` contradicts `obs_map`.
    """
    mapping = {k: v for k, v in (obs_map or {}).items() if v is not None}
    unknown = sorted(set(mapping) - set(CANONICAL_OBS))
    if unknown:
        msg = (
            f"obs_map keys must be canonical obs names; got {preview(unknown)} "
            f"(allowed: {preview(CANONICAL_OBS, 10)}). Fix data.obs_map in the experiment config."
        )
        raise ConfigError(msg)
    for canonical, column in ((_keys.PATIENT, patient_col), (_keys.SAMPLE, sample_col), (_keys.RESPONSE, label_col)):
        if column is None:
            continue
        if canonical in mapping and mapping[canonical] != column:
            msg = (
                f"{_CONFIG_KEY[canonical]}={column!r} contradicts obs_map[{canonical!r}]={mapping[canonical]!r}. "
                "Set only one of them."
            )
            raise ConfigError(msg)
        mapping[canonical] = column
    return mapping


def _config_key(canonical: str) -> str:
    return _CONFIG_KEY.get(canonical, f"data.obs_map.{canonical}")


def apply_obs_map(obs: pd.DataFrame, mapping: Mapping[str, str], *, source: str) -> pd.DataFrame:
    """Rename the mapped columns of `obs` to their canonical names.

    A pre-existing column that already carries a canonical name but is not the mapped source is kept
    as ``<name>_original``, so no information is silently overwritten.
    """
    obs = obs.copy()
    # 'patient_id': 'patient_id' (the config default) for an absent column means "not given": the
    # checks in finalize_obs then fall back or ask for the right column.
    mapping = {c: col for c, col in mapping.items() if not (c == col and col not in obs.columns)}
    missing = {canonical: column for canonical, column in mapping.items() if column not in obs.columns}
    if missing:
        canonical, column = next(iter(missing.items()))
        msg = (
            f"Column {column!r} (for {canonical}) not found in the metadata of {source} "
            f"(have: {preview(obs.columns, 12)}). "
            f"Set {_config_key(canonical)} in the experiment config to one of these."
        )
        raise DataSchemaError(msg)
    values = {canonical: obs[column].copy() for canonical, column in mapping.items()}
    sources = set(mapping.values())
    for canonical, column in mapping.items():
        if column != canonical and canonical in obs.columns and canonical not in sources:
            obs = obs.rename(columns={canonical: f"{canonical}_original"})
            logger.info("read_cohort: existing obs[%r] kept as obs[%r]", canonical, f"{canonical}_original")
    # Renaming drops the source column; one source may feed two canonical names (sample -> batch).
    obs = obs.drop(columns=[c for c in sources if c not in values and c in obs.columns])
    for canonical, series in values.items():
        obs[canonical] = series
    return obs


@dataclass(frozen=True)
class LabelSpec:
    """How raw response values become ``responder`` / ``non_responder``.

    A value is first replaced through `label_map` (None there means 'no label'); it is then kept
    if canonical (any case, ``-`` or space for ``_``), read as missing if blank/NA/None, mapped to
    ``non_responder`` if it equals `positive` and to ``responder`` if it equals `negative`
    (the positive class of this package is non-response); anything else is unknown.
    """

    label_map: Mapping[Any, str | None] = field(default_factory=dict)
    positive: str | None = None
    negative: str | None = None

    def canonical(self, value: Any) -> tuple[bool, str | None]:
        """Return ``(known, canonical label or None)`` for one raw value."""
        known, canonical, text = self._direct(value)
        if known:
            return known, canonical
        if self.positive is not None and text == str(self.positive).strip():
            return True, _keys.NON_RESPONDER
        if self.negative is not None and text == str(self.negative).strip():
            return True, _keys.RESPONDER
        return False, None

    def raw_classes(self) -> list[str]:
        """`positive` / `negative` values that are raw (neither canonical nor in `label_map`)."""
        return [str(v) for v in (self.positive, self.negative) if v is not None and not self._direct(v)[0]]

    def _direct(self, value: Any) -> tuple[bool, str | None, str]:
        """Resolve through `label_map`, missing tokens and canonical spellings only."""
        text = str(value).strip()
        for key in (value, text):
            try:
                if key in self.label_map:
                    target = self.label_map[key]
                    if target is None:
                        return True, None, text
                    text = str(target).strip()
                    break
            except TypeError:  # unhashable value
                continue
        if text.lower() in _MISSING_TOKENS:
            return True, None, text
        token = re.sub(r"[\s\-]+", "_", text.lower())
        token = _LABEL_ALIASES.get(token, token)
        if token in LABELS:
            return True, token, text
        return False, None, text

    def positive_label(self) -> str | None:
        """Canonical form of `positive` (None if not set).

        Raises
        ------
        DataSchemaError
            `positive` maps to no label.
        """
        if self.positive is None:
            return None
        known, canonical = self.canonical(self.positive)
        if not known or canonical is None:
            msg = (
                f"positive_label {self.positive!r} maps to 'no label' in label_map. "
                "Fix data.positive_label / data.label_map."
            )
            raise DataSchemaError(msg)
        return canonical


_LABEL_ALIASES = {
    "nonresponder": _keys.NON_RESPONDER,
    "non_responders": _keys.NON_RESPONDER,
    "responders": _keys.RESPONDER,
}


def normalize_labels(values: pd.Series, *, labels: LabelSpec, source: str) -> pd.Categorical:
    """Map response values to ``responder`` / ``non_responder`` (missing allowed).

    Raises
    ------
    DataSchemaError
        A value is neither canonical, nor mapped by `labels`, nor a missing-value token.
    """
    uniques = pd.unique(values.dropna())
    lookup: dict[Any, str | None] = {}
    unknown = []
    for value in uniques:
        known, canonical = labels.canonical(value)
        if not known:
            unknown.append(value)
        lookup[value] = canonical
    if unknown:
        found = preview(sorted(map(str, uniques)), 10)
        example = ", ".join(f"{str(v)!r}: ..." for v in unknown[:2])
        msg = (
            f"Unknown response labels {preview(map(str, unknown), 6)} in {source} (found: {found}); expected "
            f"{_keys.RESPONDER!r}/{_keys.NON_RESPONDER!r}. Set data.positive_label / data.negative_label to the raw "
            f"values, or data.label_map (read_cohort(label_map={{{example}}})) mapping each value to "
            "'responder', 'non_responder' or None."
        )
        raise DataSchemaError(msg)
    present = {str(v).strip() for v in uniques}
    absent = [v for v in labels.raw_classes() if v.strip() not in present]
    if absent and len(uniques):
        msg = (
            f"positive_label/negative_label {preview(absent)} not found among the response values of {source} "
            f"(found: {preview(sorted(present), 10)}). Fix data.positive_label / data.negative_label."
        )
        raise DataSchemaError(msg)
    mapped = values.astype(object).map(lookup)  # per unique value: fast for a million cells
    return pd.Categorical(mapped, categories=list(LABELS))


def _normalize_inflamed(values: pd.Series) -> pd.Series:
    """Map inflamed/involved/yes vs uninflamed/uninvolved/no (any case) to bool; leave other vocabularies as given."""
    tokens = {v: re.sub(r"[\s\-]+", "_", str(v).strip().lower()) for v in pd.unique(values.dropna())}
    if tokens and set(tokens.values()) <= (_TRUE_TOKENS | _FALSE_TOKENS):
        out = values.astype(object).map({v: t in _TRUE_TOKENS for v, t in tokens.items()})
        return out.astype(bool) if out.notna().all() else out.astype("boolean")
    logger.info("read_cohort: obs[%r] values %s kept as given (not all inflamed/uninflamed)", _keys.INFLAMED, tokens)
    return values


def finalize_obs(
    obs: pd.DataFrame,
    *,
    source: str,
    labels: LabelSpec,
    patient_from_sample: bool,
    label_required: bool,
) -> pd.DataFrame:
    """Check and fill the canonical columns of an already-renamed `obs`.

    Parameters
    ----------
    obs
        Metadata after :func:`apply_obs_map` (cells or samples as rows).
    source
        Name of the input, for messages.
    labels
        How raw response values map to canonical labels.
    patient_from_sample
        Formats without patient metadata (raw GEO / 10x files) fall back to one patient per sample,
        with a warning; the others raise.
    label_required
        Whether `response` must exist (a label column was requested).
    """
    obs = obs.copy()
    if _keys.PATIENT not in obs.columns:
        if patient_from_sample and _keys.SAMPLE in obs.columns:
            msg = (
                f"{source} has no patient column; assuming one patient per sample (patient_id = sample_id). "
                "Set data.patient_col (or pass a sample_sheet with a patient column) if samples share patients."
            )
            warnings.warn(msg, UserWarning, stacklevel=3)
            obs[_keys.PATIENT] = obs[_keys.SAMPLE]
        else:
            msg = (
                f"Column {_keys.PATIENT!r} not in the metadata of {source} (have: {preview(obs.columns, 12)}). "
                "Set data.patient_col in the experiment config (read_cohort(patient_col=...))."
            )
            raise DataSchemaError(msg)
    if _keys.SAMPLE not in obs.columns:
        logger.info(
            "read_cohort: no sample column in %s; using one sample per patient (sample_id = patient_id)", source
        )
        obs[_keys.SAMPLE] = obs[_keys.PATIENT]
    for column in (_keys.PATIENT, _keys.SAMPLE):
        n_missing = int(obs[column].isna().sum())
        if n_missing:
            msg = (
                f"{n_missing} of {len(obs)} rows of {source} have no {column} (column {column!r} has missing values). "
                f"Fill them or set {_config_key(column)} to a complete column."
            )
            raise DataSchemaError(msg)
        obs[column] = pd.Categorical(obs[column].astype(str))
    if _keys.BATCH not in obs.columns:
        obs[_keys.BATCH] = obs[_keys.SAMPLE]
    elif obs[_keys.BATCH].isna().any():
        obs[_keys.BATCH] = obs[_keys.BATCH].astype(object).fillna("unknown")
    obs[_keys.BATCH] = pd.Categorical(obs[_keys.BATCH].astype(str))
    if _keys.RESPONSE in obs.columns:
        obs[_keys.RESPONSE] = normalize_labels(obs[_keys.RESPONSE], labels=labels, source=source)
        _check_labels_per_patient(obs, source=source)
    elif label_required:
        msg = (
            f"Column {_keys.RESPONSE!r} not in the metadata of {source} (have: {preview(obs.columns, 12)}). "
            "Set data.label_col in the experiment config (read_cohort(label_col=...))."
        )
        raise DataSchemaError(msg)
    if _keys.INFLAMED in obs.columns:
        obs[_keys.INFLAMED] = _normalize_inflamed(obs[_keys.INFLAMED])
    return obs


def _check_labels_per_patient(obs: pd.DataFrame, *, source: str) -> None:
    labelled = obs.loc[obs[_keys.RESPONSE].notna(), [_keys.PATIENT, _keys.RESPONSE]]
    n_labels = labelled.groupby(_keys.PATIENT, observed=True)[_keys.RESPONSE].nunique()
    conflicting = n_labels[n_labels > 1].index.tolist()
    if conflicting:
        msg = (
            f"Patients {preview(conflicting)} of {source} have both responder and non_responder labels; "
            "response must be one value per patient. Check data.label_col and data.patient_col."
        )
        raise DataSchemaError(msg)


def load_sample_sheet(sheet: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Read a sample sheet (path or DataFrame); return it with string columns and its display name."""
    if isinstance(sheet, pd.DataFrame):
        return sheet.reset_index(drop=sheet.index.name is None), "sample_sheet"
    path = Path(sheet)
    if not path.exists():
        raise missing_path_error(path)
    return read_delimited(path, dtype=str), path.name


def _variants(sample_id: str) -> set[str]:
    """Ways a sample sheet may name a sample: 'GSM3972009_69' -> itself, 'GSM3972009', '69'."""
    variants = {sample_id}
    match = re.match(r"^(GSM\d+)[_\-.]?(.*)$", sample_id)
    if match:
        variants.add(match.group(1))
        if match.group(2):
            variants.add(match.group(2))
    return variants


def join_sample_sheet(
    sample_ids: list[str], sheet: pd.DataFrame, *, key_col: str | None, sheet_name: str
) -> pd.DataFrame:
    """Align `sheet` rows to `sample_ids` (one row per sample, index = sample_ids).

    The key column is `key_col` if given, else the sheet column matching most samples; values may be
    the full sample ID, its GSM accession, or the part after it (GEO 10x prefixes ``GSM123_69``).
    """
    lookup: dict[str, str] = {}
    ambiguous: set[str] = set()
    for sid in sample_ids:
        for variant in _variants(sid):
            if variant in lookup and lookup[variant] != sid:
                ambiguous.add(variant)
            lookup[variant] = sid
    for variant in ambiguous:
        lookup.pop(variant)

    def matched(column: str) -> pd.Series:
        return sheet[column].astype(str).str.strip().map(lookup)

    if key_col == _keys.SAMPLE and key_col not in sheet.columns:
        key_col = None  # the config default, not a choice: find the column by matching IDs
    if key_col is not None:
        if key_col not in sheet.columns:
            msg = (
                f"Sample column {key_col!r} not in {sheet_name} (have: {preview(sheet.columns, 12)}). "
                "Set data.sample_col to the sheet column that names the samples."
            )
            raise DataSchemaError(msg)
        column = key_col
    else:
        scores = {c: matched(c).nunique() for c in sheet.columns}
        column = max(scores, key=lambda c: scores[c]) if scores else None
        if column is None or scores[column] == 0:
            msg = (
                f"No column of {sheet_name} names the samples {preview(sample_ids, 3)} "
                f"(columns: {preview(sheet.columns, 12)}). Add a sample column or set data.sample_col."
            )
            raise DataSchemaError(msg)
    keys = matched(column)
    rows = sheet.assign(_sample=keys.to_numpy()).dropna(subset=["_sample"])
    if rows["_sample"].duplicated().any():
        dupes = rows.loc[rows["_sample"].duplicated(), "_sample"].unique()
        msg = f"{sheet_name} has several rows for samples {preview(dupes, 4)} (column {column!r}). Keep one row each."
        raise DataSchemaError(msg)
    absent = [s for s in sample_ids if s not in set(rows["_sample"])]
    if absent:
        msg = (
            f"{len(absent)} samples have no row in {sheet_name} (e.g. {preview(absent, 4)}; matched on column "
            f"{column!r}). Add rows for them or remove their files."
        )
        raise DataSchemaError(msg)
    extra = len(sheet) - len(rows)
    if extra:
        logger.info("read_cohort: %d rows of %s match no sample on disk; ignored", extra, sheet_name)
    return rows.set_index("_sample").reindex(sample_ids)


# ----------------------------------------------------------------------------------------------------------------------
# sample selection (data.query) and clinical tables (data.labels)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObsRules:
    """Which rows of a file to keep, and a clinical table to join to them, applied by every reader.

    Attributes
    ----------
    query
        A pandas query over the file's own metadata column names (before ``obs_map``), e.g.
        ``"timepoint == 'baseline' and tissue == 'ileum'"``; rows it does not keep are never read.
    clinical
        A patient (or sample) table: its key column is the file's patient column, or its sample column when it has
        one; its other columns (the label, age, sex, severity, ...) are joined to the metadata.
    clinical_name
        The table's name, for messages.
    """

    query: str | None = None
    clinical: pd.DataFrame | None = None
    clinical_name: str = "the clinical table"

    @property
    def active(self) -> bool:
        """Whether there is anything to apply."""
        return bool(self.query) or self.clinical is not None

    def select(self, meta: pd.DataFrame, *, source: str) -> np.ndarray | None:
        """Boolean mask of the rows `query` keeps (None: no query)."""
        if not self.query:
            return None
        try:
            keep = meta.eval(self.query, engine="python")
        except (NameError, KeyError) as err:  # pandas' UndefinedVariableError is a NameError
            name = str(err).split("'")[1] if "'" in str(err) else str(err)
            msg = (
                f"data.query {self.query!r} names column {name!r}, which is not in the metadata of {source} "
                f"(have: {preview(meta.columns, 12)}). Use the file's own column names in data.query (predict: --query)."
            )
            raise DataSchemaError(msg) from None
        except (SyntaxError, ValueError, TypeError) as err:
            msg = f"data.query {self.query!r} is not a valid pandas query on {source}: {str(err).splitlines()[0]}. Fix data.query (predict: --query)."
            raise DataSchemaError(msg) from None
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(meta),):
            msg = f"data.query {self.query!r} must give True/False per row of {source}; found {keep.dtype}. Fix data.query (predict: --query)."
            raise DataSchemaError(msg)
        logger.info("read_cohort: data.query keeps %d of %d rows of %s", int(keep.sum()), len(meta), source)
        if not keep.any():
            msg = f"data.query {self.query!r} keeps 0 of {len(meta)} rows of {source}. Check the values it compares with."
            raise DataSchemaError(msg)
        return keep

    def obs_part(self, mapping: Mapping[str, str], columns: Any) -> dict[str, str]:
        """Return the mapping entries the file's own metadata must satisfy (the clinical table supplies the rest)."""
        if self.clinical is None:
            return dict(mapping)
        present, supplied = set(columns), set(self.clinical.columns)
        return {c: col for c, col in mapping.items() if col in present or col not in supplied}

    def join(self, obs: pd.DataFrame, mapping: Mapping[str, str], *, labels: LabelSpec, source: str) -> pd.DataFrame:
        """Join the clinical table to already-renamed `obs` (canonical patient / sample columns present)."""
        if self.clinical is None:
            return obs
        table = self.clinical.copy()
        name = self.clinical_name
        sample_src, patient_src = mapping.get(_keys.SAMPLE, _keys.SAMPLE), mapping.get(_keys.PATIENT, _keys.PATIENT)
        if sample_src in table.columns and _keys.SAMPLE in obs.columns:
            key_src, key = sample_src, _keys.SAMPLE
        elif patient_src in table.columns and _keys.PATIENT in obs.columns:
            key_src, key = patient_src, _keys.PATIENT
        else:
            msg = (
                f"{name} has neither the patient column {patient_src!r} nor the sample column {sample_src!r} "
                f"(have: {preview(table.columns, 10)}). Name its id column like data.patient_col or data.sample_col."
            )
            raise DataSchemaError(msg)
        ids = table[key_src].astype(str).str.strip()
        if ids.duplicated().any():
            msg = f"{name} has several rows for {key_src} {preview(ids[ids.duplicated()].unique(), 4)}. Keep one row each."
            raise DataSchemaError(msg)
        renamed = {src: canonical for canonical, src in mapping.items() if src in table.columns and src != key_src}
        table = table.drop(columns=[key_src]).rename(columns=renamed)
        table.index = pd.Index(ids)
        have = obs[key].astype(str)
        matched = have.isin(table.index)
        unique_have = pd.unique(have)
        n_matched = int(pd.Series(unique_have).isin(table.index).sum())
        unmatched = [v for v in unique_have if v not in table.index]
        if n_matched == 0:
            msg = (
                f"No {key_src} of {source} is in {name}: 0 of {len(unique_have)} matched (e.g. {preview(unique_have, 3)} "
                f"vs the table's {preview(table.index, 3)}). Check that both use the same ids."
            )
            raise DataSchemaError(msg)
        if unmatched:
            logger.warning(
                "%s: %d of %d %s values of %s have no row (e.g. %s); they get no clinical values or label",
                name, len(unmatched), len(unique_have), key_src, source, preview(unmatched, 3),
            )  # fmt: skip
        obs = obs.copy()
        rows = table.reindex(have.to_numpy())
        rows.index = obs.index
        for column in table.columns:
            incoming = rows[column]
            if column not in obs.columns:
                obs[column] = incoming.to_numpy()
                continue
            both = obs[column].notna() & incoming.notna() & matched.to_numpy()
            if column == _keys.RESPONSE:
                left = obs.loc[both, column].map(lambda v: labels.canonical(v)[1])
                right = incoming[both].map(lambda v: labels.canonical(v)[1])
            else:
                left, right = obs.loc[both, column].astype(str), incoming[both].astype(str)
            bad = left != right
            if bad.any():
                i = bad.idxmax()
                msg = (
                    f"Column {column!r} disagrees between {source} and {name} for {key_src} {have[i]!r} "
                    f"({obs.loc[i, column]!r} vs {incoming[i]!r}). Fix one of them, or drop the column from one."
                )
                raise DataSchemaError(msg)
            obs[column] = obs[column].astype(object).where(obs[column].notna(), incoming.astype(object))
        logger.info("read_cohort: %s joined on %s: %d of %d matched", name, key_src, n_matched, len(unique_have))
        return obs


NO_RULES = ObsRules()


def load_clinical(path: str | Path) -> tuple[pd.DataFrame, str]:
    """Read a clinical CSV/TSV (all columns as text, numbers converted back) and its display name."""
    path = Path(path)
    if not path.exists():
        msg = f"Clinical table not found: {path} (resolved from {Path.cwd()}). Check data.labels in the experiment config."
        raise DataSchemaError(msg)
    table = read_delimited(path)
    if table.empty:
        msg = f"Clinical table {path} has no rows. Give one row per patient (or sample)."
        raise DataSchemaError(msg)
    return table, path.name
