"""Every MLflow call: runs, artifacts, the pyfunc model, the registry."""

from __future__ import annotations

from biomarkers.tracking._compare import compare_runs
from biomarkers.tracking._pyfunc import BiomarkerModel
from biomarkers.tracking._registry import promote_if_better, resolve_model_uri
from biomarkers.tracking._report import build_report, log_report, predictions_report
from biomarkers.tracking._run import RunResult, run_experiment
from biomarkers.tracking._store import (
    TrackingServer,
    is_tracking_server,
    setup_mlflow,
    start_server,
    start_ui,
    tracking_uri,
    ui_address,
    ui_hint,
)

__all__ = [
    "BiomarkerModel",
    "RunResult",
    "TrackingServer",
    "build_report",
    "compare_runs",
    "is_tracking_server",
    "log_report",
    "predictions_report",
    "promote_if_better",
    "resolve_model_uri",
    "run_experiment",
    "setup_mlflow",
    "start_server",
    "start_ui",
    "tracking_uri",
    "ui_address",
    "ui_hint",
]
