"""Scanpy processing: QC, normalisation, cell-type annotation and the AQP9+ macrophage call."""

from __future__ import annotations

from biomarkers.preprocess._annotate import UNASSIGNED, annotate, call_aqp9_macrophages
from biomarkers.preprocess._counts import count_cells
from biomarkers.preprocess._normalize import check_counts, normalize
from biomarkers.preprocess._qc import qc, qc_metrics

__all__ = ["UNASSIGNED", "annotate", "call_aqp9_macrophages", "check_counts", "count_cells", "normalize", "qc", "qc_metrics"]
