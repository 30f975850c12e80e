"""Read real cohorts (h5ad, 10x, GEO, bulk tables) into canonical AnnData, and fetch public data sets.

`read_cohort` and `iter_samples` read; `read_feature_table` reads a patient x feature table; `list_datasets` and `fetch_dataset` manage the download cache
behind ``biomarkers data list`` / ``biomarkers data fetch NAME``.
"""

from __future__ import annotations

from ._features_table import FeatureTable, read_feature_table
from ._fetch import fetch_dataset, list_datasets
from ._read import detect_kind, iter_samples, read_cohort
from ._spec import ReadSpec, check_sample_mix, sample_table

__all__ = [
    "FeatureTable",
    "ReadSpec",
    "check_sample_mix",
    "detect_kind",
    "fetch_dataset",
    "iter_samples",
    "list_datasets",
    "read_cohort",
    "read_feature_table",
    "sample_table",
]
