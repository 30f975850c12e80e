"""Ground truth of a simulated cohort, in a form that round-trips through h5ad (dicts, arrays, a DataFrame)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from biomarkers import _celltypes as ct
from biomarkers import _keys as k
from biomarkers.datasets import _cohort as co
from biomarkers.datasets import _genes as gn
from biomarkers.stats import auroc

if TYPE_CHECKING:
    import pandas as pd

    from biomarkers.datasets._effects import Effect
    from biomarkers.datasets._profiles import Profiles

UP_IN_NR = "up_in_non_responder"
DOWN_IN_NR = "down_in_non_responder"
COMPOSITION_MIN_LOG2FC = 1.5  # inflammatory vs resident macrophage gap that makes an MNP pseudobulk gene move
COMPOSITION_MIN_LEVEL = 5.0


def _compartment(state: str) -> str:
    return ct.COMPARTMENT_OF[ct.FINE_TO_MAJOR[gn.STATE_LABEL[state]]]


def _strings(values: Any) -> np.ndarray:
    return np.asarray(sorted(values), dtype=str)


def build_truth(
    *,
    patients: pd.DataFrame,
    effects: list[Effect],
    profiles: Profiles,
    effect_size: float,
    severity_corr: float,
    params: dict[str, Any],
    version: str,
) -> dict[str, Any]:
    """Return ``uns['truth']`` of a cohort.

    Parameters
    ----------
    patients
        Patient table (index ``patient_id``) with response, latent and realized AQP9 fractions.
    effects
        Planted expression effects.
    profiles
        State profiles (for the genes that the AQP9-fraction shift moves in MNP pseudobulk).
    effect_size, severity_corr, params, version
        Cohort settings.

    Returns
    -------
    The ground-truth record (see `simulate_cohort`).
    """
    nr = (patients[k.RESPONSE] == k.NON_RESPONDER).to_numpy()
    latent = patients["latent_risk"].to_numpy()
    latent_gap = float(latent[nr].mean() - latent[~nr].mean())
    planted = effect_size > 0
    records: dict[str, Any] = {
        k.AQP9_FRACTION: {
            "kind": "composition",
            "compartment": ct.MNP,
            "cell_types": _strings([ct.INFLAMMATORY_MAC]),
            "direction": UP_IN_NR,
            "log_odds_shift_per_sd": co.AQP9_LOG_ODDS_PER_SD * effect_size,
            "expected_log_odds_shift_nr_vs_r": co.AQP9_LOG_ODDS_PER_SD * effect_size * latent_gap,
            "severity_log_odds_per_unit": co.SEVERITY_LOG_ODDS,
            "definition": "AQP9+ inflammatory macrophages / all MNPs (macrophages and DCs), singlets",
        }
    }
    de_by_compartment: dict[str, set[str]] = {c: set() for c in ct.COMPARTMENTS}
    de_by_cell_type: dict[str, set[str]] = {}
    for eff in effects:
        labels = sorted({gn.STATE_LABEL[s] for s in eff.states})
        compartments = sorted({_compartment(s) for s in eff.states})
        records[eff.name] = {
            "kind": "expression",
            "program": eff.program,
            "cell_types": np.asarray(labels, dtype=str),
            "compartments": np.asarray(compartments, dtype=str),
            "direction": UP_IN_NR,
            "genes": np.asarray(eff.genes, dtype=str),
            "log2fc_per_sd": eff.log2fc * effect_size,
            "expected_log2fc_nr_vs_r": eff.log2fc * effect_size * latent_gap,
        }
        if planted:
            for comp in compartments:
                de_by_compartment[comp] |= set(eff.genes)
            for label in labels:
                de_by_cell_type.setdefault(label, set()).update(eff.genes)
    records["severity"] = {
        "kind": "confounder",
        "correlation_with_latent": severity_corr,
        "raises": _strings([ct.NEUTROPHIL, ct.INFLAMMATORY_MAC]),
    }
    records[k.BATCH] = {"kind": "confounder", "associated_with_response": False}

    lv = profiles.log2cpm.loc[:, ~profiles.is_mt]
    gap = lv.loc[ct.INFLAMMATORY_MAC] - lv.loc[ct.RESIDENT_MAC]
    up = gap.index[(gap >= COMPOSITION_MIN_LOG2FC) & (lv.loc[ct.INFLAMMATORY_MAC] >= COMPOSITION_MIN_LEVEL)]
    down = gap.index[(-gap >= COMPOSITION_MIN_LOG2FC) & (lv.loc[ct.RESIDENT_MAC] >= COMPOSITION_MIN_LEVEL)]
    return {
        "generator": "biomarkers.datasets.simulate_cohort",
        "version": version,
        "effect_size": float(effect_size),
        "seed": params["seed"],
        "params": params,
        "ideal_auroc": auroc(nr, latent),  # NaN if the cohort has one class
        "response_model": {
            "description": "non_responder = top share of latent_slope * latent_risk + logistic noise",
            "latent_slope": co.LATENT_SLOPE,
            "non_responder_share": co.NON_RESPONDER_SHARE,
            "program_noise_sd": co.PROGRAM_NOISE,
        },
        "effects": records,
        "de_genes": {c: _strings(g) for c, g in de_by_compartment.items()},
        "de_genes_by_cell_type": {c: _strings(g) for c, g in de_by_cell_type.items()},
        "composition_de_genes": {
            ct.MNP: {UP_IN_NR: _strings(up if planted else []), DOWN_IN_NR: _strings(down if planted else [])}
        },
        "base_proportions": dict(co.BASE_PROPORTIONS),
        "patients": patients,
    }
