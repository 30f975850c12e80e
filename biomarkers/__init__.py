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
    "predict": "biomarkers.predict",
}
_SUBPACKAGES = {
    "datasets", "io", "preprocess", "signatures", "features", "models", "config", "cohort", "tracking", "discovery", "compute",
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
    from biomarkers.cohort import check_experiment, prepare_cohort
    from biomarkers.config import ExperimentConfig, load_config
    from biomarkers.datasets import simulate_cohort
    from biomarkers.features import FeaturePipeline, build_features
    from biomarkers.io import read_cohort
    from biomarkers.models import evaluate_models
    from biomarkers.predict import predict
    from biomarkers.preprocess import annotate, call_aqp9_macrophages, normalize, qc
    from biomarkers.signatures import evaluate_signatures, load_gene_sets, score_signatures
    from biomarkers.tracking import BiomarkerModel, compare_runs, run_experiment
