"""Predict latency: one new 5,000-cell patient from raw counts to a probability of non-response.

Usage::

    python benchmarks/predict_latency.py [--workdir DIR] [--cells 5000] [--genes 20000] [--repeats 5]

Trains a model with ``biomarkers.run_experiment`` on ``experiments/anti_tnf_default.yaml`` (CV and evaluation cut
down to be fast) into a temporary MLflow store (SQLite in ``--workdir``), or reuses the champion already there, then
times:

* in process, model already loaded: ``BiomarkerModel.features_from_cells`` (QC, normalisation, annotation, scores,
  patient features) + ``predict`` on an in-memory AnnData (the h5ad read is timed separately);
* the CLI end to end: ``biomarkers predict new.h5ad --model models:/NAME@champion --out preds.csv`` in a subprocess
  with ``MLFLOW_TRACKING_URI`` set (interpreter start, imports, model load, read, features, predict, CSV).

Prints the median of ``--repeats`` runs (and min/max).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "cv.n_splits=3",
    "cv.n_repeats=1",
    "evaluation.n_boot=100",
    "evaluation.n_permutations=0",
    "registry.model_name=latency-bench",
]


def _store(workdir: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "BIOMARKERS_ARTIFACT_ROOT": str(workdir / "mlruns"),
    }


def _champion(name: str) -> str | None:
    import mlflow

    from biomarkers.tracking import setup_mlflow

    setup_mlflow()
    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        return None
    return str(mv.version)


def train_or_reuse(workdir: Path) -> str:
    import biomarkers as bm

    name = OVERRIDES[-1].split("=", 1)[1]
    version = _champion(name)
    if version is not None:
        print(f"model: reusing models:/{name}@champion (version {version}) in {workdir}")
        return f"models:/{name}@champion"
    t0 = time.perf_counter()
    cfg = bm.load_config(REPO / "experiments" / "anti_tnf_default.yaml", overrides=OVERRIDES)
    res = bm.run_experiment(cfg)
    print(f"model: trained {res.model_uri} in {time.perf_counter() - t0:.0f} s (best: {res.evaluation.best_model})")
    return f"models:/{name}@champion"


def new_patient(workdir: Path, *, n_cells: int, n_genes: int) -> Path:
    """One patient, exactly `n_cells` raw-count cells, no label, written as h5ad."""
    import numpy as np

    from biomarkers import _keys as keys
    from biomarkers.datasets import simulate_cohort

    path = workdir / f"new_patient_{n_cells}cells_{n_genes}genes.h5ad"
    if path.exists():
        return path
    adata = simulate_cohort(n_patients=4, cells_per_patient=int(n_cells * 1.6), n_genes=n_genes, seed=123)
    sizes = adata.obs[keys.PATIENT].value_counts()
    patient = sizes[sizes >= n_cells].index[0]
    one = adata[adata.obs[keys.PATIENT] == patient]
    rng = np.random.default_rng(0)
    one = one[np.sort(rng.choice(one.n_obs, size=n_cells, replace=False))].copy()
    one.obs = one.obs[[keys.PATIENT, keys.SAMPLE, keys.BATCH]].copy()
    for key in list(one.uns):
        del one.uns[key]
    one.write_h5ad(path)
    return path


def _summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={len(times)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "biomarkers-predict-latency")
    p.add_argument("--cells", type=int, default=5000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **_store(a.workdir)}
    os.environ.update(_store(a.workdir))

    uri = train_or_reuse(a.workdir)
    path = new_patient(a.workdir, n_cells=a.cells, n_genes=a.genes)

    import anndata as ad

    from biomarkers.prediction import load_model

    t0 = time.perf_counter()
    pyfunc, model = load_model(uri)
    load_s = time.perf_counter() - t0
    read = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        cells = ad.read_h5ad(path)
        read.append(time.perf_counter() - t0)
    in_process, features_only = [], []
    for _ in range(a.repeats + 1):  # the first run warms caches (numba, gene-set files) and is dropped
        adata = cells.copy()
        t0 = time.perf_counter()
        feats = model.features_from_cells(adata)
        t1 = time.perf_counter()
        proba = pyfunc.predict(model.check_features(feats))
        t2 = time.perf_counter()
        in_process.append(t2 - t0)
        features_only.append(t1 - t0)
    in_process, features_only = in_process[1:], features_only[1:]

    exe = Path(sys.executable).parent / "biomarkers"
    cli, out = [], a.workdir / "preds.csv"
    for _ in range(max(3, a.repeats // 2)):
        t0 = time.perf_counter()
        run = subprocess.run(
            [str(exe), "predict", str(path), "--model", uri, "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        cli.append(time.perf_counter() - t0)
        if run.returncode != 0:
            print(run.stdout, run.stderr)
            raise SystemExit(run.returncode)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import biomarkers.cli, biomarkers.prediction"], env=env, check=True)
    import_s = time.perf_counter() - t0

    print(f"\nnew patient: {path.name} ({cells.n_obs} cells x {cells.n_vars} genes); model {uri}")
    print(f"p_non_response = {float(proba['p_non_response'].iloc[0]):.3f}")
    print(f"in process, model loaded (features_from_cells + predict): {_summary(in_process)}")
    print(f"  of which features_from_cells: {_summary(features_only)}")
    print(f"  h5ad read (not included above): {_summary(read)}; model load once: {load_s:.2f} s")
    print(f"CLI end to end (biomarkers predict ... --out csv): {_summary(cli)}")
    print(f"  of which interpreter start + imports (python -c 'import biomarkers.cli'): {import_s:.2f} s")


if __name__ == "__main__":
    main()
