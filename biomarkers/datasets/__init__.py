"""Embedded, seeded data sets with planted and recorded effects."""

from __future__ import annotations

from biomarkers.datasets._simulate import simulate_cohort

__all__ = ["simulate_cohort"]
