"""The MLflow store: SQLite by default, artifacts under ./mlruns, ``MLFLOW_TRACKING_URI`` overrides."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("biomarkers")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns"


def tracking_uri() -> str:
    """Return the tracking URI in force: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_root() -> str:
    """Where new experiments put artifacts: ``$BIOMARKERS_ARTIFACT_ROOT`` or ``./mlruns`` (absolute URI)."""
    root = os.environ.get("BIOMARKERS_ARTIFACT_ROOT") or DEFAULT_ARTIFACT_ROOT
    return Path(root).resolve().as_uri()


def setup_mlflow() -> str:
    """Point MLflow at the project's store and registry; returns the tracking URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def get_or_create_experiment(name: str) -> str:
    """Experiment id for ``name``, creating it with artifacts under the project's artifact root."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=f"{artifact_root()}/{name}")
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create (concurrent runs).
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
