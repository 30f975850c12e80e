"""One gene resolver: annotation markers, the AQP9 call and bulk genes find genes under their older HGNC symbols."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import biomarkers as bm
from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers._gene_names import resolve_genes
from biomarkers.features import bulk_features, bulk_settings
from biomarkers.signatures import alias_table, load_gene_sets

# Current symbol -> previous symbol, for genes that the simulated panel has and the markers use.
OLD_NAMES = {"CXCL8": "IL8", "SELENOP": "SEPP1", "CXCR2": "IL8RB", "JCHAIN": "IGJ"}


@pytest.fixture(scope="module")
def _cells():
    ad = bm.simulate_cohort(n_patients=4, cells_per_patient=80, n_genes=400, seed=0)
    bm.normalize(ad)
    return ad


@pytest.fixture
def cells(_cells):
    """Normalised small cohort with current symbols."""
    return _cells.copy()


def _renamed(ad):
    old = ad.copy()
    old.var_names = [OLD_NAMES.get(g, g) for g in ad.var_names]
    return old


def test_old_names_are_in_the_alias_table_and_panel(cells):
    pairs = set(zip(alias_table()["symbol"], alias_table()["alias"], strict=True))
    assert set(OLD_NAMES.items()) <= pairs
    assert set(OLD_NAMES) <= set(cells.var_names)
    used = {*CT.INFLAMMATORY_MAC_MARKERS, *CT.RESIDENT_MAC_MARKERS, *(g for gs in CT.MARKERS.values() for g in gs)}
    assert set(OLD_NAMES) <= used


def test_annotation_and_aqp9_call_unchanged_under_old_symbols(cells, caplog):
    new, old = cells, _renamed(cells)
    bm.annotate(new)
    bm.call_aqp9_macrophages(new)
    with caplog.at_level(logging.INFO, logger="biomarkers"):
        bm.annotate(old)
        bm.call_aqp9_macrophages(old)
    for key in (K.CELL_TYPE, K.CELL_TYPE_CONF, K.COMPARTMENT, K.AQP9_MAC, f"{K.AQP9_MAC}_score"):
        pd.testing.assert_series_equal(old.obs[key], new.obs[key])
    assert new.obs[K.AQP9_MAC].any()
    assert old.uns[K.BM]["annotate"]["markers_found"] == new.uns[K.BM]["annotate"]["markers_found"]
    assert old.uns[K.BM]["annotate"]["markers_renamed"] == {"CXCR2": "IL8RB", "JCHAIN": "IGJ"}
    assert old.uns[K.BM]["aqp9"]["genes_renamed"] == {"CXCL8": "IL8", "SELENOP": "SEPP1"}
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "annotate: markers matched by case or alias: CXCR2->IL8RB, JCHAIN->IGJ" in text
    assert "call_aqp9_macrophages: genes matched by case or alias: CXCL8->IL8, SELENOP->SEPP1" in text


def test_bulk_features_resolve_old_symbols():
    rng = np.random.default_rng(0)
    genes = ["CXCL8", "SELENOP", "OSM", "AQP9", "IL1B", "SOCS3", "CD14"]
    table = pd.DataFrame(rng.normal(size=(6, len(genes))), columns=genes, index=[f"s{i}" for i in range(6)])
    sets = load_gene_sets(["AQP9_INFLAMMATORY_MACROPHAGE"])
    settings = bulk_settings(
        gene_sets=sets, var_names=genes, families=["bulk_signatures", "bulk_genes"], genes=["IL8", "sepp1", "OSM"]
    )
    assert settings["genes"] == ["CXCL8", "SELENOP", "OSM"]  # frozen under the training cohort's names
    ref = bulk_features(table, **settings)
    old = table.rename(columns=OLD_NAMES)  # a new cohort named with previous symbols
    pd.testing.assert_frame_equal(bulk_features(old, **settings), ref)
    assert {"gz__CXCL8", "gz__SELENOP", "gz__OSM", "pbz__AQP9_INFLAMMATORY_MACROPHAGE"} <= set(ref.columns)
    assert ref.notna().all().all()


def test_resolve_genes_is_shared():
    from biomarkers.signatures import resolve_genes as public

    assert public is resolve_genes
    assert resolve_genes(["CXCL8", "cd14", "NOPE1"], ["IL8", "CD14"]) == ({"CXCL8": "IL8", "cd14": "CD14"}, ["NOPE1"])
