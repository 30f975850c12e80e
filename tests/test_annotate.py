"""Cell-type annotation from author labels (``preprocess.annotation: obs``) and its agreement with the marker call."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

import biomarkers as bm
from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers.preprocess._cell_type_map import TARGETS, cell_type_map, normalize_label, read_annotation_map

# Cell Ontology names, as a CELLxGENE dataset's obs['cell_type'] spells them, for the simulator's true states.
CELLXGENE = {
    CT.RESIDENT_MAC: "macrophage",
    CT.INFLAMMATORY_MAC: "inflammatory macrophage",
    CT.DENDRITIC: "conventional dendritic cell",
    CT.NEUTROPHIL: "neutrophil",
    CT.T_CELL: "CD4-positive, alpha-beta T cell",
    CT.B_CELL: "B cell",
    CT.PLASMA_IGA: "IgA plasma cell",
    CT.PLASMA_IGG: "IgG plasma cell",
    CT.FIBROBLAST: "fibroblast",
    CT.ENDOTHELIAL: "endothelial cell",
    CT.EPITHELIAL: "enterocyte",
}


@pytest.fixture(scope="module")
def _cells():
    ad = bm.simulate_cohort(n_patients=4, cells_per_patient=80, n_genes=400, seed=0)
    bm.normalize(ad)
    ad.obs[K.CELL_TYPE] = pd.Categorical(ad.obs[K.TRUE_CELL_TYPE].astype(str).map(CELLXGENE))
    return ad


@pytest.fixture
def cells(_cells):
    """Normalised small cohort whose obs['cell_type'] holds CELLxGENE names of the true cell types."""
    return _cells.copy()


def _truth(ad):
    return ad.obs[K.TRUE_CELL_TYPE].astype(str).map(CT.FINE_TO_MAJOR)


def _marker_call(ad):
    plain = ad.copy()
    del plain.obs[K.CELL_TYPE]
    bm.annotate(plain)
    return plain.obs[K.CELL_TYPE].astype(str)


def test_obs_annotation_reproduces_the_curated_labels(cells):
    original = cells.obs[K.CELL_TYPE].astype(str).copy()
    out = bm.annotate(cells, source="obs", copy=True)
    truth = _truth(cells)
    pd.testing.assert_series_equal(out.obs[K.CELL_TYPE].astype(str), truth, check_names=False)
    pd.testing.assert_series_equal(out.obs[K.COMPARTMENT].astype(str), truth.map(CT.COMPARTMENT_OF), check_names=False)
    pd.testing.assert_series_equal(out.obs[K.CELL_TYPE_AUTHOR].astype(str), original, check_names=False)
    assert (out.obs[K.CELL_TYPE_CONF] == 1).all()
    assert out.uns[K.BM]["annotate"]["params"]["source"] == "obs"
    # The AQP9+ call still runs on the mapped macrophages only.
    bm.call_aqp9_macrophages(out)
    assert not out.obs.loc[out.obs[K.CELL_TYPE] != CT.MACROPHAGE, K.AQP9_MAC].any()
    assert out.obs[K.AQP9_MAC].any()


def test_agreement_report_matches_an_independent_count(cells, caplog):
    with caplog.at_level(logging.INFO, logger="biomarkers"):
        out = bm.annotate(cells, source="obs", copy=True)
    agree = out.uns[K.BM]["annotate"]["agreement"]
    called, truth = _marker_call(cells), _truth(cells)
    same = called == truth
    assert agree["n_cells"] == cells.n_obs
    assert agree["cell_type"] == pytest.approx(same.mean())
    expected = same.groupby(truth).mean()
    assert agree["per_type"] == pytest.approx(expected.to_dict())
    assert agree["per_type_n"] == truth.value_counts().to_dict()
    comp_same = called.map(CT.COMPARTMENT_OF).fillna(CT.UNASSIGNED) == truth.map(CT.COMPARTMENT_OF)
    assert agree["compartment"] == pytest.approx(comp_same.mean())
    assert 0.9 < agree["cell_type"] < 1.0  # the simulator's markers are good, not perfect
    lines = [r.getMessage() for r in caplog.records if "agree with the marker call" in r.getMessage()]
    assert len(lines) == 1
    assert f"{100 * agree['cell_type']:.1f}%" in lines[0]


def test_unknown_labels_warn_once_and_are_left_unassigned(cells):
    labels = cells.obs[K.CELL_TYPE].astype(object)
    labels.iloc[:7] = "mystery cell"
    labels.iloc[7:9] = np.nan
    cells.obs[K.CELL_TYPE] = labels
    with pytest.warns(
        UserWarning, match=r"9 cells with 2 label\(s\).*'mystery cell' \(7\).*preprocess\.annotation_map"
    ) as rec:
        out = bm.annotate(cells, source="obs", copy=True)
    assert len(rec) == 1
    assert "\n" not in str(rec[0].message)
    assert (out.obs[K.CELL_TYPE].iloc[:9] == CT.UNASSIGNED).all()
    assert (out.obs[K.COMPARTMENT].iloc[:9] == CT.UNASSIGNED).all()
    used = pd.DataFrame(out.uns[K.BM]["annotate"]["labels"]).set_index("label")
    assert used.loc["mystery cell", "cell_type"] == ""
    assert used.loc["mystery cell", "n_cells"] == 7
    # The label mapped by the user is used; cells without a label stay unassigned and are still reported.
    with pytest.warns(UserWarning, match=r"2 cells with 1 label\(s\).*'\(missing\)' \(2\)"):
        fixed = bm.annotate(cells, source="obs", annotation_map={"Mystery Cell": "fibroblast"}, copy=True)
    assert (fixed.obs[K.CELL_TYPE].iloc[:7] == CT.FIBROBLAST).all()
    assert (fixed.obs[K.CELL_TYPE].iloc[7:9] == CT.UNASSIGNED).all()


def test_labels_match_ignoring_case_space_and_plural(cells):
    cells.obs[K.CELL_TYPE] = cells.obs[K.CELL_TYPE].astype(str).map(lambda s: f"  {s.upper().replace(' ', '_')}s ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = bm.annotate(cells, source="obs", copy=True)
    pd.testing.assert_series_equal(out.obs[K.CELL_TYPE].astype(str), _truth(cells), check_names=False)


def test_compartment_label_takes_the_type_from_markers(cells):
    # "plasma cell" names no isotype: the compartment is the author's, IgA vs IgG comes from IGHA/IGHG.
    plasma = _truth(cells).isin([CT.PLASMA_IGA, CT.PLASMA_IGG])
    cells.obs[K.CELL_TYPE] = cells.obs[K.CELL_TYPE].astype(str).where(~plasma, "plasma cell")
    out = bm.annotate(cells, source="obs", copy=True)
    assert (out.obs.loc[plasma, K.COMPARTMENT] == CT.PLASMA).all()
    assert (out.obs.loc[plasma, K.CELL_TYPE].astype(str) == _truth(cells)[plasma]).mean() >= 0.9
    assert out.obs.loc[plasma, K.CELL_TYPE_CONF].between(0, 1).all()


def test_markers_mode_keeps_the_author_column_and_reports_agreement(cells, caplog):
    with caplog.at_level(logging.INFO, logger="biomarkers"):
        out = bm.annotate(cells, copy=True)
    pd.testing.assert_series_equal(out.obs[K.CELL_TYPE].astype(str), _marker_call(cells), check_names=False)
    pd.testing.assert_series_equal(
        out.obs[K.CELL_TYPE_AUTHOR].astype(str), cells.obs[K.CELL_TYPE].astype(str), check_names=False
    )
    assert any("kept the input's obs['cell_type'] as obs['cell_type_author']" in r.getMessage() for r in caplog.records)
    report = out.uns[K.BM]["annotate"]
    assert report["agreement"]["cell_type"] == pytest.approx((_marker_call(cells) == _truth(cells)).mean())
    # Annotating again reads the kept column, not the package's own earlier call.
    again = bm.annotate(out, source="obs", copy=True)
    pd.testing.assert_series_equal(again.obs[K.CELL_TYPE].astype(str), _truth(cells), check_names=False)


def test_obs_annotation_without_the_column_is_one_line_error(cells):
    with pytest.raises(DataSchemaError, match=r"annotation_col.*'curated'.*have: .*patient_id") as e:
        bm.annotate(cells, source="obs", annotation_col="curated")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="annotation source 'cellxgene'"):
        bm.annotate(cells, source="cellxgene")


def test_annotation_map_files_and_bad_rows(tmp_path):
    tsv = tmp_path / "map.tsv"
    tsv.write_text("label\tcell_type\tnote\nLP macrophage\tmacrophage\tours\nMast\tunassigned\t\n")
    assert read_annotation_map(tsv) == {"LP macrophage": "macrophage", "Mast": "unassigned"}
    csv = tmp_path / "map.csv"
    csv.write_text("label,cell_type\nStromal 2,stroma\n")
    assert read_annotation_map(csv) == {"Stromal 2": "stroma"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tcell_type\nmy cell\tmonocyte\n")
    with pytest.raises(ConfigError, match=r"'monocyte', which is not a cell type.*Use one of: macrophage"):
        read_annotation_map(bad)
    (tmp_path / "cols.csv").write_text("name,type\na,b\n")
    with pytest.raises(ConfigError, match=r"lacks column.*label, cell_type"):
        read_annotation_map(tmp_path / "cols.csv")
    with pytest.raises(ConfigError, match="not found"):
        read_annotation_map(tmp_path / "absent.tsv")
    with pytest.raises(ConfigError, match="keep one row per label"):
        bm.annotate(
            bm.simulate_cohort(n_patients=4, cells_per_patient=20, n_genes=300),
            annotation_map={"A b": "B_cell", "a_B": "T_cell"},
        )


def test_package_table_is_consistent():
    table = cell_type_map()
    assert set(table["cell_type"]) <= set(TARGETS)
    keys = table["label"].map(normalize_label)
    assert not keys.duplicated().any(), table.loc[keys.duplicated(keep=False), "label"].tolist()
    assert set(CT.MAJOR_TYPES) <= set(table["cell_type"])
    # Our own type names (e.g. data annotated by this package) map to themselves.
    lookup = dict(zip(keys, table["cell_type"], strict=True))
    for fine, major in CT.FINE_TO_MAJOR.items():
        assert lookup[normalize_label(fine)] == major


def test_config_keys_reach_the_pipeline_and_round_trip(cells, tmp_path):
    from biomarkers.config import ExperimentConfig
    from biomarkers.features import DEFAULT_PLAN, FeaturePipeline, PreprocessParams
    from biomarkers.signatures import load_gene_sets

    path = tmp_path / "labels.tsv"
    path.write_text("label\tcell_type\nmystery cell\tfibroblast\n")
    cfg = ExperimentConfig(
        name="x", preprocess={"annotation": "obs", "annotation_map": str(path), "min_genes": 20, "min_counts": 50}
    )
    with pytest.raises(ValueError, match="annotation"):
        ExperimentConfig(name="x", preprocess={"annotation": "cellxgene"})
    params = PreprocessParams(**cfg.preprocess.model_dump())  # as cohort._pipeline builds it
    assert params.annotation_map == {"mystery cell": "fibroblast"}
    pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)), preprocess=params)
    d = json.loads(json.dumps(pipe.to_dict()))  # what travels with a model
    path.unlink()  # the model must not need the file any more
    back = FeaturePipeline.from_dict(d)
    assert back.preprocess == params
    raw = bm.simulate_cohort(n_patients=4, cells_per_patient=80, n_genes=400, seed=0)
    labels = raw.obs[K.TRUE_CELL_TYPE].astype(str).map(CELLXGENE)
    labels.iloc[:5] = "mystery cell"
    raw.obs[K.CELL_TYPE] = labels
    a, b = pipe.process(raw), back.process(raw)
    pd.testing.assert_series_equal(a.obs[K.CELL_TYPE], b.obs[K.CELL_TYPE])
    kept = a.obs_names.intersection(raw.obs_names[:5])
    assert (a.obs.loc[kept, K.CELL_TYPE] == CT.FIBROBLAST).all()
    assert a.uns[K.BM]["annotate"]["params"]["source"] == "obs"
    assert PreprocessParams().annotation_map == {}
    assert FeaturePipeline.from_dict({**d, "preprocess": {"min_genes": 10}}).preprocess.annotation == "markers"
