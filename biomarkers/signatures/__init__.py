"""Signatures: published gene sets (with citations), alias-aware gene matching, per-cell and bulk scores.

The gene sets ship in ``data/gene_sets.tsv`` (``set, gene, role, source``); ``data/aliases.tsv`` maps previous HGNC
symbols to current ones; ``data/manifest.tsv`` records each data file's origin and sha256.
"""

from __future__ import annotations

from biomarkers.signatures._aliases import alias_table, coverage_report, resolve_genes
from biomarkers.signatures._bulk import score_bulk
from biomarkers.signatures._evaluate import evaluate_signatures
from biomarkers.signatures._gene_sets import (
    GeneSet,
    data_version,
    list_gene_sets,
    load_gene_sets,
    read_gene_set_file,
    write_gene_sets,
)
from biomarkers.signatures._score import control_genes, score_signatures

__all__ = [
    "GeneSet",
    "alias_table",
    "control_genes",
    "coverage_report",
    "data_version",
    "evaluate_signatures",
    "list_gene_sets",
    "load_gene_sets",
    "read_gene_set_file",
    "resolve_genes",
    "score_bulk",
    "score_signatures",
    "write_gene_sets",
]
