"""Per-cohort standardisation: every biomarker feature z-scored within its cohort (``features.standardize``).

Cohorts differ by platform, chemistry and case mix; z-scoring each feature within each cohort removes the
offsets and scale differences between them (as Martin et al. 2019 scored bulk cohorts). The price: a new cohort
is standardised on itself, so predict needs a cohort of patients scored together, not one patient, and assumes a
case mix like the training cohorts'. Nothing is fitted on the training data, so the same rule applied at predict
time is "fit once, apply everywhere": the model stores the rule (method, minimum cohort size, cohort column).
Clinical covariates (``clin__``) are never standardised: their units mean something across cohorts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from biomarkers._errors import DataSchemaError
from biomarkers.stats import DDOF, zscore

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Fewest rows a cohort z-score is computed on (every cohort z-score in the package): below this the standard
#: deviation is noise.
MIN_COHORT_Z = 3


def standardize_settings(*, cohort_col: str | None, columns: Sequence[str]) -> dict[str, Any]:
    """Return the rule stored with the model (JSON-serialisable): method, minimum cohort size, cohort column, columns."""
    return {"method": "per_cohort", "min_cohort": MIN_COHORT_Z, "ddof": DDOF, "cohort_col": cohort_col, "columns": list(columns)}


def standardize_per_cohort(
    table: pd.DataFrame,
    *,
    cohorts: pd.Series | None = None,
    columns: Sequence[str] | None = None,
    min_cohort: int = MIN_COHORT_Z,
    where: str = "the input",
) -> pd.DataFrame:
    """Z-score columns within each cohort (population SD, :data:`biomarkers.stats.DDOF`).

    Parameters
    ----------
    table
        Rows (patients or samples) x features.
    cohorts
        Cohort name per row of ``table`` (aligned on the index); None: all rows are one cohort.
    columns
        Columns to standardise (the others are returned unchanged); None: all.
    min_cohort
        Smallest cohort a z-score is computed on.
    where
        Name of the input, for messages.

    Returns
    -------
    A copy of ``table`` with ``columns`` z-scored within each cohort (a column constant within a cohort is NaN
    there: it carries no information).

    Raises
    ------
    DataSchemaError
        A row has no cohort, or a cohort has fewer than ``min_cohort`` rows.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"f": [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]})
    >>> standardize_per_cohort(t, cohorts=pd.Series(list("aaabbb")))["f"].round(3).tolist()
    [-1.225, 0.0, 1.225, -1.225, 0.0, 1.225]
    """
    cols = list(table.columns if columns is None else columns)
    out = table.copy()
    if not cols or table.empty:
        return out
    if cohorts is None:
        groups = pd.Series("all", index=table.index)
    else:
        groups = cohorts.reindex(table.index)
        if groups.isna().any():
            missing = groups.index[groups.isna()]
            msg = (
                f"{len(missing)} of {len(groups)} rows of {where} have no cohort (e.g. {', '.join(map(str, missing[:3]))}). "
                "Fill the cohort column (data.cohort_col) for every patient."
            )
            raise DataSchemaError(msg)
        groups = groups.astype(str)
    sizes = groups.value_counts()
    small = sizes[sizes < min_cohort]
    if len(small):
        name = "the whole input" if cohorts is None else f"cohort {small.index[0]!r}"
        msg = (
            f"Per-cohort standardisation needs at least {min_cohort} rows per cohort scored together; {name} of "
            f"{where} has {int(small.iloc[0])}. Predict on the whole new cohort at once (or set features.standardize: none)."
        )
        raise DataSchemaError(msg)
    values = out[cols].astype(float)
    for _, idx in groups.groupby(groups, sort=False).groups.items():
        values.loc[idx] = zscore(values.loc[idx])
    out[cols] = values
    return out
