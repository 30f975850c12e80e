"""Signature scores within compartments, computed one sample at a time."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from biomarkers import _celltypes as CT
from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError
from biomarkers.features._reference import ScoringReference

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from biomarkers.signatures import GeneSet

logger = logging.getLogger("biomarkers")

# Where each signature is read (issue 2): the AQP9 program only within MNPs (AQP9 is also a neutrophil
# gene); the gp130/STAT3 programs in MNPs, stroma and epithelium.
DEFAULT_PLAN: dict[str, tuple[str, ...]] = {
    "AQP9_INFLAMMATORY_MACROPHAGE": (CT.MNP,),
    "IL6_JAK_STAT3": (CT.MNP, CT.STROMA, CT.EPITHELIUM),
    "OSM_RESPONSE": (CT.MNP, CT.STROMA, CT.EPITHELIUM),
}


def score_by_compartment(
    adata: AnnData,
    *,
    reference: ScoringReference | None = None,
    gene_sets: Mapping[str, GeneSet] | None = None,
    plan: Mapping[str, Sequence[str]],
    seed: int | None = 0,
) -> ScoringReference:
    """Score each cell for the gene sets of its compartment, against a frozen scoring reference.

    Control genes (Satija et al. 2015 binning, as in ``sc.tl.score_genes``) come from `reference`, fitted once
    per compartment on a training cohort, so a cell's score does not depend on the other cells or patients it
    is scored with. Without a reference, one is fitted on `adata`'s own compartment cells: the scores then equal
    ``sc.tl.score_genes`` run on each compartment's cells (on a name-sorted matrix).

    Parameters
    ----------
    adata
        Annotated (``obs['compartment']``), log-normalised cells.
    reference
        Frozen control genes; None fits one on `adata` (needs `gene_sets`).
    gene_sets
        Name -> :class:`biomarkers.signatures.GeneSet`, to fit a reference.
    plan
        Gene-set name -> compartments to score it in.
    seed
        Seed of the control-gene draws when a reference is fitted here.

    Returns
    -------
    The reference used. Sets ``obs['sig__<set>']`` (float; NaN for cells outside the set's compartments).
    """
    comp = adata.obs[K.COMPARTMENT].astype(str).to_numpy()
    x = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    x = x.tocsr()
    if reference is None:
        if gene_sets is None:
            msg = "score_by_compartment needs a reference or the gene sets to fit one (gene_sets=...)."
            raise DataSchemaError(msg)
        sums, n = {}, {}
        for c in {c for cs in plan.values() for c in cs}:
            rows = np.flatnonzero(comp == c)
            if rows.size:
                sums[c] = pd.Series(np.asarray(x[rows].sum(axis=0, dtype=np.float64)).ravel(), index=adata.var_names)
                n[c] = float(rows.size)
        reference = ScoringReference.fit(sums, n, gene_sets=gene_sets, plan=plan, seed=seed)
    out = {name: np.full(adata.n_obs, np.nan, dtype=np.float64) for name in plan}
    found = reference.resolve(adata.var_names)
    var = pd.Index(adata.var_names.astype(str))
    for c, genes in reference.genes.items():
        rows = np.flatnonzero(comp == c)
        present = [g for g in genes if g in found]
        if rows.size == 0 or not present:
            continue
        w = reference.weights(c, present)
        scores = np.asarray(x[rows][:, var.get_indexer([found[g] for g in present])] @ w.to_numpy())
        for j, name in enumerate(w.columns):
            if name in out and c in plan.get(name, ()):
                out[name][rows] = scores[:, j]
    for name, values in out.items():
        adata.obs[K.SIG_PREFIX + name] = values
    logger.info("score_by_compartment: %d sets -> adata.obs['%s*'] (frozen reference)", len(plan), K.SIG_PREFIX)
    return reference
