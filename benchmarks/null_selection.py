"""Is the selection-aware permutation test valid on null cohorts? (a benchmark, not a test).

The default experiment's whole procedure (features, every candidate, nested CV, selection-aware permutation test)
on simulated cohorts with no planted effect (``effect_size=0``), seeds 0-9 fixed in advance. A valid test gives
roughly uniform p-values: at most about 2 of 10 below 0.05. Each row also says whether the nested CV AUROC's CI
and the selected candidate's own CV AUROC CI contain 0.5.

Run: ``.venv/bin/python benchmarks/null_selection.py`` (about a minute per seed on 2 cores)
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

import biomarkers as bm
from biomarkers.cohort import prepare_cohort
from biomarkers.models import evaluate_models
from biomarkers.tracking._run import _baselines, _model_specs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Evaluate each null cohort and print the p-values."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "anti_tnf_default.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    args = ap.parse_args()
    logging.getLogger("biomarkers").setLevel(logging.WARNING)
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        cfg = bm.load_config(
            args.experiment,
            overrides=[f"data.simulate.seed={seed}", "data.simulate.effect_size=0", "plots.umap=false", f"seed={seed}"],
        )
        cohort = prepare_cohort(cfg)
        ev = evaluate_models(
            cohort.features, cohort.labels, model_specs=_model_specs(cfg), cv_spec=cfg.cv.model_dump(), seed=cfg.seed,
            baselines=_baselines(cfg, cohort.features.columns), n_boot=cfg.evaluation.n_boot, ci=cfg.evaluation.ci,
            n_permutations=cfg.evaluation.n_permutations, threshold_rule_=cfg.evaluation.threshold,
            n_workers=cfg.compute.n_workers,
        )  # fmt: skip
        nm, sel = ev.nested_metrics, ev.metrics.loc[ev.best_model]
        rows.append(
            {
                "seed": seed,
                "selected": ev.best_model,
                "selected_cv_auroc": sel["auroc"],
                "selected_ci_has_0.5": sel["auroc_ci_low"] <= 0.5 <= sel["auroc_ci_high"],
                "nested_auroc": nm["auroc"],
                "nested_ci": f"[{nm['auroc_ci_low']:.2f}, {nm['auroc_ci_high']:.2f}]",
                "nested_ci_has_0.5": nm["auroc_ci_low"] <= 0.5 <= nm["auroc_ci_high"],
                "selection_p": ev.permutation_p,
                "n_perms": ev.permutation.n_permutations if ev.permutation is not None else 0,
                "seconds": time.perf_counter() - t,
            }
        )
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.round(3).to_string(index=False))
    n_low = int((table["selection_p"] < 0.05).sum())
    print(
        f"p < 0.05 in {n_low} of {len(table)} null cohorts (valid: <= ~2); nested CI contains 0.5 in "
        f"{int(table['nested_ci_has_0.5'].sum())} of {len(table)}; selected model's own CI contains 0.5 in "
        f"{int(table['selected_ci_has_0.5'].sum())} of {len(table)}"
    )


if __name__ == "__main__":
    main()
