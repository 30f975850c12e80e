"""Sample selection (data.query), clinical tables (data.labels) and the reader settings shared with predict."""

from __future__ import annotations

import pandas as pd
import pytest

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError
from biomarkers.io import ReadSpec, check_sample_mix, sample_table
from biomarkers.io._obs import LabelSpec, ObsRules


def _obs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            K.PATIENT: ["p1", "p1", "p2", "p2", "p3"],
            K.SAMPLE: ["s1", "s2", "s3", "s4", "s5"],
            K.RESPONSE: ["NR", "NR", None, None, "R"],
        },
        index=[f"c{i}" for i in range(5)],
    )


def test_clinical_table_keyed_by_patient_fills_labels_and_covariates():
    table = pd.DataFrame({"donor": ["p1", "p2", "p3"], "outcome": ["NR", "R", "R"], "age": [30, 40, 50]})
    rules = ObsRules(clinical=table)
    obs = rules.join(_obs(), {K.PATIENT: "donor", K.RESPONSE: "outcome"}, labels=LabelSpec(positive="NR", negative="R"),
                     source="cells")  # fmt: skip
    assert obs[K.RESPONSE].tolist() == ["NR", "NR", "R", "R", "R"]
    assert obs["age"].tolist() == [30, 30, 40, 40, 50]


def test_clinical_table_keyed_by_sample_when_it_has_the_sample_column():
    table = pd.DataFrame({"library": ["s1", "s2", "s3", "s4", "s5"], "week": [0, 14, 0, 14, 0]})
    obs = ObsRules(clinical=table).join(_obs(), {K.SAMPLE: "library"}, labels=LabelSpec(), source="cells")
    assert obs["week"].tolist() == [0, 14, 0, 14, 0]


def test_labels_in_both_must_agree():
    table = pd.DataFrame({K.PATIENT: ["p1", "p2", "p3"], K.RESPONSE: ["R", "R", "R"]})  # p1 is NR in obs
    with pytest.raises(DataSchemaError, match="disagrees between cells and the clinical table for patient_id 'p1'"):
        ObsRules(clinical=table).join(_obs(), {}, labels=LabelSpec(positive="NR", negative="R"), source="cells")


def test_labels_agree_across_vocabularies():
    # obs says NR/R, the table says non_responder/responder: the same labels once canonical.
    table = pd.DataFrame({K.PATIENT: ["p1", "p3"], K.RESPONSE: ["non_responder", "responder"]})
    obs = ObsRules(clinical=table).join(_obs(), {}, labels=LabelSpec(positive="NR", negative="R"), source="cells")
    assert obs[K.RESPONSE].tolist()[:2] == ["NR", "NR"]  # no disagreement raised, obs values kept
    assert pd.isna(obs.loc["c2", K.RESPONSE])  # p2 is not in the table: still unlabelled


def test_duplicate_clinical_rows_are_refused():
    table = pd.DataFrame({K.PATIENT: ["p1", "p1"], "age": [1, 2]})
    with pytest.raises(DataSchemaError, match="several rows for patient_id p1"):
        ObsRules(clinical=table).join(_obs(), {}, labels=LabelSpec(), source="cells")


@pytest.mark.parametrize(
    ("query", "match"),
    [("visit == 1", "names column 'visit'"), ("patient_id ==", "not a valid pandas query"), ("patient_id == 'x'", "keeps 0 of 5")],
)
def test_bad_queries_are_one_clear_line(query, match):
    with pytest.raises(DataSchemaError, match=match):
        ObsRules(query=query).select(_obs(), source="cells")


def test_mixed_samples_are_refused_unless_allowed():
    obs = _obs().assign(**{K.TIMEPOINT: ["baseline", "week14", "baseline", "baseline", "baseline"]})
    with pytest.raises(DataSchemaError, match="1 patients of cells have samples that differ in timepoint"):
        check_sample_mix(sample_table(obs), allow=False, source="cells")
    check_sample_mix(sample_table(obs), allow=True, source="cells")


def test_read_spec_round_trips_and_drops_labels_for_predict():
    spec = ReadSpec(patient_col="donor", sample_col="lib", label_col="outcome", positive_label="NR",
                    obs_map={"tissue": "site", K.RESPONSE: "outcome"}, query="site == 'ileum'")  # fmt: skip
    assert ReadSpec.from_dict(spec.to_dict()) == spec
    new = spec.for_predict()
    assert (new.label_col, new.positive_label, new.query) == (None, None, "site == 'ileum'")
    assert new.obs_map == {"tissue": "site"}
    assert spec.for_predict(query="").query is None
    assert spec.for_predict(patient_col="subject").patient_col == "subject"
