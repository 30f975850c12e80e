"""``ReadSpec``: how a cohort's files are read. One object, stored with the model, shared by training and predict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomarkers import _keys
from biomarkers._errors import DataSchemaError

from ._common import preview

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd

# Sample attributes that must agree among the samples kept for one patient (unless allowed): a patient's row
# then describes one kind of biopsy, e.g. baseline inflamed ileum, never baseline pooled with week 14.
SAMPLE_ATTRIBUTES = (_keys.TISSUE, _keys.TIMEPOINT, _keys.INFLAMED)


@dataclass(frozen=True)
class ReadSpec:
    """Reader settings: columns, labels, sample selection, clinical table.

    The experiment config's ``data`` section builds it (:meth:`from_config`); the registered model stores it
    (:meth:`to_dict`), and ``predict`` re-applies it (:meth:`for_predict`), so new files are read exactly as the
    training file was. Arguments are those of :func:`biomarkers.io.read_cohort`.
    """

    kind: str | None = None
    patient_col: str = _keys.PATIENT
    sample_col: str = _keys.SAMPLE
    label_col: str | None = _keys.RESPONSE
    positive_label: str | None = _keys.NON_RESPONDER
    negative_label: str | None = _keys.RESPONDER
    obs_map: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, str | None] = field(default_factory=dict)
    query: str | None = None
    clinical: str | None = None
    clinical_columns: tuple[str, ...] = ()
    allow_mixed_samples: bool = False

    @classmethod
    def from_config(cls, data: Any) -> ReadSpec:
        """Build from an experiment's ``data`` section (:class:`biomarkers.config.DataSpec`)."""
        return cls(
            kind=data.format,
            patient_col=data.patient_col,
            sample_col=data.sample_col,
            label_col=data.label_col,
            positive_label=data.positive_label,
            negative_label=data.negative_label,
            obs_map=dict(data.obs_map),
            label_map=dict(data.label_map),
            query=data.query,
            clinical=str(data.labels) if data.labels is not None else None,
            clinical_columns=_header(data.labels) if data.labels is not None else (),
            allow_mixed_samples=data.allow_mixed_samples,
        )

    def read_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`biomarkers.io.read_cohort` and :func:`biomarkers.io.iter_samples`."""
        return {
            "kind": self.kind,
            "obs_map": self.obs_map or None,
            "patient_col": self.patient_col,
            "sample_col": self.sample_col,
            "label_col": self.label_col,
            "positive_label": self.positive_label,
            "negative_label": self.negative_label,
            "label_map": self.label_map or None,
            "query": self.query,
            "clinical": self.clinical,
        }

    def for_predict(
        self,
        *,
        patient_col: str | None = None,
        sample_col: str | None = None,
        query: str | None = None,
        obs_map: Mapping[str, str] | None = None,
        clinical: str | None = None,
    ) -> ReadSpec:
        """Return the settings for new patients: the same columns and selection, no label; arguments override.

        The input format is detected again (a model trained on an h5ad may predict a 10x folder).
        """
        # The label, and columns the training clinical table supplied, are not expected in a file of new patients.
        supplied = set(self.clinical_columns)
        mapping = {k: v for k, v in self.obs_map.items() if k != _keys.RESPONSE and v not in supplied}
        mapping.update(obs_map or {})
        mapped_patient, mapped_sample = mapping.pop(_keys.PATIENT, None), mapping.pop(_keys.SAMPLE, None)
        return replace(
            self,
            kind=None,
            patient_col=patient_col or mapped_patient or self.patient_col,
            sample_col=sample_col or mapped_sample or self.sample_col,
            label_col=None,
            positive_label=None,
            negative_label=None,
            label_map={},
            obs_map=mapping,
            query=self.query if query is None else (query or None),
            clinical=clinical,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored with the model (the clinical table by file name only)."""
        d = asdict(self)
        d["clinical"] = Path(self.clinical).name if self.clinical else None
        d["clinical_columns"] = list(self.clinical_columns)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReadSpec:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored, missing ones take defaults)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["clinical_columns"] = tuple(known.get("clinical_columns", ()))
        return cls(**known)


def _header(path: Any) -> tuple[str, ...]:
    """Column names of a clinical table (empty when it cannot be read: reading it later gives the error)."""
    from ._common import read_delimited

    try:
        return tuple(map(str, read_delimited(Path(path), nrows=0).columns))
    except (DataSchemaError, OSError):
        return ()


def sample_table(obs: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: its patient and the sample attributes (tissue, timepoint, inflamed) present."""
    cols = [c for c in (_keys.PATIENT, *SAMPLE_ATTRIBUTES) if c in obs.columns]
    key = obs[_keys.SAMPLE].astype(str) if _keys.SAMPLE in obs.columns else obs[_keys.PATIENT].astype(str)
    table = obs[cols].astype(object).where(obs[cols].notna(), None).assign(**{_keys.SAMPLE: key.to_numpy()})
    return table.drop_duplicates().reset_index(drop=True)


def check_sample_mix(samples: pd.DataFrame, *, allow: bool, source: str) -> None:
    """Refuse patients whose kept samples differ in tissue, timepoint or inflamed status.

    Parameters
    ----------
    samples
        One row per sample (:func:`sample_table`), possibly concatenated from several chunks.
    allow
        ``data.allow_mixed_samples``: pool such samples anyway (logged).
    source
        The input, for the message.

    Raises
    ------
    DataSchemaError
        A patient's samples differ and `allow` is False.
    """
    for attr in SAMPLE_ATTRIBUTES:
        if attr not in samples.columns:
            continue
        per = samples.dropna(subset=[attr]).groupby(_keys.PATIENT, observed=True)[attr].agg(
            lambda v: sorted({str(x) for x in v})
        )
        mixed = per[per.map(len) > 1]
        if mixed.empty:
            continue
        example = f"{mixed.index[0]} has {attr} {', '.join(mixed.iloc[0])}"
        if allow:
            import logging

            logging.getLogger("biomarkers").warning(
                "%d patients of %s pool samples of different %s (e.g. %s): data.allow_mixed_samples is set",
                len(mixed), source, attr, example,
            )  # fmt: skip
            continue
        msg = (
            f"{len(mixed)} patients of {source} have samples that differ in {attr} (e.g. {example}; "
            f"patients: {preview(mixed.index, 4)}). A post-treatment biopsy reflects the outcome: keep one kind with "
            f"data.query (predict: --query; e.g. \"{attr} == '{mixed.iloc[0][0]}'\" in the file's own column "
            "names), or set data.allow_mixed_samples: true."
        )
        raise DataSchemaError(msg)
