"""Discovery: find new candidate biomarkers by pseudobulk differential expression, honestly.

- :func:`pseudobulk` sums raw counts per patient within a compartment (the patient is the unit of testing).
- :func:`differential_expression` compares non-responders with responders per compartment (PyDESeq2 by default,
  batch as a covariate; ``ttest``/``wilcoxon`` on log-CPM as fast alternatives).
- :func:`discover` writes DE tables, volcano plots and the top genes as a gene-set file that an experiment can load
  (``signature_files:``), reports where known signatures rank and, on simulated data, precision/recall against the
  planted truth, and logs it all as an MLflow run.
- :func:`cv_with_discovery` / :class:`NestedDiscoveryFeature` re-discover the signature inside each training fold, so
  a cross-validated estimate of a discovered signature never uses held-out labels.
- :func:`stream_pseudobulk` adds the pseudobulk sums up one sample at a time (a file in bounded memory, or on
  Dask); :func:`discover`, :func:`differential_expression` and :func:`cv_with_discovery` take its
  :class:`PseudobulkSums` in place of the cells, with the same results.
- :func:`run_discovery` is ``biomarkers discover EXPERIMENT_OR_COHORT`` in one call.
"""

from __future__ import annotations

from biomarkers.discovery._compartments import differential_expression, patient_labels
from biomarkers.discovery._de import bh_adjust, filter_genes, rank_genes
from biomarkers.discovery._discover import DiscoveryResult, annotate_cells, discover
from biomarkers.discovery._entry import cv_experiment_with_discovery, run_discovery
from biomarkers.discovery._nested import NestedCVResult, NestedDiscoveryFeature, cv_with_discovery
from biomarkers.discovery._pseudobulk import pseudobulk, pseudobulk_table
from biomarkers.discovery._report import discovered_gene_sets, known_signature_ranks, truth_metrics, volcano_figure
from biomarkers.discovery._stream import PseudobulkSums, stream_pseudobulk

__all__ = [
    "DiscoveryResult",
    "NestedCVResult",
    "NestedDiscoveryFeature",
    "PseudobulkSums",
    "annotate_cells",
    "bh_adjust",
    "cv_experiment_with_discovery",
    "cv_with_discovery",
    "differential_expression",
    "discover",
    "discovered_gene_sets",
    "filter_genes",
    "known_signature_ranks",
    "patient_labels",
    "pseudobulk",
    "pseudobulk_table",
    "rank_genes",
    "run_discovery",
    "stream_pseudobulk",
    "truth_metrics",
    "volcano_figure",
]
