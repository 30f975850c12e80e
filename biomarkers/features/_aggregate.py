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

    from biomarkers.features._reference import ScoringReference

ALL = "all"  # pseudobulk over every cell of the patient, the single-cell analogue of a bulk biopsy


def patient_stats(
    adata: AnnData,
    *,
    plan: Mapping[str, Sequence[str]],
    pb_genes: Sequence[str],
    pb_compartments: Sequence[str],
    score_genes: Mapping[str, Mapping[str, str]] | None = None,
    patient_col: str = K.PATIENT,
) -> pd.DataFrame:
    """Additive statistics per patient (rows) from processed cells.

    Parameters
    ----------
    adata
        Cells with ``obs['cell_type']``, ``['compartment']``, ``['aqp9_macrophage']``, log-normalised ``X`` and
        raw counts in ``layers['counts']``.
    plan
        Gene-set name -> compartments it is scored in.
    pb_genes
        Genes to pseudobulk (matched to ``var_names`` directly, by case, or by alias).
    pb_compartments
        Compartments to pseudobulk in (``'all'`` = every cell).
    score_genes
        Compartment -> {reference gene name: var name}: the genes whose expression sums signature scores need
        (see :class:`ScoringReference`). None: every gene, for fitting a reference.
    patient_col
        Column of ``obs`` with the patient.

    Returns
    -------
    Patients x statistics, all sums: ``n_cells``, ``n_samples``, ``n__<type>``, ``n__MNP``, ``n__aqp9``,
    ``ncomp__<comp>`` (cells per scored compartment), ``xsum__<comp>__<gene>`` (log-normalised expression summed
    over the compartment's cells), ``pbsum__<comp>__<gene>``, ``pbtot__<comp>``.
    """
    from biomarkers.signatures import resolve_genes

    obs = adata.obs
    patients = obs[patient_col].astype(str).to_numpy()
    uniq, inv = np.unique(patients, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    cols: dict[str, np.ndarray] = {K.N_CELLS: np.asarray(onehot.sum(axis=1)).ravel()}
    # Samples are whole within a chunk (the pipeline streams by sample), so per-chunk counts add up.
    samples = obs[K.SAMPLE].astype(str).to_numpy() if K.SAMPLE in obs else patients
    pairs = pd.DataFrame({"p": inv, "s": samples}).drop_duplicates()
    cols[K.N_SAMPLES] = np.bincount(pairs["p"].to_numpy(), minlength=len(uniq)).astype(float)
    ct = obs[K.CELL_TYPE].astype(str).to_numpy()
    comp = obs[K.COMPARTMENT].astype(str).to_numpy()
    for t in CT.MAJOR_TYPES:
        cols[f"n__{t}"] = onehot @ (ct == t).astype(float)
    cols["n__MNP"] = onehot @ (comp == CT.MNP).astype(float)
    cols["n__aqp9"] = onehot @ obs[K.AQP9_MAC].to_numpy().astype(float)
    x = adata.X if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
    x = x.tocsr()
    var = pd.Index(adata.var_names.astype(str))
    blocks = []
    for c in sorted({c for cs in plan.values() for c in cs}):
        rows = np.flatnonzero(comp == c)
        cols[f"ncomp__{c}"] = onehot @ (comp == c).astype(float)
        if score_genes is None:
            names, idx = list(var), np.arange(len(var))
        else:
            mapping = dict(score_genes.get(c, {}))
            names, idx = list(mapping), var.get_indexer(list(mapping.values()))
        sums = np.asarray((onehot[:, rows] @ x[rows][:, idx]).toarray()) if len(idx) else np.zeros((len(uniq), 0))
        blocks.append(pd.DataFrame(sums, index=uniq, columns=[f"xsum__{c}__{g}" for g in names]))
    counts = adata.layers[K.COUNTS]
    counts = sparse.csr_matrix(counts) if not sparse.issparse(counts) else counts.tocsr()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    found, _ = resolve_genes(pb_genes, var)  # requested name -> var name (aliases: IL8 <-> CXCL8)
    gidx = var.get_indexer(list(found.values()))
    sub = counts[:, gidx].toarray() if len(gidx) else np.zeros((adata.n_obs, 0))
    for c in pb_compartments:
        m = np.ones(adata.n_obs, dtype=bool) if c == ALL else comp == c
        cols[f"pbtot__{c}"] = onehot @ np.where(m, totals, 0.0)
        for j, g in enumerate(found):
            cols[f"pbsum__{c}__{g}"] = onehot @ np.where(m, sub[:, j], 0.0)
    out = pd.concat([pd.DataFrame(cols, index=uniq), *blocks], axis=1)
    out.index = pd.Index(uniq, name=K.PATIENT)
    return out


def reference_inputs(stats: pd.DataFrame, compartments: Sequence[str]) -> tuple[dict[str, pd.Series], dict[str, float]]:
    """Cohort-wide gene sums and cell counts per compartment, from patient statistics (to fit a reference)."""
    sums: dict[str, pd.Series] = {}
    n: dict[str, float] = {}
    for c in compartments:
        prefix = f"xsum__{c}__"
        columns = [col for col in stats.columns if col.startswith(prefix)]
        if not columns or f"ncomp__{c}" not in stats:
            continue
        total = stats[columns].sum(axis=0)
        total.index = [col.removeprefix(prefix) for col in columns]
        sums[c], n[c] = total, float(stats[f"ncomp__{c}"].sum())
    return sums, n


def _signature_means(stats: pd.DataFrame, reference: ScoringReference, plan: Mapping[str, Sequence[str]]) -> dict[str, pd.Series]:
    """Mean score per patient and compartment: (summed expression of the reference genes) @ weights / cells."""
    out: dict[str, pd.Series] = {}
    for name, comps in plan.items():
        for c in comps:
            out[feature_name(K.FAMILY_SIG, c, name)] = pd.Series(np.nan, index=stats.index)
    for c, genes in reference.genes.items():
        present = [g for g in genes if f"xsum__{c}__{g}" in stats.columns]
        w = reference.weights(c, present)
        sums = stats[[f"xsum__{c}__{g}" for g in present]].to_numpy(dtype=np.float64)
        k = stats[f"ncomp__{c}"] if f"ncomp__{c}" in stats else pd.Series(0.0, index=stats.index)
        scores = (sums @ w.to_numpy()) / k.where(k > 0).to_numpy()[:, None]
        for j, name in enumerate(w.columns):
            col = feature_name(K.FAMILY_SIG, c, name)
            if col in out:
                out[col] = pd.Series(scores[:, j], index=stats.index)
    return out


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
    reference: ScoringReference | None = None,
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
    reference
        Frozen control genes for ``signature_means`` (required for that family).

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
            if reference is None:
                msg = "signature_means needs a scoring reference: fit one with FeaturePipeline.fit_reference(stats)."
                raise ValueError(msg)
            out.update(_signature_means(stats, reference, plan))
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
