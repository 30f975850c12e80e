"""Features rebuilt per CV split: the label-free scoring reference fitted on the split's training patients only.

The scoring reference (control genes per compartment) uses no labels, so fitting it once on a whole cohort leaks
nothing about the outcome. Under leave-one-cohort-out the question is different: does a model trained on some
cohorts work on a cohort it has never seen, with nothing about that cohort's expression fitted? Then the
held-out cohort must be scored with a reference fitted on the training cohorts, exactly as ``predict`` scores a
new cohort with the registered model's reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import pandas as pd

    from biomarkers.features._pipeline import FeaturePipeline


def reference_split_features(
    pipe: FeaturePipeline,
    stats: pd.DataFrame,
    features: pd.DataFrame,
    *,
    transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Callable[[np.ndarray], pd.DataFrame]:
    """Return ``f(train_positions) -> features`` with the scoring reference fitted on those rows' patients.

    Parameters
    ----------
    pipe
        The experiment's feature pipeline (its own reference, if any, is replaced).
    stats
        Per-patient statistics computed without a reference (the input of :meth:`FeaturePipeline.fit_reference`).
    features
        The cohort's feature table (index: patients, the row order of the CV), whose columns the result keeps;
        columns the pipeline does not build (clinical covariates) are taken from it unchanged.
    transform
        Applied to the rebuilt pipeline columns before they replace the table's (e.g. per-cohort standardisation,
        which uses each cohort's own rows only).

    Returns
    -------
    The split feature builder for :func:`biomarkers.models.evaluate_models` (``split_features``).
    """

    def build(train: np.ndarray) -> pd.DataFrame:
        ids = features.index[train]
        rebuilt = pipe.fit_reference(stats.loc[ids]).finalize(stats).reindex(features.index)
        if transform is not None:
            rebuilt = transform(rebuilt)
        out = features.copy()
        common = [c for c in out.columns if c in rebuilt.columns]
        out[common] = rebuilt[common].to_numpy(dtype=float)
        return out

    return build
