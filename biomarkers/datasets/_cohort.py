"""Patient-level design: latent risk, response, severity, batches, programs and cell-type composition.

Non-response is planted through one latent risk per patient (standard normal). Response is drawn from it by a
liability model (logistic noise, a fixed share of non-responders), so that even the latent itself separates the
classes imperfectly (AUROC about 0.85). Each planted program reads the latent with its own patient-level noise,
``activity = effect_size * latent + PROGRAM_NOISE * e``, so at ``effect_size=0`` the programs still vary between
patients but carry no information on response.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from biomarkers import _celltypes as ct
from biomarkers import _keys as k
from biomarkers.datasets import _genes as gn

LATENT_SLOPE = 2.0  # liability = LATENT_SLOPE * latent + logistic noise
NON_RESPONDER_SHARE = 0.4
PROGRAM_NOISE = 0.8  # SD of the patient-level noise of each program activity (latent units)
SEVERITY_MEAN, SEVERITY_SD, SEVERITY_MAX = 1.5, 0.6, 3.0
SEVERITY_LATENT_CORR = 0.4  # correlation of severity with the latent at effect_size=1 (scaled by effect_size)

# Inflamed-biopsy composition (share of cells) before per-patient Dirichlet variation.
BASE_PROPORTIONS: dict[str, float] = {
    ct.EPITHELIAL: 0.28,
    ct.T_CELL: 0.20,
    ct.PLASMA_IGA: 0.11,
    ct.PLASMA_IGG: 0.05,
    ct.FIBROBLAST: 0.10,
    ct.ENDOTHELIAL: 0.05,
    ct.B_CELL: 0.05,
    ct.NEUTROPHIL: 0.04,
    ct.MNP: 0.12,
}
DIRICHLET_CONCENTRATION = 30.0
DC_SHARE_OF_MNP = 0.2
ACTIVATED_SHARE_OF_DC = 0.3
INFLAMMATORY_SHARE_OF_MACS = 0.3  # baseline share of AQP9+ inflammatory macrophages among macrophages
AQP9_LOG_ODDS_PER_SD = 0.7  # log-odds shift of that share per SD of the latent, at effect_size=1
SEVERITY_LOG_ODDS = 0.5  # log-odds shift per severity unit (both classes)
SEVERITY_NEUTROPHIL = 0.7  # log fold change of the neutrophil share per severity unit
SEVERITY_MNP = 0.25
SEVERITY_EPITHELIAL = -0.25
CELLS_LOG_SD = 0.35  # patient-to-patient spread of cell numbers (log scale)
MIN_CELLS = 10
PROGRAMS: tuple[str, ...] = ("aqp9", "osm", "osm_response")


@dataclass(frozen=True)
class Design:
    """Patient-level draws.

    Attributes
    ----------
    patients
        One row per patient: ids, ``response``, ``batch``, ``severity``, ``latent_risk``, program activities
        (``activity_<program>``), ``aqp9_fraction_expected`` (AQP9+ inflammatory macrophages among MNPs) and the
        planned number of cells and samples.
    composition
        Patients x internal states, expected share of each state (rows sum to 1).
    severity_corr
        Correlation of severity with the latent used for this cohort.
    """

    patients: pd.DataFrame
    composition: np.ndarray
    severity_corr: float


def _ids(prefix: str, n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"{prefix}{i + 1:0{width}d}" for i in range(n)]


def draw_responses(rng: np.random.Generator, latent: np.ndarray) -> np.ndarray:
    """Return a boolean non-responder mask: the top of ``LATENT_SLOPE * latent + logistic noise``.

    A fixed count of non-responders (NON_RESPONDER_SHARE, at least 2 per class) keeps small cohorts usable.
    """
    n = latent.size
    n_nr = int(np.clip(round(NON_RESPONDER_SHARE * n), 2, n - 2))
    liability = LATENT_SLOPE * latent + rng.logistic(size=n)
    non_responder = np.zeros(n, dtype=bool)
    non_responder[np.argsort(-liability, kind="stable")[:n_nr]] = True
    return non_responder


def draw_design(
    rng: np.random.Generator,
    *,
    n_patients: int,
    cells_per_patient: int,
    effect_size: float,
    n_batches: int,
    second_sample_rate: float,
) -> Design:
    """Draw every patient-level quantity of a cohort.

    Parameters
    ----------
    rng
        Random generator of the cohort.
    n_patients, cells_per_patient, effect_size, n_batches, second_sample_rate
        As in `simulate_cohort`.

    Returns
    -------
    The design.
    """
    latent = rng.standard_normal(n_patients)
    non_responder = draw_responses(rng, latent)
    corr = min(SEVERITY_LATENT_CORR * effect_size, 0.9)
    sev_z = corr * latent + np.sqrt(1.0 - corr**2) * rng.standard_normal(n_patients)
    severity = np.clip(SEVERITY_MEAN + SEVERITY_SD * sev_z, 0.0, SEVERITY_MAX)
    # Batches are assigned at random, balanced, and independent of response (no confounding by design).
    batch = rng.permutation(n_patients) % n_batches
    activity = {p: effect_size * latent + PROGRAM_NOISE * rng.standard_normal(n_patients) for p in PROGRAMS}
    n_samples = 1 + (rng.random(n_patients) < second_sample_rate)
    n_cells = np.maximum(
        MIN_CELLS,
        np.round(cells_per_patient * np.exp(CELLS_LOG_SD * rng.standard_normal(n_patients) - CELLS_LOG_SD**2 / 2)),
    ).astype(int)

    groups = list(BASE_PROPORTIONS)
    props = rng.dirichlet(DIRICHLET_CONCENTRATION * np.array(list(BASE_PROPORTIONS.values())), size=n_patients)
    sev_c = severity - SEVERITY_MEAN
    shift = {ct.NEUTROPHIL: SEVERITY_NEUTROPHIL, ct.MNP: SEVERITY_MNP, ct.EPITHELIAL: SEVERITY_EPITHELIAL}
    for group, slope in shift.items():
        props[:, groups.index(group)] *= np.exp(slope * sev_c)
    props /= props.sum(axis=1, keepdims=True)
    mnp = props[:, groups.index(ct.MNP)]
    dc_share = rng.beta(40 * DC_SHARE_OF_MNP, 40 * (1 - DC_SHARE_OF_MNP), size=n_patients)
    act_share = rng.beta(20 * ACTIVATED_SHARE_OF_DC, 20 * (1 - ACTIVATED_SHARE_OF_DC), size=n_patients)
    infl_share = expit(
        logit(INFLAMMATORY_SHARE_OF_MACS) + AQP9_LOG_ODDS_PER_SD * activity["aqp9"] + SEVERITY_LOG_ODDS * sev_c
    )
    composition = np.zeros((n_patients, len(gn.STATES)))
    col = {s: i for i, s in enumerate(gn.STATES)}
    for group in groups:
        if group != ct.MNP:
            composition[:, col[group]] = props[:, groups.index(group)]
    composition[:, col[ct.DENDRITIC]] = mnp * dc_share * (1 - act_share)
    composition[:, col[gn.ACTIVATED_DC]] = mnp * dc_share * act_share
    composition[:, col[ct.INFLAMMATORY_MAC]] = mnp * (1 - dc_share) * infl_share
    composition[:, col[ct.RESIDENT_MAC]] = mnp * (1 - dc_share) * (1 - infl_share)

    patients = pd.DataFrame(
        {
            k.PATIENT: _ids("P", n_patients),
            k.RESPONSE: np.where(non_responder, k.NON_RESPONDER, k.RESPONDER),
            k.BATCH: [f"batch{b + 1}" for b in batch],
            k.SEVERITY: severity,
            "latent_risk": latent,
            **{f"activity_{p}": a for p, a in activity.items()},
            "aqp9_fraction_expected": (1 - dc_share) * infl_share,
            "n_cells_planned": n_cells,
            "n_samples": n_samples,
        }
    )
    return Design(patients=patients, composition=composition, severity_corr=corr)
