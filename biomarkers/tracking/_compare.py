"""Runs of an experiment, best first, read through the MLflow API."""

from __future__ import annotations

import pandas as pd


def compare_runs(*, experiment: str | None = None, metric: str = "cv_auroc", max_runs: int = 200) -> pd.DataFrame:
    """One row per model (child run), best first by ``metric``.

    Parameters
    ----------
    experiment
        MLflow experiment name; ``None`` means every experiment in the store.
    metric
        Child-run metric to sort by (``cv_auroc``, ``cv_auprc``, ...); lower is better only for ``cv_brier``.
    max_runs
        Most runs to read.

    Returns
    -------
    Columns ``experiment, parent_run, run_id, model, kind, <metric>, <metric>_ci_low, <metric>_ci_high`` and the other
    CV metrics, plus ``start_time``.
    """
    import mlflow

    from biomarkers._errors import BiomarkersError
    from biomarkers.tracking._store import setup_mlflow

    setup_mlflow()
    if experiment is not None:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in mlflow.search_experiments()]
            msg = f"No experiment named {experiment!r} in the store (have: {', '.join(names) or 'none'})."
            raise BiomarkersError(msg)
        exps = [exp]
    else:
        exps = [e for e in mlflow.search_experiments() if e.name != "Default"]
    rows = []
    for exp in exps:
        runs = mlflow.search_runs(
            experiment_ids=[exp.experiment_id], filter_string="tags.mlflow.parentRunId != ''", max_results=max_runs
        )
        if runs.empty:
            continue
        for _, r in runs.iterrows():
            row = {
                "experiment": exp.name,
                "parent_run": r.get("tags.mlflow.parentRunId"),
                "run_id": r["run_id"],
                "model": r.get("tags.mlflow.runName"),
                "kind": r.get("tags.kind"),
                "status": r.get("status"),
                "start_time": r.get("start_time"),
            }
            for m in ("cv_auroc", "cv_auprc", "cv_balanced_accuracy", "cv_brier"):
                for suffix in ("", "_ci_low", "_ci_high"):
                    row[m + suffix] = r.get(f"metrics.{m}{suffix}")
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if metric not in df.columns:
        msg = f"Unknown metric {metric!r}: use one of cv_auroc, cv_auprc, cv_balanced_accuracy, cv_brier."
        raise BiomarkersError(msg)
    return df.sort_values(metric, ascending=metric == "cv_brier", na_position="last").reset_index(drop=True)
