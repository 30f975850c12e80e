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
- Candidates: the models (including the prespecified ``mechanism_score``), the clinical models when X has
  ``clin__`` covariates (``clinical_only``; ``clinical_plus_biomarkers``, the covariates plus the mechanism
  score) and the baselines. The one with the best CV AUROC is selected and registered (ties: the simplest).
- Nested CV (``_select.py``): the choose-then-fit procedure is cross-validated, choosing by an inner CV inside
  each outer training fold; its AUROC (``nested_cv_auroc``) is the headline, since the winner's own CV AUROC is
  optimistic by the choice. Paired bootstrap deltas compare it with the best baseline and the clinical model.
- Threshold: ``youden`` or ``{target_sensitivity: s}``, chosen inside each outer training fold on the inner OOF
  predictions (honest out-of-fold sensitivity / specificity), and on all patients' OOF predictions for predict.
- Selection-aware permutation test: each permutation reruns every candidate and keeps the best 1 x K-fold AUROC,
  so the p-value accounts for the choice; sequential stopping (Besag-Clifford).
- Leave-one-cohort-out (``cv.strategy``): each cohort held out once; labels permuted within cohorts.
"""

from __future__ import annotations

from biomarkers.models._cv import align_groups, as_binary_labels, cross_validate_model, patient_folds, summarize_oof
from biomarkers.models._estimators import (
    BASELINE_KINDS,
    BUILDERS,
    CLINICAL_KINDS,
    LIGHTGBM_DEFAULTS,
    MODEL_KINDS,
    TunedLogisticRegression,
    feature_importance,
    make_estimator,
    spec_name,
)
from biomarkers.models._evaluate import (
    CV_DEFAULTS,
    CV_STRATEGIES,
    DEFAULT_SINGLE_FEATURES,
    EvaluationResult,
    check_cv,
    evaluate_models,
    fit_final,
)
from biomarkers.models._mechanism import DEFAULT_MECHANISM_WEIGHTS
from biomarkers.models._metrics import (
    METRICS,
    choose_threshold,
    evaluate_predictions,
    operating_point,
    paired_delta_auroc,
    point_metrics,
    youden_threshold,
)
from biomarkers.models._permutation import (
    PERMUTATION_PARAMS,
    PermutationResult,
    permutation_test,
    selection_permutation_test,
)
from biomarkers.models._select import NestedSelection, cohort_folds, pick_best

__all__ = [
    "BASELINE_KINDS",
    "BUILDERS",
    "CLINICAL_KINDS",
    "CV_DEFAULTS",
    "CV_STRATEGIES",
    "DEFAULT_MECHANISM_WEIGHTS",
    "DEFAULT_SINGLE_FEATURES",
    "LIGHTGBM_DEFAULTS",
    "METRICS",
    "MODEL_KINDS",
    "PERMUTATION_PARAMS",
    "EvaluationResult",
    "NestedSelection",
    "PermutationResult",
    "TunedLogisticRegression",
    "align_groups",
    "as_binary_labels",
    "check_cv",
    "choose_threshold",
    "cohort_folds",
    "cross_validate_model",
    "evaluate_models",
    "evaluate_predictions",
    "feature_importance",
    "fit_final",
    "make_estimator",
    "operating_point",
    "paired_delta_auroc",
    "patient_folds",
    "permutation_test",
    "pick_best",
    "point_metrics",
    "selection_permutation_test",
    "spec_name",
    "summarize_oof",
    "youden_threshold",
]
