"""Gene coverage of gene sets; the resolver itself (direct, case, HGNC aliases) is :mod:`biomarkers._gene_names`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

# _Resolver and resolve_genes are re-exported: scoring, bulk scores, evaluation and the public API import them from here.
from biomarkers._gene_names import ALIASES, _Resolver, resolve_genes, resolver_for  # noqa: F401
from biomarkers.signatures._gene_sets import _data_dir, as_gene_sets

if TYPE_CHECKING:
    from collections.abc import Iterable

    from biomarkers.signatures._gene_sets import GeneSetsLike

logger = logging.getLogger("biomarkers")

COVERAGE_COLUMNS = ["set", "n_genes", "n_found", "frac_found", "found", "missing", "aliased"]
# found/missing/aliased are joined with this separator (string columns stay writable to h5ad).
LIST_SEP = ","


def alias_table() -> pd.DataFrame:
    """Return the package's alias table (``alias, symbol, kind, note``), read from ``data/aliases.tsv``."""
    return pd.read_csv(_data_dir() / ALIASES, sep="\t", dtype=str, keep_default_na=False)


def coverage_report(gene_sets: GeneSetsLike, var_names: Iterable[str]) -> pd.DataFrame:
    """How many genes of each set a data set has.

    Parameters
    ----------
    gene_sets
        Set names, ``{name: GeneSet}`` (from :func:`load_gene_sets`) or ``{name: [genes]}``.
    var_names
        The data set's gene names.

    Returns
    -------
    One row per set: ``set, n_genes, n_found, frac_found, found, missing, aliased``; ``found`` and ``missing`` are
    comma-joined symbols of the set, ``aliased`` lists ``gene->var_name`` pairs matched by case or alias.

    Examples
    --------
    >>> from biomarkers.signatures import coverage_report
    >>> cov = coverage_report({"S": ["SELENOP", "CD14", "NOPE1"]}, ["SEPP1", "CD14"])
    >>> cov[["set", "n_found", "missing", "aliased"]].to_dict("records")
    [{'set': 'S', 'n_found': 2, 'missing': 'NOPE1', 'aliased': 'SELENOP->SEPP1'}]
    """
    resolver = resolver_for(var_names)
    rows = []
    for name, gs in as_gene_sets(gene_sets).items():
        mapping, missing = resolver.resolve(gs.genes)
        n_genes = len(gs.genes)
        rows.append(
            {
                "set": name,
                "n_genes": n_genes,
                "n_found": len(mapping),
                "frac_found": len(mapping) / n_genes if n_genes else float("nan"),
                "found": LIST_SEP.join(mapping),
                "missing": LIST_SEP.join(missing),
                "aliased": LIST_SEP.join(f"{g}->{v}" for g, v in mapping.items() if g != v),
            }
        )
    return pd.DataFrame(rows, columns=COVERAGE_COLUMNS)
