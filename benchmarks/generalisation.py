"""Does the registered champion generalise to unseen cohorts? (a benchmark, not a test).

As a user would: ``biomarkers run experiments/anti_tnf_default.yaml`` in a fresh working directory (its own
SQLite store), then ``biomarkers predict NEW.h5ad --model models:/<name>@champion`` on cohorts simulated with new
seeds (the same design, other patients). Each cohort's champion AUROC is printed beside its ideal AUROC (the
AUROC of the simulator's true latent risk, the best any model could do), with the mean gap.

Run: ``.venv/bin/python benchmarks/generalisation.py --seeds 101 102 103``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers.stats import auroc

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("biomarkers"))


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout, time.perf_counter() - t


def main() -> None:
    """Train once, predict each new cohort, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "anti_tnf_default.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None, help="Keep the store and predictions here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bm-generalisation-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    cfg = bm.load_config(args.experiment)
    name = cfg.registered_model_name
    out, seconds = _run([CLI, "run", str(args.experiment)], cwd=work, env=env)
    selected = [line for line in out.splitlines() if line.startswith(("Selected:", "Nested CV AUROC"))]
    print(f"trained {args.experiment.name} in {seconds:.1f} s")
    for line in selected:
        print("  " + line)

    rows = []
    for seed in args.seeds:
        adata = bm.simulate_cohort(
            n_patients=args.patients, cells_per_patient=args.cells, n_genes=args.genes, effect_size=1.0, seed=seed
        )
        path = work / f"cohort_seed{seed}.h5ad"
        adata.write_h5ad(path)
        preds = work / f"preds_seed{seed}.csv"
        _, seconds = _run(
            [CLI, "predict", str(path), "--model", f"models:/{name}@champion", "--out", str(preds)], cwd=work, env=env
        )
        p = pd.read_csv(preds).set_index(K.PATIENT)
        y = adata.obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].first().astype(str).eq(K.NON_RESPONDER)
        y = y.loc[p.index.astype(str)].astype(int).to_numpy()
        rows.append(
            {
                "seed": seed,
                "champion_auroc": auroc(y, p["p_non_response"].to_numpy()),
                "ideal_auroc": float(adata.uns[K.TRUTH]["ideal_auroc"]),
                "predict_s": seconds,
            }
        )
    table = pd.DataFrame(rows)
    table["gap"] = table["ideal_auroc"] - table["champion_auroc"]
    print(table.round(3).to_string(index=False))
    print(f"mean gap to the ideal: {table['gap'].mean():.3f} (goal <= 0.05); store: {work}")


if __name__ == "__main__":
    main()
