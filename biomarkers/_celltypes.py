"""Cell types of an inflamed ileal/colonic biopsy, their compartments and published markers.

Markers are canonical, widely used gut scRNA-seq markers (Martin et al. 2019 Cell; Smillie et al.
2019 Cell; Kong et al. 2023 Immunity). Annotation uses them on real data, and the simulator uses
the same table so that the two agree on names.
"""

from __future__ import annotations

# Major cell types: the labels that annotation writes to obs["cell_type"].
MACROPHAGE = "macrophage"
DENDRITIC = "dendritic_cell"
NEUTROPHIL = "neutrophil"
T_CELL = "T_cell"
B_CELL = "B_cell"
PLASMA_IGA = "IgA_plasma"
PLASMA_IGG = "IgG_plasma"
FIBROBLAST = "fibroblast"
ENDOTHELIAL = "endothelial"
EPITHELIAL = "epithelial"

MAJOR_TYPES: tuple[str, ...] = (
    MACROPHAGE,
    DENDRITIC,
    NEUTROPHIL,
    T_CELL,
    B_CELL,
    PLASMA_IGA,
    PLASMA_IGG,
    FIBROBLAST,
    ENDOTHELIAL,
    EPITHELIAL,
)

# Fine states the simulator plants (true_cell_type); both macrophage states are MACROPHAGE.
RESIDENT_MAC = "resident_macrophage"
INFLAMMATORY_MAC = "inflammatory_macrophage"  # AQP9+ inflammatory macrophage/monocyte (GIMATS)
FINE_TO_MAJOR: dict[str, str] = {
    RESIDENT_MAC: MACROPHAGE,
    INFLAMMATORY_MAC: MACROPHAGE,
    **{t: t for t in MAJOR_TYPES if t != MACROPHAGE},
}

# Compartments, for per-compartment signature scores and pseudobulk.
MNP = "MNP"  # mononuclear phagocytes
GRANULOCYTE = "granulocyte"
LYMPHOID = "lymphoid"
PLASMA = "plasma"
STROMA = "stroma"
EPITHELIUM = "epithelium"
COMPARTMENT_OF: dict[str, str] = {
    MACROPHAGE: MNP,
    DENDRITIC: MNP,
    NEUTROPHIL: GRANULOCYTE,
    T_CELL: LYMPHOID,
    B_CELL: LYMPHOID,
    PLASMA_IGA: PLASMA,
    PLASMA_IGG: PLASMA,
    FIBROBLAST: STROMA,
    ENDOTHELIAL: STROMA,
    EPITHELIAL: EPITHELIUM,
}
COMPARTMENTS: tuple[str, ...] = (MNP, GRANULOCYTE, LYMPHOID, PLASMA, STROMA, EPITHELIUM)
# Cells of none of the major types (marker scores too low, or an author label we do not model): they count in
# n_cells but are left out of every compartment feature.
UNASSIGNED = "unassigned"

# Positive markers per major type. Kept short and specific: annotation scores each list.
MARKERS: dict[str, tuple[str, ...]] = {
    MACROPHAGE: ("CD68", "CD14", "C1QA", "C1QB", "C1QC", "CD163", "LYZ", "CSF1R", "MS4A7", "AIF1"),
    DENDRITIC: ("CD1C", "FCER1A", "CLEC10A", "CLEC9A", "XCR1", "LAMP3", "CCR7", "HLA-DQA1"),
    NEUTROPHIL: ("CSF3R", "FCGR3B", "CXCR2", "CMTM2", "FPR1", "MNDA", "PROK2"),
    # NK and ILC markers too: at this resolution they are lymphoid cytotoxic cells, not myeloid (FCGR3A is on NK cells).
    T_CELL: ("CD3D", "CD3E", "CD3G", "CD2", "TRAC", "CD8A", "IL7R", "CD247", "NKG7"),
    B_CELL: ("MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "CD22", "PAX5"),
    PLASMA_IGA: ("IGHA1", "IGHA2", "JCHAIN", "MZB1", "SDC1", "XBP1"),
    PLASMA_IGG: ("IGHG1", "IGHG2", "IGHG3", "IGHG4", "MZB1", "SDC1", "XBP1"),
    FIBROBLAST: ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "PDGFRA", "COL6A2"),
    ENDOTHELIAL: ("PECAM1", "VWF", "CDH5", "PLVAP", "CLDN5", "ENG"),
    EPITHELIAL: ("EPCAM", "KRT8", "KRT18", "KRT20", "VIL1", "CDH17", "PIGR"),
}

# AQP9+ inflammatory vs resident macrophage markers within MNPs (Martin et al. 2019).
INFLAMMATORY_MAC_MARKERS: tuple[str, ...] = ("AQP9", "S100A8", "S100A9", "IL1B", "CXCL8", "FCN1", "VCAN", "G0S2")
RESIDENT_MAC_MARKERS: tuple[str, ...] = ("C1QA", "C1QB", "SELENOP", "FOLR2", "LYVE1", "MRC1", "CD163L1", "STAB1")
