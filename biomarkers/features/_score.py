"""Signature scores within compartments, computed one sample at a time."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from biomarkers import _celltypes as CT
from biomarkers import _keys as K

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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
    gene_sets: Mapping[str, GeneSet],
    plan: Mapping[str, Sequence[str]],
    sample_col: str = K.SAMPLE,
    seed: int | None = 0,
) -> None:
    """Score each gene set in the compartments the plan names, within each sample.

    Control genes (Satija et al. 2015 binning, as in ``sc.tl.score_genes``) are drawn within the
    sample and compartment being scored, so a patient's scores never depend on the other patients:
    the same cells give the same scores in training, in streaming, and at predict time.

    Parameters
    ----------
    adata
        Annotated (``obs['compartment']``), log-normalised cells.
    gene_sets
        Name -> :class:`biomarkers.signatures.GeneSet`.
    plan
        Gene-set name -> compartments to score it in.
    sample_col
        Column of ``obs`` with the sample.
    seed
        Seed for control-gene sampling.

    Returns
    -------
    Sets ``obs['sig__<set>']`` (float; NaN for cells outside the set's compartments).
    """
    from biomarkers.signatures import score_signatures

    comp = adata.obs[K.COMPARTMENT].to_numpy()
    samples = adata.obs[sample_col].to_numpy() if sample_col in adata.obs else np.zeros(adata.n_obs)
    out = {name: np.full(adata.n_obs, np.nan, dtype=np.float64) for name in plan}
    for sample in np.unique(samples):
        in_sample = samples == sample
        for compartment in {c for cs in plan.values() for c in cs}:
            mask = in_sample & (comp == compartment)
            if mask.sum() < 2:  # control genes need a distribution across cells
                continue
            names = [n for n, cs in plan.items() if compartment in cs]
            # Only X and the gene names are needed: do not copy the counts layer and obs for every subset.
            sub = AnnData(X=adata.X[np.flatnonzero(mask)], var=pd.DataFrame(index=adata.var_names))
            score_signatures(sub, gene_sets={n: gene_sets[n] for n in names}, seed=seed, on_missing="warn")
            for n in names:
                col = K.SIG_PREFIX + n
                if col in sub.obs:
                    out[n][mask] = sub.obs[col].to_numpy()
    for name, values in out.items():
        adata.obs[K.SIG_PREFIX + name] = values
    logger.info("score_by_compartment: %d sets -> adata.obs['%s*']", len(plan), K.SIG_PREFIX)
