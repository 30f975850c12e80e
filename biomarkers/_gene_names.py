"""One gene-name resolver for the whole package: direct, case-insensitive, then HGNC aliases (both directions).

Every step that looks a gene up by name (annotation markers, the AQP9 call, signature scoring, pseudobulk and
bulk genes) goes through :func:`resolve_genes`, so a data set named with older symbols (``IL8`` for ``CXCL8``,
``SEPP1`` for ``SELENOP``) loses no gene anywhere. It sits below ``preprocess`` and ``signatures`` because both
use it; the alias table itself ships with the signatures (``biomarkers/signatures/data/aliases.tsv``, whose
sha256 is recorded in ``data/manifest.tsv``).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

ALIASES = "aliases.tsv"


def _alias_path() -> Path:
    return Path(str(files("biomarkers").joinpath("signatures").joinpath("data").joinpath(ALIASES)))


@functools.cache
def _alias_groups() -> dict[str, tuple[str, ...]]:
    """Upper-cased symbol -> every name of its gene (current symbol first, then aliases in file order)."""
    table = pd.read_csv(_alias_path(), sep="\t", dtype=str, keep_default_na=False)
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
    return resolver_for(var_names).resolve(genes)


def renamed(mapping: Mapping[str, str]) -> dict[str, str]:
    """Return the pairs of a :func:`resolve_genes` mapping matched by case or alias (``gene -> var name``), for logs."""
    return {g: v for g, v in mapping.items() if g != v}
