"""Marker-based cell-type annotation and the AQP9+ inflammatory macrophage call.

Each cell is scored per major type as the mean log-normalised expression of the type's published
markers (``biomarkers._celltypes.MARKERS``); the label is the best-scoring type and the confidence is
the margin to the runner-up. Scores depend only on the cell itself, so annotation gives the same
answer whether a cohort is processed whole, one sample at a time, or one new patient at predict time.
An optional cluster-level refinement (Leiden within each sample) relabels low-confidence cells by
their cluster's consensus, which helps on shallow real data.

Where the labels come from is a small registry (:data:`SOURCES`): ``markers`` (the call above) or ``obs`` (curated
author labels, mapped onto our types by :mod:`biomarkers.preprocess._cell_type_map`). The marker call always runs,
so curated labels are checked against it and the agreement is reported. Marker and AQP9 genes are looked up
through the package's one resolver (:func:`biomarkers._gene_names.resolve_genes`: direct, case, HGNC aliases).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers._errors import ConfigError, DataSchemaError
from biomarkers._gene_names import renamed, resolve_genes
from biomarkers.preprocess._cell_type_map import (
    MAP_COLUMNS,
    TARGETS,
    agreement,
    as_annotation_map,
    map_labels,
    table_version,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anndata import AnnData

    from biomarkers.preprocess._cell_type_map import AnnotationMapLike

logger = logging.getLogger("biomarkers")

UNASSIGNED = CT.UNASSIGNED


def _resolve_lists(gene_lists: Mapping[str, Sequence[str]], var_names: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each list's genes as var names (direct, case, alias), and the genes found under another name."""
    present: dict[str, list[str]] = {}
    moved: dict[str, str] = {}
    for name, genes in gene_lists.items():
        mapping, _ = resolve_genes(genes, var_names)
        present[name] = list(dict.fromkeys(mapping.values()))
        moved.update(renamed(mapping))
    return present, moved


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


@dataclass(frozen=True)
class _MarkerCall:
    """The marker call of every cell: label (major type or unassigned), margin confidence, and per-type scores."""

    labels: np.ndarray
    confidence: np.ndarray
    scores: pd.DataFrame  # cells x major types; -inf where a type has no marker in the data


@dataclass(frozen=True)
class _Labels:
    cell_type: np.ndarray
    compartment: np.ndarray
    confidence: np.ndarray


def _from_markers(call: _MarkerCall, targets: np.ndarray | None) -> _Labels:  # noqa: ARG001 - registry signature
    comps = np.array([CT.COMPARTMENT_OF.get(t, UNASSIGNED) for t in call.labels], dtype=object)
    return _Labels(call.labels, comps, call.confidence)


def _from_obs(call: _MarkerCall, targets: np.ndarray | None) -> _Labels:
    """Label cells from mapped author labels; a compartment target takes its best-scoring marker type."""
    assert targets is not None  # annotate() checks the column before dispatching
    t = pd.Series(targets, dtype=object).fillna(UNASSIGNED).to_numpy(dtype=object)
    types = np.where(np.isin(t, CT.MAJOR_TYPES), t, UNASSIGNED).astype(object)
    comps = np.array([CT.COMPARTMENT_OF.get(x, x if x in CT.COMPARTMENTS else UNASSIGNED) for x in t], dtype=object)
    conf = np.where(types != UNASSIGNED, 1.0, 0.0)
    for comp in CT.COMPARTMENTS:
        rows = np.flatnonzero(t == comp)
        if not rows.size:
            continue
        members = [m for m in CT.MAJOR_TYPES if CT.COMPARTMENT_OF[m] == comp and m in call.scores.columns]
        if not members:  # custom markers without this compartment's types: the type stays unassigned
            continue
        sc = call.scores.iloc[rows][members].to_numpy()
        padded = np.column_stack([sc, np.full(len(rows), -np.inf)])  # a runner-up for one-type compartments
        top2 = np.sort(padded, axis=1)[:, -2:]
        # Only a clear winner is named: no marker expression, or a tie, leaves the type unassigned (compartment kept).
        clear = (top2[:, 1] > 0) & (top2[:, 1] > top2[:, 0])
        types[rows[clear]] = np.asarray(members, dtype=object)[sc.argmax(axis=1)[clear]]
        with np.errstate(invalid="ignore"):
            conf[rows] = np.where(clear, (top2[:, 1] - np.maximum(top2[:, 0], 0)) / np.where(clear, top2[:, 1], 1), 0.0)
    return _Labels(types, comps, conf)


#: Annotation sources: where ``obs['cell_type']`` comes from (``preprocess.annotation`` in the config).
SOURCES: dict[str, Callable[[_MarkerCall, np.ndarray | None], _Labels]] = {"markers": _from_markers, "obs": _from_obs}


def _author_column(adata: AnnData, annotation_col: str) -> str | None:
    """Return the obs column with author labels, or None (a ``cell_type`` written by an earlier call is not one)."""
    ours = "annotate" in adata.uns.get(K.BM, {})
    if annotation_col == K.CELL_TYPE and (ours or K.CELL_TYPE not in adata.obs) and K.CELL_TYPE_AUTHOR in adata.obs:
        return K.CELL_TYPE_AUTHOR
    if annotation_col in adata.obs and not (annotation_col == K.CELL_TYPE and ours):
        return annotation_col
    return None


def _marker_call(
    adata: AnnData,
    present: Mapping[str, Sequence[str]],
    *,
    min_score: float,
    refine: bool,
    sample_col: str,
    resolution: float,
    seed: int | None,
) -> _MarkerCall:
    scores = _mean_expression(adata, present).fillna(-np.inf)
    top2 = np.sort(scores.to_numpy(), axis=1)[:, -2:]
    best = scores.to_numpy().argmax(axis=1)
    labels = np.asarray(scores.columns)[best].astype(object)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(top2[:, 1] > 0, (top2[:, 1] - np.maximum(top2[:, 0], 0)) / top2[:, 1], 0.0)
    labels[top2[:, 1] < min_score] = UNASSIGNED
    if refine:
        labels, conf = _refine_by_cluster(adata, scores, labels, conf, sample_col=sample_col, resolution=resolution, seed=seed)
    return _MarkerCall(labels, conf, scores)


def _warn_unknown(used: pd.DataFrame, col: str) -> None:
    unknown = used[used["cell_type"] == ""]
    if unknown.empty:
        return
    examples = ", ".join(f"{lab!r} ({n})" for lab, n in zip(unknown["label"][:5], unknown["n_cells"][:5], strict=True))
    more = ", ..." if len(unknown) > 5 else ""
    msg = (
        f"{int(unknown['n_cells'].sum())} cells with {len(unknown)} label(s) of obs['{col}'] are not in the cell-type map, "
        f"so they are left unassigned (out of compartment features): {examples}{more}. Map them in a TSV with columns "
        f"{', '.join(MAP_COLUMNS)} (cell_type one of: {', '.join(TARGETS)}) and set preprocess.annotation_map."
    )
    warnings.warn(msg, UserWarning, stacklevel=3)


def annotate(
    adata: AnnData,
    *,
    source: str = "markers",
    annotation_col: str = K.CELL_TYPE,
    annotation_map: AnnotationMapLike = None,
    markers: Mapping[str, Sequence[str]] | None = None,
    min_score: float = 0.1,
    refine: bool = False,
    sample_col: str = K.SAMPLE,
    resolution: float = 1.0,
    seed: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Label each cell with a major cell type, from published markers or from curated author labels.

    The marker call always runs (genes matched directly, by case or by HGNC alias). With ``source='obs'`` the
    labels come from ``obs[annotation_col]`` mapped through the package's table
    (``biomarkers/preprocess/data/cell_type_map.tsv``: Cell Ontology / CELLxGENE names and common gut-atlas labels)
    extended by ``annotation_map``; labels not in the table are left unassigned and reported in one warning, never
    guessed. Whenever author labels exist, their agreement with the marker call is reported.

    Parameters
    ----------
    adata
        Log-normalised expression in ``X`` (run :func:`biomarkers.normalize` first).
    source
        ``'markers'`` (score the markers) or ``'obs'`` (curated labels in ``obs[annotation_col]``); see :data:`SOURCES`.
    annotation_col
        Column of ``obs`` with author labels (after ``data.obs_map``). With ``source='markers'`` it is only compared
        with the call; a ``cell_type`` column is kept as ``obs['cell_type_author']`` rather than overwritten.
    annotation_map
        ``{label: cell_type}`` or a TSV/CSV with columns ``label, cell_type``, extending (and overriding) the
        package's table. ``cell_type`` is a major type, a compartment (type within it from the markers) or
        ``'unassigned'``.
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
    ``obs['cell_type_confidence']`` (marker margin of best over second-best score in [0, 1]; 1 for a mapped author
    type), ``obs['compartment']``, ``obs['cell_type_author']`` (when a ``cell_type`` column is replaced) and
    ``uns['bm']['annotate']`` (``params``, ``markers_found``, ``markers_renamed``, ``table_version``, and with
    author labels ``labels`` (label, cell_type, n_cells) and ``agreement`` (``cell_type``, ``compartment``,
    ``per_type``, ``per_type_n``, ``n_cells``)).

    Examples
    --------
    >>> import biomarkers as bm
    >>> adata = bm.simulate_cohort(n_patients=4, cells_per_patient=80, n_genes=400, seed=0)
    >>> bm.normalize(adata)
    >>> bm.annotate(adata)
    >>> 'macrophage' in set(adata.obs['cell_type'])
    True
    >>> adata.obs['author'] = adata.obs['true_cell_type'].astype(str).str.replace('_', ' ')
    >>> bm.annotate(adata, source='obs', annotation_col='author')
    >>> adata.uns['bm']['annotate']['agreement']['cell_type'] > 0.9
    True
    """
    if source not in SOURCES:
        msg = f"Unknown annotation source {source!r} (have: {', '.join(SOURCES)}). Set preprocess.annotation to one of them."
        raise ConfigError(msg)
    user_map = as_annotation_map(annotation_map)
    col = _author_column(adata, annotation_col)
    if source == "obs" and col is None:
        msg = (
            f"preprocess.annotation_col '{annotation_col}' is not a column of adata.obs, so annotation 'obs' has no "
            f"labels (have: {', '.join(map(str, adata.obs.columns))}). Set preprocess.annotation_col to the column "
            "with curated cell types (after data.obs_map), or use preprocess.annotation: markers."
        )
        raise DataSchemaError(msg)
    adata = adata.copy() if copy else adata
    markers = dict(markers or CT.MARKERS)
    present, moved = _resolve_lists(markers, list(adata.var_names))
    n_found = sum(bool(v) for v in present.values())
    if n_found < 2:
        msg = (
            f"Only {n_found}/{len(markers)} cell types have a marker gene among the {adata.n_vars} genes "
            f"(first genes: {', '.join(adata.var_names[:5])}). Are genes named by HGNC symbol? "
            "Map Ensembl IDs to symbols when reading (read_cohort does this from 10x features files)."
        )
        raise DataSchemaError(msg)
    if moved:
        logger.info("annotate: markers matched by case or alias: %s", ", ".join(f"{g}->{v}" for g, v in moved.items()))
    call = _marker_call(adata, present, min_score=min_score, refine=refine, sample_col=sample_col, resolution=resolution, seed=seed)
    targets, used = None, None
    if col is not None:
        targets, used = map_labels(adata.obs[col], user_map)
        if source == "obs":
            _warn_unknown(used, col)
    labels = SOURCES[source](call, targets)
    if col == K.CELL_TYPE:  # about to be overwritten: keep the author's labels
        adata.obs[K.CELL_TYPE_AUTHOR] = adata.obs[K.CELL_TYPE].copy()
        col = K.CELL_TYPE_AUTHOR
        logger.info("annotate: kept the input's obs['%s'] as obs['%s']", K.CELL_TYPE, K.CELL_TYPE_AUTHOR)
    cats = [*markers, UNASSIGNED] if source == "markers" else [*CT.MAJOR_TYPES, UNASSIGNED]
    adata.obs[K.CELL_TYPE] = pd.Categorical(labels.cell_type, categories=cats)
    adata.obs[K.CELL_TYPE_CONF] = np.clip(labels.confidence, 0, 1).astype(np.float32)
    adata.obs[K.COMPARTMENT] = pd.Categorical(labels.compartment, categories=[*CT.COMPARTMENTS, UNASSIGNED])
    report: dict[str, Any] = {
        "params": {
            "source": source,
            "annotation_col": annotation_col,
            "annotation_map": {"label": list(user_map), "cell_type": list(user_map.values())},
            "min_score": min_score,
            "refine": refine,
            "resolution": resolution,
        },
        "markers_found": {t: len(v) for t, v in present.items()},
        "markers_renamed": moved,
        "table_version": table_version(),
    }
    if targets is not None and used is not None:
        agree = agreement(targets, call.labels)
        report["labels"] = {k: used[k].tolist() for k in used.columns}
        report["agreement"] = agree
        worst = sorted(agree["per_type"].items(), key=lambda kv: kv[1])[:3]
        logger.info(
            "annotate: author labels obs['%s'] agree with the marker call for %.1f%% of %d typed cells (compartment %.1f%%; "
            "lowest: %s; %d cells unmapped) -> adata.uns['bm']['annotate']['agreement']",
            col, 100 * agree["cell_type"], agree["n_cells"], 100 * agree["compartment"],
            ", ".join(f"{t} {100 * v:.0f}%" for t, v in worst) or "none",
            int(used.loc[used["cell_type"] == "", "n_cells"].sum()),
        )  # fmt: skip
    adata.uns.setdefault(K.BM, {})["annotate"] = report
    counts = adata.obs[K.CELL_TYPE].value_counts()
    logger.info("annotate (%s): %s -> adata.obs['%s']", source, {str(t): int(n) for t, n in counts[counts > 0].items()}, K.CELL_TYPE)
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
    The AnnData when ``copy=True``, else ``None``. Sets ``obs[key_added]`` (bool; False outside MNPs),
    ``obs[key_added + '_score']`` (NaN outside MNPs) and ``uns['bm']['aqp9']`` (``params``, ``genes_found``,
    ``genes_renamed``: genes found under an older symbol, e.g. ``SELENOP -> SEPP1``).
    """
    adata = adata.copy() if copy else adata
    if K.COMPARTMENT not in adata.obs:
        msg = f"obs['{K.COMPARTMENT}'] is missing: run bm.annotate(adata) before call_aqp9_macrophages."
        raise DataSchemaError(msg)
    mnp = (adata.obs[K.COMPARTMENT] == CT.MNP).to_numpy() & (adata.obs[K.CELL_TYPE] == CT.MACROPHAGE).to_numpy()
    genes, moved = _resolve_lists({"inf": CT.INFLAMMATORY_MAC_MARKERS, "res": CT.RESIDENT_MAC_MARKERS}, list(adata.var_names))
    if moved:
        logger.info("call_aqp9_macrophages: genes matched by case or alias: %s", ", ".join(f"{g}->{v}" for g, v in moved.items()))
    s = _mean_expression(adata, genes)
    diff = (s["inf"] - s["res"]).to_numpy()
    adata.obs[f"{key_added}_score"] = np.where(mnp, diff, np.nan).astype(np.float32)
    adata.obs[key_added] = mnp & (np.nan_to_num(diff, nan=-np.inf) > threshold)
    adata.uns.setdefault(K.BM, {})["aqp9"] = {
        "params": {"threshold": threshold},
        "genes_found": {k: len(v) for k, v in genes.items()},
        "genes_renamed": moved,
    }
    logger.info("call_aqp9_macrophages: %d/%d macrophages called AQP9+", int(adata.obs[key_added].sum()), int(mnp.sum()))
    return adata if copy else None
