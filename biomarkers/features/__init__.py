"""Cells -> patients x features: AQP9+ macrophage fraction, proportions, signature means, pseudobulk."""

from __future__ import annotations

from biomarkers.features._aggregate import combine_stats, patient_stats, stats_to_features
from biomarkers.features._api import build_features
from biomarkers.features._bulk import bulk_features, bulk_settings, zscore_within
from biomarkers.features._clinical import clinical_feature_names, clinical_spec, encode_clinical, patient_values
from biomarkers.features._names import feature_name
from biomarkers.features._pipeline import FeaturePipeline, PreprocessParams
from biomarkers.features._reference import MIN_REFERENCE_COVERAGE, ScoringReference
from biomarkers.features._score import DEFAULT_PLAN, score_by_compartment
from biomarkers.features._standardize import MIN_COHORT_Z, standardize_per_cohort, standardize_settings

__all__ = [
    "DEFAULT_PLAN",
    "MIN_COHORT_Z",
    "MIN_REFERENCE_COVERAGE",
    "FeaturePipeline",
    "PreprocessParams",
    "ScoringReference",
    "build_features",
    "bulk_features",
    "bulk_settings",
    "clinical_feature_names",
    "clinical_spec",
    "combine_stats",
    "encode_clinical",
    "feature_name",
    "patient_stats",
    "patient_values",
    "score_by_compartment",
    "standardize_per_cohort",
    "standardize_settings",
    "stats_to_features",
    "zscore_within",
]
