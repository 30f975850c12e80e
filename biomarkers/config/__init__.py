"""Experiment configs (pydantic v2) and their loading."""

from __future__ import annotations

from biomarkers.config._load import apply_overrides, dump_config, flatten, load_config
from biomarkers.config._schema import ExperimentConfig

__all__ = ["ExperimentConfig", "apply_overrides", "dump_config", "flatten", "load_config"]
