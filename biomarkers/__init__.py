"""biomarkers: a biomarker-discovery ML workbench for anti-TNF non-response in Crohn's disease.

``import biomarkers as bm`` is fast: subpackages (and scanpy, mlflow, lightgbm behind them) load on
first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("biomarkers")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

# public name -> module that defines it; data flows down this list
_EXPORTS: dict[str, str] = {
    "simulate_cohort": "biomarkers.datasets",
    "read_cohort": "biomarkers.io",
    "qc": "biomarkers.preprocess",
    "normalize": "biomarkers.preprocess",
    "annotate": "biomarkers.preprocess",
    "call_aqp9_macrophages": "biomarkers.preprocess",
    "load_gene_sets": "biomarkers.signatures",
    "score_signatures": "biomarkers.signatures",
    "evaluate_signatures": "biomarkers.signatures",
    "build_features": "biomarkers.features",
    "FeaturePipeline": "biomarkers.features",
    "evaluate_models": "biomarkers.models",
    "ExperimentConfig": "biomarkers.config",
    "load_config": "biomarkers.config",
    "prepare_cohort": "biomarkers.cohort",
    "check_experiment": "biomarkers.cohort",
    "run_experiment": "biomarkers.tracking",
    "compare_runs": "biomarkers.tracking",
    "BiomarkerModel": "biomarkers.tracking",
    "predict": "biomarkers.prediction",
}
_SUBPACKAGES = {
    "datasets", "io", "preprocess", "signatures", "features", "models", "config", "cohort", "tracking", "discovery", "compute", "prediction", "stats",
}  # fmt: skip

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"biomarkers.{name}")
    msg = f"module 'biomarkers' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBPACKAGES])


if TYPE_CHECKING:
    from biomarkers.cohort import check_experiment as check_experiment
    from biomarkers.cohort import prepare_cohort as prepare_cohort
    from biomarkers.config import ExperimentConfig as ExperimentConfig
    from biomarkers.config import load_config as load_config
    from biomarkers.datasets import simulate_cohort as simulate_cohort
    from biomarkers.features import FeaturePipeline as FeaturePipeline
    from biomarkers.features import build_features as build_features
    from biomarkers.io import read_cohort as read_cohort
    from biomarkers.models import evaluate_models as evaluate_models
    from biomarkers.prediction import predict as predict
    from biomarkers.preprocess import annotate as annotate
    from biomarkers.preprocess import call_aqp9_macrophages as call_aqp9_macrophages
    from biomarkers.preprocess import normalize as normalize
    from biomarkers.preprocess import qc as qc
    from biomarkers.signatures import evaluate_signatures as evaluate_signatures
    from biomarkers.signatures import load_gene_sets as load_gene_sets
    from biomarkers.signatures import score_signatures as score_signatures
    from biomarkers.tracking import BiomarkerModel as BiomarkerModel
    from biomarkers.tracking import compare_runs as compare_runs
    from biomarkers.tracking import run_experiment as run_experiment
