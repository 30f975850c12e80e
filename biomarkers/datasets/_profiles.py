"""Mean expression profile of each simulated cell state over a gene panel.

Start from the reference states (TAURUS pseudobulk, see ``_genes``), then impose the lineage programs, the
macrophage/DC programs of the gene sets (Martin et al. 2019: AQP9+ inflammatory vs resident macrophages, a
shared macrophage core, activated DCs) and the shared genes. Every level is log2(CPM + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from biomarkers import _celltypes as ct
from biomarkers.datasets import _genes as gn

# Gene sets of the shipped signature table whose genes are listed here as well, so that the simulator does not
# read the signatures package (data flows datasets -> signatures, never back). A test checks they agree.
AQP9_PROGRAM: tuple[str, ...] = (
    "INHBA", "CLEC5A", "MARCO", "IL6", "CXCL10", "AQP9", "IL1RN", "GPR84", "LILRA1", "SOD2", "SLAMF9", "G0S2",
    "CD300E", "IL1A", "CCL3", "CXCL2", "SERPINB2", "CXCL8", "S100A8", "CXCL3", "S100A9", "DRAM1", "CCL3L3",
    "NINJ1", "KMO", "FPR2", "IRAK2", "IL1B", "PILRA",
)  # fmt: skip
RESIDENT_PROGRAM: tuple[str, ...] = (
    "CD163L1", "LILRB5", "FOLR2", "FUCA1", "GPNMB", "APOC1", "LGMN", "STAB1", "SELENOP", "CSF1R", "MS4A4A",
    "SLC40A1", "SLCO2B1", "MAFB", "MRC1", "DAB2", "CD209", "DNASE1L3", "RGS2", "JAML", "VSIG4", "CPVL", "CLEC10A",
    "RNASE6", "CEBPD",
)  # fmt: skip
MACROPHAGE_CORE: tuple[str, ...] = ("C1QA", "C1QB", "C1QC", "CD14", "CD68", "FCGR3A", "PLD3")
ACTIVATED_DC_PROGRAM: tuple[str, ...] = ("CCL19", "CCL22", "FSCN1", "CCL17", "LAMP3", "CD274", "EBI3", "CD80", "CCR7")

INFLAMMATORY_MIN = 6.5  # AQP9-program floor in inflammatory macrophages
INFLAMMATORY_GAP = 2.5  # log2 gap of the AQP9 program: inflammatory over resident macrophages and DCs
RESIDENT_MIN = 7.0
RESIDENT_GAP = 2.0
CORE_MIN = 8.0
ACTIVATED_DC_LEVEL = 8.5
RESTING_DC_MAX = 4.0
FLOOR_CPM = 0.05  # every gene is detectable now and then

# Healthy-cell MT fraction and median library size (UMIs) per state: epithelium and plasma cells are the
# MT-richest and the largest, neutrophils the smallest (gut scRNA-seq atlases).
MT_FRACTION: dict[str, float] = {
    ct.RESIDENT_MAC: 0.045, ct.INFLAMMATORY_MAC: 0.045, ct.DENDRITIC: 0.04, gn.ACTIVATED_DC: 0.04,
    ct.NEUTROPHIL: 0.03, ct.T_CELL: 0.035, ct.B_CELL: 0.035, ct.PLASMA_IGA: 0.045, ct.PLASMA_IGG: 0.045,
    ct.FIBROBLAST: 0.05, ct.ENDOTHELIAL: 0.05, ct.EPITHELIAL: 0.07,
}  # fmt: skip
LIBRARY_MEDIAN: dict[str, float] = {
    ct.RESIDENT_MAC: 5000, ct.INFLAMMATORY_MAC: 4500, ct.DENDRITIC: 4000, gn.ACTIVATED_DC: 4500,
    ct.NEUTROPHIL: 1200, ct.T_CELL: 2200, ct.B_CELL: 2500, ct.PLASMA_IGA: 7000, ct.PLASMA_IGG: 7000,
    ct.FIBROBLAST: 3500, ct.ENDOTHELIAL: 3000, ct.EPITHELIAL: 4500,
}  # fmt: skip


@dataclass(frozen=True)
class Profiles:
    """State profiles over a gene panel.

    Attributes
    ----------
    genes
        Panel gene symbols (sorted).
    log2cpm
        States x genes DataFrame of log2(CPM + 1) mean levels (MT genes included).
    nonmt
        States x non-MT genes array of relative expression (rows sum to 1).
    mt
        Relative expression of the MT genes (sums to 1), shared by all states.
    is_mt
        Boolean mask of MT genes over `genes`.
    """

    genes: np.ndarray
    log2cpm: pd.DataFrame
    nonmt: np.ndarray
    mt: np.ndarray
    is_mt: np.ndarray


def _base_levels(panel: pd.DataFrame) -> pd.DataFrame:
    ref = panel[list(gn.REF_STATES)]
    sources = ref.assign(**{gn.FLOOR: ref.min(axis=1)})
    base = {state: sum(w * sources[src] for src, w in mix.items()) for state, mix in gn.BASE_MIX.items()}
    return pd.DataFrame(base).T.loc[list(gn.STATES)]


def _apply_specific(lv: pd.DataFrame) -> None:
    owners: dict[str, dict[str, float | None]] = {}
    for states, program in gn.SPECIFIC.items():
        for gene, level in program.items():
            owners.setdefault(gene, {}).update(dict.fromkeys(states, level))
    for major, markers in ct.MARKERS.items():
        for gene in markers:
            for state in gn.marker_owner_states(major):
                owners.setdefault(gene, {}).setdefault(state, None)
    for gene, by_state in owners.items():
        if gene not in lv.columns:
            continue
        others = [s for s in lv.index if s not in by_state]
        lv.loc[others, gene] = np.minimum(lv.loc[others, gene], gn.BACKGROUND_LEVEL)
        for state, level in by_state.items():
            lv.loc[state, gene] = max(lv.loc[state, gene], gn.DEFAULT_OWNER_LEVEL) if level is None else level


def _present(lv: pd.DataFrame, genes: tuple[str, ...]) -> list[str]:
    return [g for g in dict.fromkeys(genes) if g in lv.columns]


def _apply_mnp_programs(lv: pd.DataFrame) -> None:
    res, inf, dcs = ct.RESIDENT_MAC, ct.INFLAMMATORY_MAC, [ct.DENDRITIC, gn.ACTIVATED_DC]
    dc_markers = set(ct.MARKERS[ct.DENDRITIC])
    inflammatory = _present(lv, AQP9_PROGRAM + ct.INFLAMMATORY_MAC_MARKERS)
    lv.loc[inf, inflammatory] = np.maximum(lv.loc[inf, inflammatory], INFLAMMATORY_MIN)
    ceiling = lv.loc[inf, inflammatory] - INFLAMMATORY_GAP
    for state in [res, *dcs]:
        lv.loc[state, inflammatory] = np.minimum(lv.loc[state, inflammatory], ceiling)
    resident = _present(lv, RESIDENT_PROGRAM + ct.RESIDENT_MAC_MARKERS)
    lv.loc[res, resident] = np.maximum(lv.loc[res, resident], RESIDENT_MIN)
    ceiling = lv.loc[res, resident] - RESIDENT_GAP
    lv.loc[inf, resident] = np.minimum(lv.loc[inf, resident], ceiling)
    for state in dcs:
        not_dc = [g for g in resident if g not in dc_markers]
        lv.loc[state, not_dc] = np.minimum(lv.loc[state, not_dc], ceiling[not_dc])
    core = _present(lv, MACROPHAGE_CORE)
    lv.loc[[res, inf], core] = np.maximum(lv.loc[[res, inf], core], CORE_MIN)
    for state in dcs:
        lv.loc[state, core] = np.minimum(lv.loc[state, core], lv.loc[inf, core] - 2.0)
    activated = _present(lv, ACTIVATED_DC_PROGRAM)
    lv.loc[gn.ACTIVATED_DC, activated] = np.maximum(lv.loc[gn.ACTIVATED_DC, activated], ACTIVATED_DC_LEVEL)
    lv.loc[ct.DENDRITIC, activated] = np.minimum(lv.loc[ct.DENDRITIC, activated], RESTING_DC_MAX)
    mast = _present(lv, gn.MAST_GENES)
    lv.loc[dcs, mast] = np.minimum(lv.loc[dcs, mast], gn.BACKGROUND_LEVEL)


def build_profiles(panel: pd.DataFrame) -> Profiles:
    """Return the mean profiles of every state over a panel.

    Parameters
    ----------
    panel
        Rows of the reference table (see `_genes.select_panel`).

    Returns
    -------
    The state profiles.
    """
    lv = _base_levels(panel)
    _apply_specific(lv)
    _apply_mnp_programs(lv)
    for state, program in gn.SHARED.items():
        genes = _present(lv, tuple(program))
        lv.loc[state, genes] = [program[g] for g in genes]
    genes = lv.columns.to_numpy()
    is_mt = np.isin(genes, gn.MT_GENES)
    cpm = np.exp2(lv.to_numpy()) - 1.0 + FLOOR_CPM
    nonmt = cpm[:, ~is_mt] / cpm[:, ~is_mt].sum(axis=1, keepdims=True)
    mt = cpm[:, is_mt].mean(axis=0)
    return Profiles(genes=genes, log2cpm=lv, nonmt=nonmt, mt=mt / mt.sum(), is_mt=is_mt)
