"""Map gene-set symbols to a data set's var names: direct, case-insensitive, then HGNC aliases (both directions)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import pandas as pd

from biomarkers.signatures._gene_sets import _data_dir, as_gene_sets

if TYPE_CHECKING:
    from collections.abc import Iterable

    from biomarkers.signatures._gene_sets import GeneSetsLike

logger = logging.getLogger("biomarkers")

ALIASES = "aliases.tsv"
COVERAGE_COLUMNS = ["set", "n_genes", "n_found", "frac_found", "found", "missing", "aliased"]
# found/missing/aliased are joined with this separator (string columns stay writable to h5ad).
LIST_SEP = ","


@functools.cache
def _alias_groups() -> dict[str, tuple[str, ...]]:
    """Upper-cased symbol -> every name of its gene (current symbol first, then aliases in file order)."""
    table = pd.read_csv(_data_dir() / ALIASES, sep="\t", dtype=str, keep_default_na=False)
    members: dict[str, list[str]] = {}
    for alias, symbol in zip(table["alias"].str.strip(), table["symbol"].str.strip(), strict=True):
        group = members.setdefault(symbol.upper(), [symbol])
        if alias not in group:
            group.append(alias)
    groups: dict[str, tuple[str, ...]] = {}
    for group in members.values():
        for name in group:
            groups[name.upper()] = tuple(group)
    return groups


def alias_table() -> pd.DataFrame:
    """Return the package's alias table (``alias, symbol, kind, note``), read from ``data/aliases.tsv``."""
    return pd.read_csv(_data_dir() / ALIASES, sep="\t", dtype=str, keep_default_na=False)


class _Resolver:
    """Look-ups over one data set's var names, built once and reused for every set."""

    def __init__(self, var_names: Iterable[str]) -> None:
        names = [str(v) for v in var_names]
        self.exact = set(names)
        self.upper: dict[str, str] = {}
        for v in names:
            self.upper.setdefault(v.upper(), v)  # first var wins if several differ only by case
        self.groups = _alias_groups()

    def _match(self, name: str) -> str | None:
        if name in self.exact:
            return name
        return self.upper.get(name.upper())

    def resolve_one(self, gene: str) -> str | None:
        hit = self._match(gene)
        if hit is not None:
            return hit
        for other in self.groups.get(gene.upper(), ()):
            if other.upper() == gene.upper():
                continue
            hit = self._match(other)
            if hit is not None:
                return hit
        return None

    def resolve(self, genes: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        mapping: dict[str, str] = {}
        missing: list[str] = []
        for gene in dict.fromkeys(genes):
            hit = self.resolve_one(gene)
            if hit is None:
                missing.append(gene)
            else:
                mapping[gene] = hit
        return mapping, missing


@functools.lru_cache(maxsize=8)
def _cached_resolver(names: tuple[str, ...]) -> _Resolver:
    return _Resolver(names)


def resolver_for(var_names: Iterable[str]) -> _Resolver:
    """Return a resolver for these var names, reused across calls (per-sample scoring sees the same genes every time)."""
    return _cached_resolver(tuple(str(v) for v in var_names))


def resolve_genes(genes: Iterable[str], var_names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Map gene symbols to the var names of a data set.

    Each gene is matched directly, then case-insensitively, then through the package's alias table
    (``data/aliases.tsv``: previous HGNC symbols and identical-copy variants) in either direction, so a set that says
    ``SELENOP`` finds ``SEPP1`` in an old reference and a set that says ``SEPP1`` finds ``SELENOP``.

    Parameters
    ----------
    genes
        Symbols to look for (e.g. ``GeneSet.genes``).
    var_names
        The data set's gene names (``adata.var_names`` or a bulk table's gene columns).

    Returns
    -------
    ``(mapping, missing)``: ``mapping[gene] = var name`` for every gene found, in input order, and the genes not found.

    Examples
    --------
    >>> from biomarkers.signatures import resolve_genes
    >>> resolve_genes(["SELENOP", "CD14", "NOPE1"], ["SEPP1", "cd14", "AQP9"])
    ({'SELENOP': 'SEPP1', 'CD14': 'cd14'}, ['NOPE1'])
    """
    return _Resolver(var_names).resolve(genes)


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
