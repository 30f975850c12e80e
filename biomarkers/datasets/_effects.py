"""Planted expression effects of non-response: the gp130/OSM-STAT3 axis.

Oncostatin M from inflammatory monocytes/macrophages and neutrophils acts on OSMR/gp130 of stromal cells and
drives STAT3 targets; high OSM and a stromal OSM response mark anti-TNF non-response (West et al. 2017 Nat Med;
Martin et al. 2019 Cell). The epithelium responds mildly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomarkers import _celltypes as ct

# OSM_RESPONSE gene set (copied from the shipped gene-set table; a test checks they agree).
OSM_RESPONSE: tuple[str, ...] = (
    "SOCS3", "TGM2", "IL1R1", "OSMR", "CEBPD", "SERPING1", "TIMP1", "IFNGR1", "GK", "RAB27A", "IFITM1", "BHLHE40",
    "LRP10", "IL4R", "GBP2", "PLSCR1", "ZFP36", "CASP4", "IRF9", "SERPINB1", "AQP3", "TXNIP", "GADD45B", "PROS1",
    "LIMK2", "APOL2", "IFITM2", "NMI", "C1RL", "KDSR", "IFITM3", "LY96", "STAT3", "NAMPT", "FOSL2", "CARHSP1",
    "STAT1", "IER3", "HLA-E", "TNFRSF21", "STOM", "TNFRSF1A", "NRP1", "CPT1A", "IRF1", "IL13RA1", "GOLM1",
    "IL1RAP", "EDN1", "ADM",
)  # fmt: skip
# STAT3 targets of the IL6_JAK_STAT3 set that stromal cells induce (the set also holds lymphoid and
# myeloid genes, which are left alone).
STROMAL_STAT3_TARGETS: tuple[str, ...] = (
    "SOCS3", "STAT3", "OSMR", "JUN", "PIM1", "HMOX1", "CD44", "TNFRSF12A", "IL4R", "IRF1", "IL1R1", "TNFRSF1A",
    "CXCL1", "LTBR", "FAS", "IL6", "IL6ST", "SOCS1", "MAP3K8", "CEBPD",
    # STAT3/STAT1 targets and receptors that gut fibroblasts express (Smillie et al. 2019; West et al. 2017)
    "PTPN1", "PTPN2", "CSF1", "TGFB1", "IL15RA", "PDGFC", "A2M", "CD9", "IL10RB", "STAT2", "IFNGR2", "ACVR1B",
)  # fmt: skip
OSM_LOG2FC = 1.2  # log2 fold change of OSM per unit of program activity
STROMA_LOG2FC_RANGE = (0.3, 0.9)  # per-gene log2 fold change per unit activity, drawn uniformly
STROMA_CORE = ("OSMR", "SOCS3")  # the receptor and the canonical STAT3 target respond most
STROMA_CORE_LOG2FC = 1.0
EPITHELIUM_SCALE = 0.35  # epithelium responds with about a third of the stromal fold changes

# Effect name -> program (see _cohort.PROGRAMS), states, compartments.
MYELOID_OSM = "myeloid_osm"
STROMA_OSM_RESPONSE = "stroma_osm_response"
EPITHELIUM_OSM_RESPONSE = "epithelium_osm_response"


@dataclass(frozen=True)
class Effect:
    """One planted expression effect.

    Attributes
    ----------
    name
        Effect name (key of ``uns['truth']['effects']``).
    program
        Program whose patient activity scales the effect.
    states
        Internal states that carry it.
    genes
        Gene symbols.
    positions
        Positions of `genes` among the non-MT genes of the panel.
    log2fc
        log2 fold change of each gene per unit of program activity.
    """

    name: str
    program: str
    states: tuple[str, ...]
    genes: np.ndarray
    positions: np.ndarray
    log2fc: np.ndarray


def plant_effects(rng: np.random.Generator, *, nonmt_genes: np.ndarray) -> list[Effect]:
    """Return the planted effects over a panel's non-MT genes.

    Parameters
    ----------
    rng
        Random generator of the cohort (draws the per-gene stromal fold changes).
    nonmt_genes
        Non-MT gene symbols of the panel, in panel order.

    Returns
    -------
    The effects, in a fixed order.
    """
    pos = {g: i for i, g in enumerate(nonmt_genes)}
    stroma = [g for g in dict.fromkeys(OSM_RESPONSE + STROMAL_STAT3_TARGETS) if g in pos]
    stroma_fc = rng.uniform(*STROMA_LOG2FC_RANGE, size=len(stroma))
    stroma_fc[np.isin(stroma, STROMA_CORE)] = STROMA_CORE_LOG2FC
    epi_mask = np.isin(stroma, OSM_RESPONSE)
    specs = (
        (MYELOID_OSM, "osm", (ct.INFLAMMATORY_MAC, ct.NEUTROPHIL), ["OSM"], np.array([OSM_LOG2FC])),
        (STROMA_OSM_RESPONSE, "osm_response", (ct.FIBROBLAST, ct.ENDOTHELIAL), stroma, stroma_fc),
        (
            EPITHELIUM_OSM_RESPONSE,
            "osm_response",
            (ct.EPITHELIAL,),
            [g for g, m in zip(stroma, epi_mask, strict=True) if m],
            EPITHELIUM_SCALE * stroma_fc[epi_mask],
        ),
    )
    return [
        Effect(
            name=name,
            program=program,
            states=states,
            genes=np.asarray(genes, dtype=object),
            positions=np.array([pos[g] for g in genes], dtype=int),
            log2fc=np.asarray(fc, dtype=float),
        )
        for name, program, states, genes, fc in specs
    ]
