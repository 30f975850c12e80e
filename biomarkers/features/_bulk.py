"""Bulk features, and the bridge from single cells: signature z-scores within a cohort.

Martin et al. 2019 scored bulk cohorts as the mean of the set's genes z-scored within the cohort.
The same recipe on a single-cell cohort's whole-sample pseudobulk gives a feature that exists in
both kinds of data (``pbz__<set>``), so a model trained on one can score the other. Each cohort is
standardised on its own: this removes platform and batch offsets (array vs RNA-seq, log2 vs log1p),
at the price of needing a cohort (not a single sample) to predict on, and of assuming a similar
case mix across cohorts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError
from biomarkers._gene_names import renamed, resolve_genes
from biomarkers.features._names import feature_name
from biomarkers.features._standardize import MIN_COHORT_Z, standardize_per_cohort

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from biomarkers.signatures import GeneSet

logger = logging.getLogger("biomarkers")

FAMILY_GENE_Z = "gz"
MIN_COHORT = MIN_COHORT_Z  # z-scores need a cohort: with fewer samples the standard deviation is meaningless


def bulk_settings(
    *, gene_sets: Mapping[str, GeneSet], var_names: Iterable[str], families: Sequence[str], genes: Sequence[str] = ()
) -> dict[str, Any]:
    """Freeze which genes each bulk feature uses (JSON-serialisable, travels with the model).

    Genes are matched to ``var_names`` directly, by case or by HGNC alias (:func:`biomarkers.signatures.resolve_genes`)
    and frozen under the cohort's own names.

    Parameters
    ----------
    gene_sets
        Sets to score as ``pbz__<set>``.
    var_names
        Genes of the training cohort; sets keep only these (a new cohort must have them too).
    families
        Any of ``bulk_signatures`` (``pbz__<set>``) and ``bulk_genes`` (``gz__<gene>``).
    genes
        Single genes for ``bulk_genes``; empty means every gene of the cohort.
    """
    var = list(var_names)
    sets: dict[str, list[str]] = {}
    if "bulk_signatures" in families:
        for name, gs in gene_sets.items():
            mapping, _ = resolve_genes(gs.genes, var)
            if mapping:
                sets[name] = sorted(set(mapping.values()))
    single: list[str] = []
    if "bulk_genes" in families:
        found, missing = resolve_genes(genes or var, var)
        single = list(dict.fromkeys(found.values()))
        if renamed(found):
            logger.info("bulk_settings: genes matched by case or alias: %s", ", ".join(f"{g}->{v}" for g, v in renamed(found).items()))
        if missing:
            logger.info("bulk_settings: %d requested gene(s) not in the cohort, no gz__ feature: %s", len(missing), ", ".join(missing[:10]))
    if not sets and not single:
        msg = (
            f"No bulk feature can be built: no gene set has a gene among the {len(var)} genes, and no single gene "
            "was requested. Add features.families: [bulk_genes], or check gene symbols."
        )
        raise DataSchemaError(msg)
    return {"gene_sets": sets, "genes": single}


def zscore_within(table: pd.DataFrame, *, cohorts: pd.Series | None = None) -> pd.DataFrame:
    """Z-score each column across rows (samples) of one cohort, or within each of ``cohorts`` (one label per row)."""
    return standardize_per_cohort(table, cohorts=cohorts, where="the bulk table")


def bulk_features(
    table: pd.DataFrame,
    *,
    gene_sets: Mapping[str, Sequence[str]],
    genes: Sequence[str],
    cohorts: pd.Series | None = None,
    **_: Any,
) -> pd.DataFrame:
    """Turn samples x genes (log scale) into ``pbz__<set>`` and ``gz__<gene>`` features, standardised within the table.

    With ``cohorts`` (``data.cohort_col``), genes are z-scored within each cohort instead of across the table.

    Parameters
    ----------
    table
        Samples x genes, log-scale expression (extra non-gene columns are ignored).
    gene_sets
        Set name -> genes (from :func:`bulk_settings`).
    genes
        Single genes (from :func:`bulk_settings`).
    cohorts
        Cohort per row of ``table`` (aligned on the index); None: the table is one cohort.

    Returns
    -------
    Samples x features. A set whose genes are all absent from ``table`` gives NaN (and is reported by
    the caller's coverage check).
    """
    needed = sorted({g for gs in gene_sets.values() for g in gs} | set(genes))
    # A new cohort may name a frozen gene differently (IL8 for CXCL8): features keep the frozen name.
    columns = {str(c): c for c in table.columns}
    where, _ = resolve_genes(needed, list(columns))
    if renamed(where):
        logger.info("bulk_features: genes matched by case or alias: %s", ", ".join(f"{g}->{v}" for g, v in renamed(where).items()))
    z = zscore_within(table[[columns[c] for c in dict.fromkeys(where.values())]].astype(float), cohorts=cohorts)
    z.columns = [str(c) for c in z.columns]
    out: dict[str, pd.Series] = {}
    for name, gs in gene_sets.items():
        found = list(dict.fromkeys(where[g] for g in gs if g in where))
        out[feature_name(K.FAMILY_PBZ, name)] = z[found].mean(axis=1) if found else pd.Series(np.nan, index=z.index)
    for g in genes:
        out[feature_name(FAMILY_GENE_Z, g)] = z[where[g]] if g in where else pd.Series(np.nan, index=z.index)
    return pd.DataFrame(out, index=table.index)
