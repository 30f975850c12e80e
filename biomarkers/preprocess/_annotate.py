"""Marker-based cell-type annotation and the AQP9+ inflammatory macrophage call.

Each cell is scored per major type as the mean log-normalised expression of the type's published
markers (``biomarkers._celltypes.MARKERS``); the label is the best-scoring type and the confidence is
the margin to the runner-up. Scores depend only on the cell itself, so annotation gives the same
answer whether a cohort is processed whole, one sample at a time, or one new patient at predict time.
An optional cluster-level refinement (Leiden within each sample) relabels low-confidence cells by
their cluster's consensus, which helps on shallow real data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

logger = logging.getLogger("biomarkers")

UNASSIGNED = "unassigned"


def _mean_expression(adata: AnnData, gene_lists: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Cells x lists: mean of ``X`` over each list's genes that are present (NaN when none are)."""
    names = list(gene_lists)
    pos = pd.Index(adata.var_names)
    w = np.zeros((adata.n_vars, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        idx = pos.get_indexer([g for g in gene_lists[name] if g in pos])
        idx = idx[idx >= 0]
        if idx.size:
            w[idx, j] = 1.0 / idx.size
    x = adata.X
    scores = np.asarray(x @ w) if sparse.issparse(x) else np.asarray(x, dtype=np.float32) @ w
    scores[:, w.sum(axis=0) == 0] = np.nan
    return pd.DataFrame(scores, index=adata.obs_names, columns=names)


def annotate(
    adata: AnnData,
    *,
    markers: Mapping[str, Sequence[str]] | None = None,
    min_score: float = 0.1,
    refine: bool = False,
    sample_col: str = K.SAMPLE,
    resolution: float = 1.0,
    seed: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Label each cell with a major cell type from published markers.

    Parameters
    ----------
    adata
        Log-normalised expression in ``X`` (run :func:`biomarkers.normalize` first).
    markers
        Type -> marker genes. Defaults to ``biomarkers._celltypes.MARKERS``.
    min_score
        Cells whose best score is below this are ``'unassigned'``.
    refine
        Relabel cells by the consensus of their Leiden cluster, clustering within each sample.
    sample_col
        Column of ``obs`` with the sample; clustering for ``refine`` is done per sample.
    resolution
        Leiden resolution for ``refine``.
    seed
        Seed for PCA/neighbours/Leiden in ``refine``.
    copy
        Work on a copy and return it.

    Returns
    -------
    The annotated AnnData when ``copy=True``, else ``None``. Sets ``obs['cell_type']`` (categorical),
    ``obs['cell_type_confidence']`` (margin of best over second-best score, in [0, 1]),
    ``obs['compartment']`` and ``uns['bm']['annotate']``.

    Examples
    --------
    >>> import biomarkers as bm
    >>> adata = bm.simulate_cohort(n_patients=4, cells_per_patient=80, n_genes=400, seed=0)
    >>> bm.normalize(adata)
    >>> bm.annotate(adata)
    >>> 'macrophage' in set(adata.obs['cell_type'])
    True
    """
    adata = adata.copy() if copy else adata
    markers = dict(markers or CT.MARKERS)
    present = {t: [g for g in gs if g in adata.var_names] for t, gs in markers.items()}
    n_found = sum(bool(v) for v in present.values())
    if n_found < 2:
        msg = (
            f"Only {n_found}/{len(markers)} cell types have a marker gene among the {adata.n_vars} genes "
            f"(first genes: {', '.join(adata.var_names[:5])}). Are genes named by HGNC symbol? "
            "Map Ensembl IDs to symbols when reading (read_cohort does this from 10x features files)."
        )
        raise DataSchemaError(msg)
    scores = _mean_expression(adata, present).fillna(-np.inf)
    top2 = np.sort(scores.to_numpy(), axis=1)[:, -2:]
    best = scores.to_numpy().argmax(axis=1)
    labels = np.asarray(scores.columns)[best].astype(object)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(top2[:, 1] > 0, (top2[:, 1] - np.maximum(top2[:, 0], 0)) / top2[:, 1], 0.0)
    labels[top2[:, 1] < min_score] = UNASSIGNED
    if refine:
        labels, conf = _refine_by_cluster(adata, scores, labels, conf, sample_col=sample_col, resolution=resolution, seed=seed)
    cats = [*markers, UNASSIGNED]
    adata.obs[K.CELL_TYPE] = pd.Categorical(labels, categories=cats)
    adata.obs[K.CELL_TYPE_CONF] = np.clip(conf, 0, 1).astype(np.float32)
    adata.obs[K.COMPARTMENT] = pd.Categorical(
        [CT.COMPARTMENT_OF.get(t, UNASSIGNED) for t in labels], categories=[*CT.COMPARTMENTS, UNASSIGNED]
    )
    adata.uns.setdefault(K.BM, {})["annotate"] = {
        "params": {"min_score": min_score, "refine": refine, "resolution": resolution},
        "markers_found": {t: len(v) for t, v in present.items()},
    }
    counts = adata.obs[K.CELL_TYPE].value_counts()
    logger.info("annotate: %s -> adata.obs['%s']", dict(counts[counts > 0]), K.CELL_TYPE)
    return adata if copy else None


def _refine_by_cluster(
    adata: AnnData,
    scores: pd.DataFrame,
    labels: np.ndarray,
    conf: np.ndarray,
    *,
    sample_col: str,
    resolution: float,
    seed: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    import scanpy as sc

    labels, conf = labels.copy(), conf.copy()
    groups = adata.obs.groupby(sample_col, observed=True).indices if sample_col in adata.obs else {"all": np.arange(adata.n_obs)}
    for idx in groups.values():
        if len(idx) < 30:  # too few cells to cluster meaningfully
            continue
        sub = adata[idx].copy()
        n_comps = min(30, len(idx) - 1, sub.n_vars - 1)
        sc.pp.pca(sub, n_comps=n_comps, random_state=seed or 0)
        sc.pp.neighbors(sub, n_neighbors=min(15, len(idx) - 1), random_state=seed or 0)
        sc.tl.leiden(sub, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed or 0)
        for _, cidx in sub.obs.groupby("leiden", observed=True).indices.items():
            cell_idx = idx[cidx]
            cl_scores = scores.iloc[cell_idx].replace(-np.inf, np.nan).mean()
            consensus = cl_scores.idxmax()
            # Only relabel the uncertain cells: a confident cell keeps its own call (rare types in a cluster).
            weak = conf[cell_idx] < 0.2
            labels[cell_idx[weak]] = consensus
    return labels, conf


def call_aqp9_macrophages(
    adata: AnnData,
    *,
    threshold: float = 0.0,
    key_added: str = K.AQP9_MAC,
    copy: bool = False,
) -> AnnData | None:
    """Call AQP9+ inflammatory macrophages among mononuclear phagocytes.

    Within cells annotated as MNPs, the call compares the mean expression of the inflammatory
    (GIMATS) markers against the resident-macrophage markers of Martin et al. 2019 Cell
    (``biomarkers._celltypes.INFLAMMATORY_MAC_MARKERS`` vs ``RESIDENT_MAC_MARKERS``). AQP9 is also a
    neutrophil gene, which is why the call is restricted to MNPs.

    Parameters
    ----------
    adata
        Annotated (``obs['compartment']``) and log-normalised.
    threshold
        A cell is called when inflammatory minus resident score exceeds this.
    key_added
        ``obs`` column for the boolean call.
    copy
        Work on a copy and return it.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Sets ``obs[key_added]`` (bool; False outside MNPs)
    and ``obs[key_added + '_score']`` (NaN outside MNPs).
    """
    adata = adata.copy() if copy else adata
    if K.COMPARTMENT not in adata.obs:
        msg = f"obs['{K.COMPARTMENT}'] is missing: run bm.annotate(adata) before call_aqp9_macrophages."
        raise DataSchemaError(msg)
    mnp = (adata.obs[K.COMPARTMENT] == CT.MNP).to_numpy() & (adata.obs[K.CELL_TYPE] == CT.MACROPHAGE).to_numpy()
    s = _mean_expression(adata, {"inf": CT.INFLAMMATORY_MAC_MARKERS, "res": CT.RESIDENT_MAC_MARKERS})
    diff = (s["inf"] - s["res"]).to_numpy()
    adata.obs[f"{key_added}_score"] = np.where(mnp, diff, np.nan).astype(np.float32)
    adata.obs[key_added] = mnp & (np.nan_to_num(diff, nan=-np.inf) > threshold)
    adata.uns.setdefault(K.BM, {})["aqp9"] = {"params": {"threshold": threshold}}
    logger.info("call_aqp9_macrophages: %d/%d macrophages called AQP9+", int(adata.obs[key_added].sum()), int(mnp.sum()))
    return adata if copy else None
