"""`simulate_cohort`: a seeded single-cell IBD cohort with planted, recorded non-response biology."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from biomarkers import _celltypes as ct
from biomarkers import _keys as k
from biomarkers._errors import ConfigError
from biomarkers.datasets import _cohort as co
from biomarkers.datasets import _genes as gn
from biomarkers.datasets import _profiles as pr
from biomarkers.datasets._effects import Effect, plant_effects
from biomarkers.datasets._sampling import DISPERSION_WEIGHTS, RowStack, sample_block
from biomarkers.datasets._truth import build_truth

logger = logging.getLogger("biomarkers")

GENERATOR_VERSION = "1.1"  # 1.1: more stromal STAT3 targets
BATCH_GENE_SD = 0.2  # natural-log SD of per-batch gene-wise multiplicative factors
BATCH_DEPTH_SD = 0.15
PATIENT_GENE_SD = 0.15  # per-patient gene-wise random effect
PATIENT_STATE_GENE_SD = 0.1  # per-patient, per-state gene-wise noise
PATIENT_DEPTH_SD = 0.15
SAMPLE_GENE_SD = 0.05
CELL_DEPTH_SD = 0.45  # per-cell library size spread (log-normal)
CELL_MT_SD = 0.25
MT_MAX_HEALTHY = 0.15
LOW_QUALITY_DEPTH = 0.2  # low-quality cells keep about a fifth of their UMIs ...
LOW_QUALITY_DEPTH_SD = 0.35
LOW_QUALITY_MT = (0.2, 0.6)  # ... and are MT-rich (cytoplasmic RNA lost through a broken membrane)
AMBIENT_RANGE = (0.01, 0.05)  # share of each cell's non-MT UMIs from the sample's ambient RNA
LABELS: tuple[str, ...] = tuple(dict.fromkeys(gn.STATE_LABEL[s] for s in gn.STATES))
LN2 = np.log(2.0)


@dataclass(frozen=True)
class _Shared:
    profiles: pr.Profiles
    log_nonmt: np.ndarray  # states x non-MT genes, natural log
    disp: np.ndarray
    effects: list[Effect]
    batch_gene: np.ndarray  # batches x non-MT genes
    batch_depth: np.ndarray
    doublet_rate: float
    low_quality_rate: float


@dataclass(frozen=True)
class _Sample:
    counts: sparse.csr_matrix
    states: np.ndarray
    doublet: np.ndarray
    low_quality: np.ndarray


def _check(
    n_patients: int, cells_per_patient: int, rates: dict[str, tuple[float, float]], n_batches: int, effect: float
) -> None:
    problems = []
    if n_patients < 4:
        problems.append(f"n_patients={n_patients} (need >= 4: at least 2 per response class)")
    if cells_per_patient < co.MIN_CELLS:
        problems.append(f"cells_per_patient={cells_per_patient} (need >= {co.MIN_CELLS})")
    if not 1 <= n_batches <= n_patients:
        problems.append(f"n_batches={n_batches} (need 1..n_patients)")
    if not np.isfinite(effect) or effect < 0:
        problems.append(f"effect_size={effect} (need a finite value >= 0)")
    for name, (value, limit) in rates.items():
        if not 0 <= value <= limit:
            problems.append(f"{name}={value} (need 0..{limit})")
    if problems:
        msg = f"simulate_cohort got invalid arguments: {'; '.join(problems)}. Pass values in the ranges given."
        raise ConfigError(msg)


def _state_profiles(
    rng: np.random.Generator, shared: _Shared, *, gene_effect: np.ndarray, activity: dict[str, float]
) -> np.ndarray:
    """Return states x non-MT relative expression of one sample (rows sum to 1), before ambient mixing."""
    log_p = shared.log_nonmt + gene_effect[None, :]
    log_p += rng.normal(0.0, PATIENT_STATE_GENE_SD, size=log_p.shape)
    rows = {s: i for i, s in enumerate(gn.STATES)}
    for eff in shared.effects:
        shift = LN2 * eff.log2fc * activity[eff.program]
        for state in eff.states:
            log_p[rows[state], eff.positions] += shift
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _partner_states(rng: np.random.Generator, hosts: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """Draw a doublet partner state for each host state, from another cell type than the host."""
    labels = np.array([gn.STATE_LABEL[s] for s in gn.STATES])
    partners = np.empty(hosts.size, dtype=int)
    for state in np.unique(hosts):
        at = hosts == state
        probs = np.where(labels == labels[state], 0.0, comp)
        partners[at] = rng.choice(len(gn.STATES), size=int(at.sum()), p=probs / probs.sum())
    return partners


def _simulate_sample(
    rng: np.random.Generator,
    shared: _Shared,
    *,
    n_cells: int,
    comp: np.ndarray,
    gene_effect: np.ndarray,
    depth_factor: float,
    activity: dict[str, float],
) -> _Sample:
    n_states = len(gn.STATES)
    states = rng.permutation(np.repeat(np.arange(n_states), rng.multinomial(n_cells, comp)))
    n_dbl = rng.binomial(n_cells, shared.doublet_rate)
    hosts = rng.choice(n_cells, size=n_dbl, replace=False)
    partners = _partner_states(rng, states[hosts], comp)
    singlets = np.setdiff1d(np.arange(n_cells), hosts)
    n_lq = min(rng.binomial(n_cells, shared.low_quality_rate), singlets.size)
    low_quality = np.zeros(n_cells, dtype=bool)
    low_quality[rng.choice(singlets, size=n_lq, replace=False)] = True
    doublet = np.zeros(n_cells, dtype=bool)
    doublet[hosts] = True

    # Rows to draw: every cell, then every doublet partner; all_states/all_lq describe them.
    all_states = np.concatenate([states, partners])
    all_lq = np.concatenate([low_quality, np.zeros(n_dbl, dtype=bool)])
    target = np.concatenate([np.arange(n_cells), hosts])  # output row that each drawn row adds to
    median = np.array([pr.LIBRARY_MEDIAN[s] for s in gn.STATES])
    mt_frac = np.array([pr.MT_FRACTION[s] for s in gn.STATES])
    n_all = all_states.size
    depth = median[all_states] * depth_factor * np.exp(CELL_DEPTH_SD * rng.standard_normal(n_all))
    frac_mt = np.minimum(mt_frac[all_states] * np.exp(CELL_MT_SD * rng.standard_normal(n_all)), MT_MAX_HEALTHY)
    depth[all_lq] *= LOW_QUALITY_DEPTH * np.exp(LOW_QUALITY_DEPTH_SD * rng.standard_normal(int(all_lq.sum())))
    frac_mt[all_lq] = rng.uniform(*LOW_QUALITY_MT, size=int(all_lq.sum()))

    profiles = _state_profiles(rng, shared, gene_effect=gene_effect, activity=activity)
    weights = comp * median
    ambient = rng.uniform(*AMBIENT_RANGE)
    profiles = (1.0 - ambient) * profiles + ambient * (weights @ profiles) / weights.sum()

    rows_out, cols_out, vals_out = [], [], []
    for state in np.unique(all_states):
        rows = np.flatnonzero(all_states == state)
        r, c, v = sample_block(
            rng,
            nonmt=profiles[state],
            mt=shared.profiles.mt,
            is_mt=shared.profiles.is_mt,
            disp=shared.disp,
            depth_nonmt=depth[rows] * (1.0 - frac_mt[rows]),
            depth_mt=depth[rows] * frac_mt[rows],
        )
        # Doublet partners land on their host's row; the COO -> CSR conversion adds the two cells up.
        rows_out.append(target[rows][r])
        cols_out.append(c)
        vals_out.append(v)
    coo = sparse.coo_matrix(
        (
            np.concatenate(vals_out).astype(np.float32),
            (np.concatenate(rows_out), np.concatenate(cols_out)),
        ),
        shape=(n_cells, shared.profiles.genes.size),
    )
    counts = coo.tocsr()
    counts.sum_duplicates()
    return _Sample(counts=counts, states=states, doublet=doublet, low_quality=low_quality)


def simulate_cohort(
    *,
    n_patients: int = 40,
    cells_per_patient: int = 500,
    n_genes: int = 2000,
    effect_size: float = 1.0,
    seed: int | None = 0,
    doublet_rate: float = 0.03,
    low_quality_rate: float = 0.03,
    n_batches: int = 3,
    second_sample_rate: float = 0.0,
) -> AnnData:
    """Simulate a single-cell cohort of inflamed IBD biopsies with planted anti-TNF non-response biology.

    Raw UMI counts are negative binomial (gene-wise dispersion) around cell-state profiles calibrated on the
    TAURUS pre-treatment atlas (Thomas et al. 2024 Nat Immunol) and the markers of `biomarkers._celltypes`, with
    per-cell-type log-normal library sizes, MT genes, ambient RNA, doublets and low-quality cells. One latent
    risk per patient drives non-response (logistic liability, about 40% non-responders) and, scaled by
    `effect_size`, (1) a larger share of AQP9+ inflammatory macrophages among mononuclear phagocytes, (2) more
    OSM in inflammatory macrophages and neutrophils, (3) OSM/STAT3 target genes in fibroblasts and endothelial
    cells and, mildly, epithelium. Confounders: batch (gene-wise factors), patient random effects, cell numbers,
    and a severity score that raises neutrophils and inflammatory macrophages in both classes and correlates
    with the latent (0.4 x effect_size). At ``effect_size=0`` response is independent of all expression.

    Parameters
    ----------
    n_patients
        Number of patients (>= 4; 40% non-responders, at least 2 per class).
    cells_per_patient
        Mean number of cells per patient (log-normal spread between patients).
    n_genes
        Genes in the panel: every gene-set gene, marker and MT gene, then the most expressed others
        (real HGNC symbols, at most about 23,000).
    effect_size
        Strength of the planted effects (0: null cohort with the same structure).
    seed
        Seed of the `numpy.random.SeedSequence` behind every generator; the same seed gives identical counts.
        Patients, responses and latent risks depend only on `seed` and `n_patients`, so cohorts that differ
        only in `effect_size` are paired. ``None`` draws fresh entropy (recorded in the truth).
    doublet_rate
        Expected share of doublets (two cells of different types summed).
    low_quality_rate
        Expected share of low-quality cells (few UMIs, 20-60% MT).
    n_batches
        Number of processing batches (assigned at random, independent of response).
    second_sample_rate
        Share of patients whose cells come from two samples (``<patient>_S1``, ``<patient>_S2``).

    Returns
    -------
    AnnData with `X` and ``layers['counts']`` = raw counts (CSR, float32, integer values), ``var_names`` = gene
    symbols, ``var['mt']``, obs columns ``patient_id``, ``sample_id``, ``response``, ``batch``, ``severity``,
    ``true_cell_type`` (a doublet keeps the label of one of its two cells), ``true_doublet``,
    ``true_low_quality``; ``uns['truth']`` (planted effects and their
    sizes, ``de_genes`` per compartment, ``composition_de_genes``, ``ideal_auroc`` = AUROC of the latent risk
    for non-response, a ``patients`` DataFrame with latent risk and true AQP9 fractions, parameters, version)
    and ``uns['bm']['simulate_cohort']``.

    Examples
    --------
    >>> from biomarkers.datasets import simulate_cohort
    >>> adata = simulate_cohort(n_patients=8, cells_per_patient=40, n_genes=600, seed=1)
    >>> adata.n_vars, adata.obs["patient_id"].nunique()
    (600, 8)
    >>> truth = adata.uns["truth"]
    >>> truth["patients"]["response"].value_counts().to_dict()
    {'responder': 5, 'non_responder': 3}
    >>> truth["de_genes"]["MNP"].tolist()
    ['OSM']
    """
    start = time.perf_counter()
    rates = {
        "doublet_rate": (doublet_rate, 0.5),
        "low_quality_rate": (low_quality_rate, 0.5),
        "second_sample_rate": (second_sample_rate, 1.0),
    }
    _check(n_patients, cells_per_patient, rates, n_batches, effect_size)
    seed_seq = np.random.SeedSequence(seed)
    cohort_seq, *patient_seqs = seed_seq.spawn(n_patients + 1)
    rng = np.random.default_rng(cohort_seq)
    profiles = pr.build_profiles(gn.select_panel(n_genes))
    nonmt_genes = profiles.genes[~profiles.is_mt]
    n_nonmt = nonmt_genes.size
    design = co.draw_design(
        rng, n_patients=n_patients, cells_per_patient=cells_per_patient, effect_size=effect_size,
        n_batches=n_batches, second_sample_rate=second_sample_rate,
    )  # fmt: skip
    shared = _Shared(
        profiles=profiles,
        log_nonmt=np.log(profiles.nonmt),
        disp=rng.choice(len(DISPERSION_WEIGHTS), size=profiles.genes.size, p=DISPERSION_WEIGHTS),
        effects=plant_effects(rng, nonmt_genes=nonmt_genes),
        batch_gene=rng.normal(0.0, BATCH_GENE_SD, size=(n_batches, n_nonmt)),
        batch_depth=np.exp(rng.normal(0.0, BATCH_DEPTH_SD, size=n_batches)),
        doublet_rate=doublet_rate,
        low_quality_rate=low_quality_rate,
    )
    pt = design.patients
    batch_idx = pt[k.BATCH].str.removeprefix("batch").astype(int).to_numpy() - 1
    stack = RowStack(profiles.genes.size)
    obs_parts: dict[str, list[np.ndarray]] = {"patient": [], "sample": [], "state": [], "dbl": [], "lq": []}
    sample_names: list[str] = []
    for i, patient_seq in enumerate(patient_seqs):
        prng = np.random.default_rng(patient_seq)
        activity = {p: float(pt.at[i, f"activity_{p}"]) for p in co.PROGRAMS}
        patient_effect = shared.batch_gene[batch_idx[i]] + prng.normal(0.0, PATIENT_GENE_SD, size=n_nonmt)
        depth = shared.batch_depth[batch_idx[i]] * np.exp(prng.normal(0.0, PATIENT_DEPTH_SD))
        n_samples = int(pt.at[i, "n_samples"])
        split = prng.multinomial(int(pt.at[i, "n_cells_planned"]), np.full(n_samples, 1.0 / n_samples))
        for j in range(n_samples):
            comp = design.composition[i]
            gene_effect = patient_effect
            if n_samples > 1:
                comp = prng.dirichlet(200.0 * comp + 1e-3)
                gene_effect = patient_effect + prng.normal(0.0, SAMPLE_GENE_SD, size=n_nonmt)
            sample = _simulate_sample(
                prng, shared, n_cells=max(int(split[j]), 1), comp=comp, gene_effect=gene_effect,
                depth_factor=depth, activity=activity,
            )  # fmt: skip
            stack.append(sample.counts)
            n = sample.states.size
            obs_parts["patient"].append(np.full(n, i))
            obs_parts["sample"].append(np.full(n, len(sample_names)))
            obs_parts["state"].append(sample.states)
            obs_parts["dbl"].append(sample.doublet)
            obs_parts["lq"].append(sample.low_quality)
            sample_names.append(f"{pt.at[i, k.PATIENT]}_S{j + 1}")
    counts = stack.finish()
    del stack
    obs_arr = {name: np.concatenate(v) for name, v in obs_parts.items()}
    adata = _to_anndata(counts, obs_arr, sample_names, pt, profiles)
    params: dict[str, Any] = {
        "n_patients": n_patients, "cells_per_patient": cells_per_patient, "n_genes": n_genes,
        "effect_size": float(effect_size), "seed": -1 if seed is None else int(seed), "doublet_rate": doublet_rate,
        "low_quality_rate": low_quality_rate, "n_batches": n_batches, "second_sample_rate": second_sample_rate,
        "seed_entropy": str(seed_seq.entropy),
    }  # fmt: skip
    patients = _patient_truth(pt, obs_arr)
    adata.uns[k.TRUTH] = build_truth(
        patients=patients, effects=shared.effects, profiles=profiles, effect_size=effect_size,
        severity_corr=design.severity_corr, params=params, version=GENERATOR_VERSION,
    )  # fmt: skip
    adata.uns[k.BM] = {"simulate_cohort": {"params": params, "version": GENERATOR_VERSION}}
    logger.info(
        "simulate_cohort: %d patients, %d cells x %d genes -> adata.X, adata.layers['%s'], adata.uns['%s'] (%.1f s)",
        n_patients, adata.n_obs, adata.n_vars, k.COUNTS, k.TRUTH, time.perf_counter() - start,
    )  # fmt: skip
    return adata


def _to_anndata(
    counts: sparse.csr_matrix,
    obs_arr: dict[str, np.ndarray],
    sample_names: list[str],
    patients: pd.DataFrame,
    profiles: pr.Profiles,
) -> AnnData:
    p_idx, s_idx = obs_arr["patient"], obs_arr["sample"]
    label_of_state = np.array([LABELS.index(gn.STATE_LABEL[s]) for s in gn.STATES])
    responses = [k.RESPONDER, k.NON_RESPONDER]
    batches = sorted(patients[k.BATCH].unique(), key=lambda b: int(b.removeprefix("batch")))
    within = np.arange(p_idx.size) - np.searchsorted(s_idx, s_idx)  # cell index within its sample
    names = np.asarray(sample_names, dtype=object)[s_idx] + "-" + within.astype(str).astype(object)
    obs = pd.DataFrame(
        {
            k.PATIENT: pd.Categorical.from_codes(p_idx, categories=patients[k.PATIENT].to_numpy()),
            k.SAMPLE: pd.Categorical.from_codes(s_idx, categories=sample_names),
            k.RESPONSE: pd.Categorical(patients[k.RESPONSE].to_numpy()[p_idx], categories=responses),
            k.BATCH: pd.Categorical(patients[k.BATCH].to_numpy()[p_idx], categories=batches),
            k.SEVERITY: patients[k.SEVERITY].to_numpy()[p_idx],
            k.TRUE_CELL_TYPE: pd.Categorical.from_codes(label_of_state[obs_arr["state"]], categories=LABELS),
            k.TRUE_DOUBLET: obs_arr["dbl"],
            k.TRUE_LOW_QUALITY: obs_arr["lq"],
        },
        index=pd.Index(names, name=None),
    )
    var = pd.DataFrame({k.MT: profiles.is_mt}, index=pd.Index(profiles.genes.astype(str)))
    adata = AnnData(X=counts, obs=obs, var=var)
    adata.layers[k.COUNTS] = counts.copy()
    return adata


def _patient_truth(patients: pd.DataFrame, obs_arr: dict[str, np.ndarray]) -> pd.DataFrame:
    labels = np.array([gn.STATE_LABEL[s] for s in gn.STATES])
    mnp = np.isin(labels, [ct.RESIDENT_MAC, ct.INFLAMMATORY_MAC, ct.DENDRITIC])[obs_arr["state"]]
    singlet_mnp = mnp & ~obs_arr["dbl"]
    infl = (labels == ct.INFLAMMATORY_MAC)[obs_arr["state"]] & singlet_mnp
    n = len(patients)
    n_mnp = np.bincount(obs_arr["patient"], weights=singlet_mnp, minlength=n)
    n_infl = np.bincount(obs_arr["patient"], weights=infl, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(n_mnp > 0, n_infl / n_mnp, np.nan)
    out = patients.drop(columns=["n_cells_planned"]).assign(
        aqp9_fraction_observed=observed,
        n_mnp=n_mnp.astype(int),
        n_cells=np.bincount(obs_arr["patient"], minlength=n),
    )
    return out.set_index(k.PATIENT)
