"""Gene panel of the simulated cohort: the shipped reference table and the hand-written lineage programs.

The reference table (``data/reference_states_log2cpm.tsv.gz``) holds real HGNC symbols with their pseudobulk
log2(CPM + 1) in five cell states of pre-treatment inflamed IBD biopsies (TAURUS atlas, Thomas et al. 2024 Nat
Immunol). It is derived once by ``_derive.py`` (see ``data/README.md``); nothing here reads the original file.

The lineage programs below add what the five reference states cannot give (lymphocytes, plasma cells,
neutrophils, fibroblast vs endothelial cells). Levels are log2(CPM + 1), typical of gut scRNA-seq atlases
(Martin et al. 2019 Cell; Smillie et al. 2019 Cell; Kong et al. 2023 Immunity); they set which cells express a
gene, not exact values.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib.resources import files

import numpy as np
import pandas as pd

from biomarkers import _celltypes as ct
from biomarkers._errors import ConfigError
from biomarkers.datasets._effects import OSM_RESPONSE, STROMAL_STAT3_TARGETS

TABLE_NAME = "reference_states_log2cpm.tsv.gz"
REF_STATES: tuple[str, ...] = (
    "resident_like_macrophage",
    "inflammatory_monocyte",
    "other_myeloid",
    "stroma",
    "colonic_epithelium",
)
REQUIRED_COL = "required"
MIN_GENES = 50
# Genes every panel keeps, however small: the planted myeloid gene, its receptor and STAT3 targets, and AQP9.
KEY_GENES: tuple[str, ...] = ("OSM", "OSMR", "SOCS3", "STAT3", "AQP9")

MT_GENES: tuple[str, ...] = (
    "MT-ND1",
    "MT-ND2",
    "MT-CO1",
    "MT-ATP8",
    "MT-ATP6",
    "MT-CO2",
    "MT-CO3",
    "MT-ND3",
    "MT-ND4L",
    "MT-ND4",
    "MT-ND5",
    "MT-ND6",
    "MT-CYB",
)

# Internal expression states. Activated (mature, LAMP3+CCR7+) DCs are a sub-state of dendritic cells, so the
# ACTIVATED_DC program is expressed by part of the DCs only.
ACTIVATED_DC = "activated_dendritic_cell"
STATES: tuple[str, ...] = (
    ct.RESIDENT_MAC,
    ct.INFLAMMATORY_MAC,
    ct.DENDRITIC,
    ACTIVATED_DC,
    ct.NEUTROPHIL,
    ct.T_CELL,
    ct.B_CELL,
    ct.PLASMA_IGA,
    ct.PLASMA_IGG,
    ct.FIBROBLAST,
    ct.ENDOTHELIAL,
    ct.EPITHELIAL,
)
STATE_LABEL: dict[str, str] = {s: s for s in STATES} | {ACTIVATED_DC: ct.DENDRITIC}
MNP_STATES: tuple[str, ...] = (ct.RESIDENT_MAC, ct.INFLAMMATORY_MAC, ct.DENDRITIC, ACTIVATED_DC)
_MAJOR_STATES: dict[str, tuple[str, ...]] = {
    ct.MACROPHAGE: (ct.RESIDENT_MAC, ct.INFLAMMATORY_MAC),
    ct.DENDRITIC: (ct.DENDRITIC, ACTIVATED_DC),
}

# Base of each state: weights of reference states mixed in log space; "floor" is the per-gene minimum over the
# five reference states (housekeeping level without any lineage-specific gene).
FLOOR = "floor"
BASE_MIX: dict[str, dict[str, float]] = {
    ct.RESIDENT_MAC: {"resident_like_macrophage": 1.0},
    ct.INFLAMMATORY_MAC: {"inflammatory_monocyte": 1.0},
    ct.DENDRITIC: {"other_myeloid": 1.0},
    ACTIVATED_DC: {"other_myeloid": 1.0},
    ct.NEUTROPHIL: {"inflammatory_monocyte": 0.5, FLOOR: 0.5},
    ct.T_CELL: {FLOOR: 1.0},
    ct.B_CELL: {FLOOR: 1.0},
    ct.PLASMA_IGA: {FLOOR: 1.0},
    ct.PLASMA_IGG: {FLOOR: 1.0},
    ct.FIBROBLAST: {"stroma": 1.0},
    ct.ENDOTHELIAL: {"stroma": 1.0},
    ct.EPITHELIAL: {"colonic_epithelium": 1.0},
}

# Lineage-specific genes: owners get the level (None: keep the base level, at least DEFAULT_OWNER_LEVEL), every
# other state is capped at BACKGROUND_LEVEL (ambient RNA is added per sample on top).
DEFAULT_OWNER_LEVEL = 8.0
BACKGROUND_LEVEL = 1.0
_MYELOID = (*MNP_STATES, ct.NEUTROPHIL)
_IMMUNE = (*_MYELOID, ct.T_CELL, ct.B_CELL, ct.PLASMA_IGA, ct.PLASMA_IGG)
_PLASMA = (ct.PLASMA_IGA, ct.PLASMA_IGG)
SPECIFIC: dict[tuple[str, ...], dict[str, float | None]] = {
    _IMMUNE: {"PTPRC": 9.0, "CORO1A": 8.5, "LCP1": 9.0, "CD53": 8.5, "LAPTM5": 8.5},
    _MYELOID: {"TYROBP": None, "FCER1G": None, "LST1": None, "SPI1": None},
    (ct.T_CELL,): {
        "CCL5": 9.0, "NKG7": 8.0, "GZMA": 7.5, "GZMK": 6.5, "CD8B": 7.0, "TRBC1": 8.5, "TRBC2": 9.0, "LCK": 7.5,
        "ITK": 7.0, "CD6": 6.5, "CD5": 6.0, "CD28": 6.0, "KLRB1": 8.0, "CD7": 7.5, "CTSW": 7.0, "BCL11B": 6.5,
        "CD3D": 9.5, "CD3E": 9.0, "CD3G": 8.0, "CD2": 8.5, "TRAC": 9.0, "CD8A": 7.5, "IL7R": 8.5, "CD247": 8.0,
    },
    (ct.B_CELL,): {
        "MS4A1": 9.5, "CD79A": 10.0, "CD79B": 9.0, "CD19": 6.5, "BANK1": 7.5, "CD22": 7.0, "PAX5": 6.5,
        "TNFRSF13C": 7.0, "FCRL1": 6.0, "TCL1A": 7.0, "IGHM": 10.0, "IGHD": 8.0, "CXCR5": 6.5,
    },
    _PLASMA: {
        "MZB1": 10.0, "SDC1": 7.0, "XBP1": 10.0, "DERL3": 8.0, "FKBP11": 8.0, "TNFRSF17": 7.5, "TXNDC5": 9.0,
        "IGKC": 16.5, "IGLC2": 15.0, "IGLC3": 13.0,
    },
    (ct.PLASMA_IGA,): {"IGHA1": 17.5, "IGHA2": 15.0, "JCHAIN": 14.5},
    (ct.PLASMA_IGG,): {"IGHG1": 17.0, "IGHG2": 15.0, "IGHG3": 15.0, "IGHG4": 14.5, "JCHAIN": 11.0},
    (ct.NEUTROPHIL,): {
        "CSF3R": 9.5, "FCGR3B": 10.5, "CXCR2": 9.0, "CMTM2": 8.0, "FPR1": 9.0, "PROK2": 8.0, "S100A12": 10.0,
        "KCNJ15": 7.0, "FFAR2": 8.0, "HCAR3": 8.5, "TREM1": 8.0, "MNDA": 9.5,
    },
    (ct.DENDRITIC, ACTIVATED_DC): {
        "CD1C": 8.5, "FCER1A": 8.0, "CLEC10A": 8.5, "CLEC9A": 7.0, "XCR1": 6.5, "LAMP3": 5.0, "CCR7": 5.0,
        "HLA-DQA1": 10.5,
    },
    (ct.FIBROBLAST,): {
        "COL1A1": 11.5, "COL1A2": 11.5, "COL3A1": 12.0, "DCN": 11.0, "LUM": 10.5, "PDGFRA": 8.0, "COL6A2": 10.0,
        "COL6A1": 10.0, "COL6A3": 9.5, "ADH1B": 8.0, "CFD": 10.0, "MMP2": 9.0, "C7": 7.0, "PDGFRB": 8.0,
    },
    (ct.ENDOTHELIAL,): {
        "PECAM1": 9.5, "VWF": 10.0, "CDH5": 8.5, "PLVAP": 10.0, "CLDN5": 8.5, "ENG": 8.5, "RAMP2": 10.0,
        "EGFL7": 9.0, "AQP1": 9.0, "ACKR1": 8.5, "SELE": 7.0, "SELP": 6.5, "ESAM": 8.5, "EMCN": 8.5, "KDR": 7.5,
    },
    (ct.EPITHELIAL,): dict.fromkeys(
        ("FABP1", "LGALS4", "PHGR1", "KRT19", "CLDN4", "ELF3", "TFF3", "MUC2", "OLFM4", "CEACAM5", "CEACAM6",
         "SLC26A3", "CA1", "AQP8", "CLDN7", "TSPAN8", "EPCAM", "KRT8", "KRT18", "KRT20", "VIL1", "CDH17", "PIGR"),
    ),
}  # fmt: skip
# Markers of _celltypes.MARKERS not listed above: their owners get at least DEFAULT_OWNER_LEVEL.

# Shared genes: set for the listed states only, nothing capped elsewhere.
SHARED: dict[str, dict[str, float]] = {
    ct.B_CELL: {"CD74": 12.0, "HLA-DRA": 12.0, "HLA-DQA1": 8.0, "CD37": 9.0, "IGKC": 11.0, "IGLC2": 10.0},
    ct.T_CELL: {"CD52": 9.0, "CXCR4": 9.5, "CD69": 9.0, "RAC2": 8.0},
    # AQP9: the atlas pseudobulk (7.0) averages AQP9+ and AQP9- monocytes; the AQP9+ state itself is higher.
    ct.INFLAMMATORY_MAC: {"AQP9": 8.0, "MNDA": 8.0, "S100A12": 7.5, "HLA-DQA1": 8.0},
    ct.RESIDENT_MAC: {"HLA-DQA1": 8.5},
    ct.FIBROBLAST: {"CD34": 6.5, "SPARC": 10.5},
    ct.ENDOTHELIAL: {"CD34": 8.0, "SPARC": 9.5},
    # OSM: the "other myeloid" reference includes monocytes and mast cells; DCs make little OSM.
    ACTIVATED_DC: {"LAMP3": 9.0, "CCR7": 9.0, "LYZ": 8.5, "OSM": 4.0},
    ct.DENDRITIC: {"LYZ": 9.5, "OSM": 4.0},
    # Neutrophils share much of the inflammatory program with AQP9+ macrophages (AQP9 included), and make OSM.
    ct.NEUTROPHIL: {
        "AQP9": 7.5, "S100A8": 13.0, "S100A9": 13.0, "CXCL8": 10.0, "G0S2": 10.0, "IL1B": 8.0, "SOD2": 9.0,
        "FPR2": 7.5, "CXCL2": 8.0, "NINJ1": 7.0, "IL1RN": 7.0, "GPR84": 6.0, "OSM": 6.5, "BCL2A1": 9.0,
        "SLC2A3": 8.5, "NCF2": 8.0, "C5AR1": 8.0, "APOBEC3A": 7.5, "IL1R2": 7.0, "PTGS2": 7.0, "LYZ": 6.0,
    },
}  # fmt: skip

# Mast-cell genes: the "other myeloid" reference state contains mast cells, which the cohort does not model.
MAST_GENES: tuple[str, ...] = ("CPA3", "TPSAB1", "TPSB2", "KIT", "MS4A2", "HDC", "GATA2", "CLC", "HPGDS")


def lineage_genes() -> set[str]:
    """Return every gene named by a lineage program, a marker table or the MT list."""
    genes = {g for prog in SPECIFIC.values() for g in prog}
    genes |= {g for prog in SHARED.values() for g in prog}
    genes |= {g for markers in ct.MARKERS.values() for g in markers}
    genes |= set(ct.INFLAMMATORY_MAC_MARKERS) | set(ct.RESIDENT_MAC_MARKERS) | set(MT_GENES)
    return genes


def marker_owner_states(major: str) -> tuple[str, ...]:
    """Return the internal states that express the markers of a major cell type."""
    return _MAJOR_STATES.get(major, (major,))


@lru_cache(maxsize=1)
def reference_table() -> pd.DataFrame:
    """Return the shipped reference table (genes x reference states, log2 CPM + 1) with its `required` flag."""
    path = files("biomarkers.datasets").joinpath("data", TABLE_NAME)
    with path.open("rb") as fh, gzip.open(fh, "rt") as text:
        table = pd.read_csv(text, sep="\t", index_col=0)
    table[REQUIRED_COL] = table[REQUIRED_COL].astype(bool)
    return table


def _priority(required: pd.Index) -> list[str]:
    """Order the required genes for panels too small to hold them all.

    MT genes and the planted key genes first, then the markers one per cell type in turn (so that every cell
    type keeps some), then the planted stromal genes, then the remaining required genes by expression.
    """
    marker_lists = [*ct.MARKERS.values(), ct.INFLAMMATORY_MAC_MARKERS, ct.RESIDENT_MAC_MARKERS]
    round_robin = [m[i] for i in range(max(map(len, marker_lists))) for m in marker_lists if i < len(m)]
    ordered = [*MT_GENES, *KEY_GENES, *round_robin, *OSM_RESPONSE, *STROMAL_STAT3_TARGETS, *required]
    return list(dict.fromkeys(ordered))


def select_panel(n_genes: int) -> pd.DataFrame:
    """Return the reference rows of an `n_genes` panel.

    With ``n_genes`` at least the number of required genes (gene sets, markers, lineage programs, MT genes;
    379), the panel holds all of them plus the most expressed other genes. Smaller panels (for fast tests) keep
    the required genes in `_priority` order.

    Parameters
    ----------
    n_genes
        Number of genes in the panel.

    Returns
    -------
    Reference table rows of the panel, sorted by gene symbol.
    """
    table = reference_table()
    required = table.index[table[REQUIRED_COL].to_numpy()]
    missing = sorted(lineage_genes() - set(table.index))
    if missing:
        msg = (
            f"Simulator reference table lacks {len(missing)} marker/program genes ({', '.join(missing[:5])}). "
            "Re-derive it with `python -m biomarkers.datasets._derive`."
        )
        raise ConfigError(msg)
    if not MIN_GENES <= n_genes <= len(table):
        msg = (
            f"n_genes={n_genes} is out of range: the simulator needs at least {MIN_GENES} genes (MT genes, key "
            f"genes, some markers per cell type) and its reference table has {len(table)}. Pass n_genes between "
            f"these; {len(required)} or more keeps every gene-set gene and marker."
        )
        raise ConfigError(msg)
    if n_genes < len(required):
        return table.loc[np.sort(_priority(required)[:n_genes])]
    others = table.index[~table[REQUIRED_COL].to_numpy()][: n_genes - len(required)]
    return table.loc[np.sort(np.concatenate([required.to_numpy(), others.to_numpy()]))]
