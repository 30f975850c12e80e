"""Typed exceptions. Each message says what is wrong, what was found, and how to fix it."""

from __future__ import annotations


class BiomarkersError(Exception):
    """Base class for every error a user can fix; the CLI prints it as one line, exit code 2."""


class ConfigError(BiomarkersError):
    """An experiment config (or a ``--set`` override) is invalid."""


class DataSchemaError(BiomarkersError, ValueError):
    """Input data is missing, unreadable or not in the expected shape."""


class FeatureMismatchError(BiomarkersError, ValueError):
    """Input to a model lacks the features or genes it needs."""


class ModelNotFoundError(BiomarkersError):
    """A model URI does not resolve in the configured MLflow store."""


class ChecksumError(BiomarkersError):
    """A downloaded file does not match its recorded checksum."""


class MissingDependencyError(BiomarkersError, ImportError):
    """An optional dependency (a ``pip install 'biomarkers[<extra>]'`` extra) is not installed."""
