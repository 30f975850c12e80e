"""Cells -> patients: additive per-patient statistics, then features.

Every feature is a ratio of sums (cell counts, score sums, pseudobulk counts), so statistics from
separate chunks of a cohort add up exactly: the streaming path and the in-memory path give the same
patient table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers.features._names import feature_name

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

ALL = "all"  # pseudobulk over every cell of the patient, the single-cell analogue of a bulk biopsy


def patient_stats(
    adata: AnnData,
    *,
    plan: Mapping[str, Sequence[str]],
    pb_genes: Sequence[str],
    pb_compartments: Sequence[str],
    patient_col: str = K.PATIENT,
) -> pd.DataFrame:
    """Additive statistics per patient (rows) from processed cells.

    Parameters
    ----------
    adata
        Cells with ``obs['cell_type']``, ``['compartment']``, ``['aqp9_macrophage']``, ``['sig__<set>']``
        and raw counts in ``layers['counts']``.
    plan
        Gene-set name -> compartments it was scored in.
    pb_genes
        Genes to pseudobulk.
    pb_compartments
        Compartments to pseudobulk in (``'all'`` = every cell).
    patient_col
        Column of ``obs`` with the patient.

    Returns
    -------
    Patients x statistics, all sums: ``n_cells``, ``n__<type>``, ``n__MNP``, ``n__aqp9``, ``sigsum__<comp>__<set>``,
    ``sign__<comp>__<set>``, ``pbsum__<comp>__<gene>``, ``pbtot__<comp>``.
    """
    obs = adata.obs
    patients = obs[patient_col].astype(str).to_numpy()
    uniq, inv = np.unique(patients, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    cols: dict[str, np.ndarray] = {K.N_CELLS: np.asarray(onehot.sum(axis=1)).ravel()}
    ct = obs[K.CELL_TYPE].astype(str).to_numpy()
    comp = obs[K.COMPARTMENT].astype(str).to_numpy()
    for t in CT.MAJOR_TYPES:
        cols[f"n__{t}"] = onehot @ (ct == t).astype(float)
    cols["n__MNP"] = onehot @ (comp == CT.MNP).astype(float)
    cols["n__aqp9"] = onehot @ obs[K.AQP9_MAC].to_numpy().astype(float)
    for name, comps in plan.items():
        s = obs[K.SIG_PREFIX + name].to_numpy(dtype=float)
        for c in comps:
            m = (comp == c) & np.isfinite(s)
            cols[f"sigsum__{c}__{name}"] = onehot @ np.where(m, s, 0.0)
            cols[f"sign__{c}__{name}"] = onehot @ m.astype(float)
    counts = adata.layers[K.COUNTS]
    counts = sparse.csr_matrix(counts) if not sparse.issparse(counts) else counts.tocsr()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    gidx = pd.Index(adata.var_names).get_indexer(list(pb_genes))
    sub = counts[:, gidx[gidx >= 0]].toarray() if (gidx >= 0).any() else np.zeros((adata.n_obs, 0))
    found = [g for g, i in zip(pb_genes, gidx, strict=True) if i >= 0]
    for c in pb_compartments:
        m = np.ones(adata.n_obs, dtype=bool) if c == ALL else comp == c
        cols[f"pbtot__{c}"] = onehot @ np.where(m, totals, 0.0)
        for j, g in enumerate(found):
            cols[f"pbsum__{c}__{g}"] = onehot @ np.where(m, sub[:, j], 0.0)
    return pd.DataFrame(cols, index=pd.Index(uniq, name=K.PATIENT))


def combine_stats(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Add up per-patient statistics from chunks (a patient may span chunks)."""
    return pd.concat(parts).fillna(0.0).groupby(level=0, sort=True).sum()


def stats_to_features(
    stats: pd.DataFrame,
    *,
    plan: Mapping[str, Sequence[str]],
    pb_genes: Sequence[str],
    pb_compartments: Sequence[str],
    families: Sequence[str],
) -> pd.DataFrame:
    """Turn additive statistics into the patients x features table.

    Parameters
    ----------
    stats
        Output of :func:`patient_stats` (or :func:`combine_stats`).
    plan, pb_genes, pb_compartments
        As given to :func:`patient_stats`.
    families
        Which families to emit: ``aqp9_macrophage_fraction``, ``proportions``, ``signature_means``,
        ``pseudobulk``, ``n_cells``.

    Returns
    -------
    Patients x features, named ``aqp9_macrophage_fraction``, ``prop__<type>``, ``sig__<comp>__<set>``,
    ``pb__<comp>__<gene>`` (log1p CPM of summed raw counts) and ``n_cells``.
    """
    out: dict[str, pd.Series] = {}
    n = stats[K.N_CELLS]
    with np.errstate(invalid="ignore", divide="ignore"):
        if "aqp9_macrophage_fraction" in families:
            out[K.AQP9_FRACTION] = stats["n__aqp9"] / stats["n__MNP"].where(stats["n__MNP"] > 0)
        if "proportions" in families:
            for t in CT.MAJOR_TYPES:
                out[feature_name(K.FAMILY_PROP, t)] = stats[f"n__{t}"] / n
        if "signature_means" in families:
            for name, comps in plan.items():
                for c in comps:
                    k = stats[f"sign__{c}__{name}"]
                    out[feature_name(K.FAMILY_SIG, c, name)] = stats[f"sigsum__{c}__{name}"] / k.where(k > 0)
        if "pseudobulk" in families:
            for c in pb_compartments:
                tot = stats[f"pbtot__{c}"]
                for g in pb_genes:
                    col = f"pbsum__{c}__{g}"
                    val = stats[col] if col in stats else pd.Series(np.nan, index=stats.index)
                    out[feature_name(K.FAMILY_PB, c, g)] = np.log1p(1e6 * val / tot.where(tot > 0))
        if "n_cells" in families:
            out[K.N_CELLS] = n.astype(float)
    return pd.DataFrame(out, index=stats.index)
