"""Every MLflow call: runs, artifacts, the pyfunc model, the registry."""

from __future__ import annotations

from biomarkers.tracking._compare import compare_runs
from biomarkers.tracking._pyfunc import BiomarkerModel
from biomarkers.tracking._registry import promote_if_better, resolve_model_uri
from biomarkers.tracking._report import build_report, log_report, predictions_report
from biomarkers.tracking._run import RunResult, run_experiment
from biomarkers.tracking._store import setup_mlflow, tracking_uri

__all__ = [
    "BiomarkerModel",
    "RunResult",
    "build_report",
    "compare_runs",
    "log_report",
    "predictions_report",
    "promote_if_better",
    "resolve_model_uri",
    "run_experiment",
    "setup_mlflow",
    "tracking_uri",
]
