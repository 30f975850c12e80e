"""Estimators, patient-level cross-validation, baselines and metrics with CIs.

Input is a patients x features table ``X`` (index = patient id) and a 0/1 label ``y`` (1 = non-responder).
Every preprocessing step (imputation, scaling, feature selection, tuning) lives inside the sklearn Pipeline, so
it is re-fitted on each training fold and never sees held-out patients.

Design choices
--------------
- Folds: stratified K-fold over patients, reshuffled each repeat; with ``groups`` (several samples per
  patient) ``StratifiedGroupKFold``, so a patient is never on both sides of a split.
- Repeated CV: headline metrics are the mean over repeats of each repeat's metric; their 95% CIs come from a
  bootstrap that resamples patients *and* draws a repeat per replicate, so they carry the CV's refitting
  variability too. A patient's repeat-averaged OOF probability is kept for plots, the threshold and
  ``predictions``; per-repeat AUROCs are kept (``auroc_repeat_mean``/``_sd``).
- Baselines on the same folds: ``majority`` (training-fold prevalence) and ``single_feature`` (a 1-feature
  logistic regression, so the feature's direction is learned inside each training fold, and its probabilities
  are calibrated enough for Brier score and balanced accuracy). The majority baseline's CV AUROC is usually
  below 0.5: a held-out non-responder leaves fewer non-responders in its training fold, so it gets a lower
  prevalence. Its Brier score is the reference to beat; its AUROC is not.
- Threshold: Youden's J on the best model's repeat-averaged OOF predictions (stored as ``threshold``; metrics
  tables use 0.5, since balanced accuracy at a threshold tuned on the same predictions would be optimistic).
- Permutation test: labels shuffled (by group), the whole CV re-run (1 repeat by default); the p-value is for
  the chosen model and is not corrected for choosing it among several (a Bonferroni bound is n_models x p).
  The best model's CV AUROC is likewise optimistic by the choice (winner's curse); the baselines are not chosen.
"""

from __future__ import annotations

from biomarkers.models._cv import align_groups, as_binary_labels, cross_validate_model, patient_folds, summarize_oof
from biomarkers.models._estimators import (
    BASELINE_KINDS,
    LIGHTGBM_DEFAULTS,
    MODEL_KINDS,
    TunedLogisticRegression,
    feature_importance,
    make_estimator,
    spec_name,
)
from biomarkers.models._evaluate import (
    CV_DEFAULTS,
    DEFAULT_SINGLE_FEATURES,
    EvaluationResult,
    evaluate_models,
    fit_final,
)
from biomarkers.models._metrics import METRICS, evaluate_predictions, point_metrics, youden_threshold
from biomarkers.models._permutation import PERMUTATION_PARAMS, PermutationResult, permutation_test

__all__ = [
    "BASELINE_KINDS",
    "CV_DEFAULTS",
    "DEFAULT_SINGLE_FEATURES",
    "LIGHTGBM_DEFAULTS",
    "METRICS",
    "MODEL_KINDS",
    "PERMUTATION_PARAMS",
    "EvaluationResult",
    "PermutationResult",
    "TunedLogisticRegression",
    "align_groups",
    "as_binary_labels",
    "cross_validate_model",
    "evaluate_models",
    "evaluate_predictions",
    "feature_importance",
    "fit_final",
    "make_estimator",
    "patient_folds",
    "permutation_test",
    "point_metrics",
    "spec_name",
    "summarize_oof",
    "youden_threshold",
]
