"""Scale benchmark: raw-count cells -> patient features, streamed by sample vs a plain in-memory Scanpy pipeline.

Usage::

    python benchmarks/scale.py --cells 200000 --commands [--genes 20000] [--samples 40] [--workdir DIR]
    python benchmarks/scale.py --cells 300000 [--scheduler local] [--n-workers 2] [--skip-scanpy] [--generate-only]

``--commands`` measures the CLI as a user runs it, each in its own process (interpreter start and imports
included), side by side with the plain Scanpy pipeline in the same run:

* ``features``    ``biomarkers features FILE -o features.csv`` (streams the file one sample at a time).
* ``predict``     ``biomarkers predict FILE --model models:/scale-bench@champion`` (a small model trained first on a
                  simulated cohort with the same gene panel; training is not timed).
* ``run``         ``biomarkers run`` on the file (logistic regression, 3-fold CV, no permutations: the run's memory is
                  the streamed features; its CV cost is measured by the main job, not here).

The cohort (N cells, >= 20,000 genes, simulator sparsity: about 1,800 detected genes per cell) is generated with
``biomarkers.datasets.simulate_cohort`` a few patients at a time and appended to ONE h5ad on disk (X = raw counts,
CSR), so it is never held in memory whole. It is cached in ``--workdir`` and generation is not timed.

Each measured path then runs in its own subprocess, so peak memory is measured fairly:

* ``ours``        ``biomarkers.compute.transform_samples`` serial: one sample at a time from the h5ad.
* ``ours-dask``   the same on a local Dask cluster (``--scheduler local``; one task per sample, each worker reads its
                  own rows from the file).
* ``scanpy``      read the whole h5ad, ``sc.pp.calculate_qc_metrics`` + filter, ``normalize_total``, ``log1p``,
                  marker annotation with ``sc.tl.score_genes`` (one score per cell type, argmax), ``sc.tl.score_genes``
                  for each signature within each compartment, pseudobulk of the same genes, patient means.

Peak RSS: the child's own high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and, sampled every 0.1 s
with psutil, the summed RSS of the child and all its descendants (the Dask scheduler, nannies and workers); the table
shows the larger of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "biomarkers-scale"
PATIENTS_PER_CHUNK = 5  # simulate_cohort needs >= 4 patients per call


# ----------------------------------------------------------------------------------------------------------------------
# cohort generation (not timed)
# ----------------------------------------------------------------------------------------------------------------------
def _simulate_chunk(args: tuple[int, int, int, int, int]) -> tuple[object, object, list[str]]:
    """One batch of patients with unique ids; runs in a worker process."""
    import pandas as pd

    from biomarkers import _keys as keys
    from biomarkers.datasets import simulate_cohort

    i, n_patients, cells_per_patient, n_genes, seed = args
    a = simulate_cohort(
        n_patients=n_patients, cells_per_patient=cells_per_patient, n_genes=n_genes, seed=seed * 100_003 + i
    )
    prefix = f"B{i:04d}_"
    obs = pd.DataFrame(
        {col: (prefix + a.obs[col].astype(str)).to_numpy() for col in (keys.PATIENT, keys.SAMPLE, keys.BATCH)},
        index=prefix + a.obs_names.astype(str),
    )
    obs[keys.RESPONSE] = a.obs[keys.RESPONSE].astype(str).to_numpy()
    x = a.X.tocsr()
    return x, obs, list(a.var_names)


def _write_obs_var(f: object, obs: object, var_names: list[str]) -> None:
    import anndata as ad
    import pandas as pd

    ad.io.write_elem(f, "obs", obs)
    ad.io.write_elem(f, "var", pd.DataFrame(index=pd.Index(var_names)))
    for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
        ad.io.write_elem(f, key, {})
    f.attrs["encoding-type"] = "anndata"  # type: ignore[attr-defined]
    f.attrs["encoding-version"] = "0.1.0"  # type: ignore[attr-defined]


def generate(n_cells: int, *, n_genes: int, n_samples: int, workdir: Path, seed: int = 0, n_jobs: int = 2) -> Path:
    """Write (or reuse) an h5ad of `n_cells` simulated cells, appending a few patients at a time."""
    import anndata as ad
    import h5py
    import pandas as pd

    from biomarkers import _keys as keys

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"cohort_{n_cells}cells_{n_genes}genes_{n_samples}samples_seed{seed}.h5ad"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        print(f"cohort: reusing {path} ({json.loads(meta_path.read_text())})")
        return path
    cells_per_patient = max(n_cells // n_samples, 20)
    partial = path.with_suffix(".h5ad.partial")
    t0 = time.perf_counter()
    written, chunk, nnz = 0, 0, 0
    obs_parts: list[pd.DataFrame] = []
    var_names: list[str] | None = None
    with h5py.File(partial, "w") as f, ProcessPoolExecutor(n_jobs) as pool:
        expected = PATIENTS_PER_CHUNK * cells_per_patient
        pending: list = []
        while written < n_cells:
            # Keep n_jobs chunks in flight, but do not start chunks the cohort will not need.
            while len(pending) < n_jobs and (not pending or written + len(pending) * expected < n_cells):
                pending.append(
                    pool.submit(_simulate_chunk, (chunk, PATIENTS_PER_CHUNK, cells_per_patient, n_genes, seed))
                )
                chunk += 1
            x, obs, genes = pending.pop(0).result()
            take = min(x.shape[0], n_cells - written)
            x, obs = x[:take], obs.iloc[:take]
            x.indptr = x.indptr.astype(np.int64)  # > 2**31 stored values at a million cells
            if var_names is None:
                var_names = genes
                ad.io.write_elem(f, "X", x)
            else:
                assert genes == var_names, "the simulator's gene panel depends only on n_genes"
                ad.io.sparse_dataset(f["X"]).append(x)
            obs_parts.append(obs)
            written += take
            nnz += x.nnz
            print(f"  generated {written:,}/{n_cells:,} cells ({time.perf_counter() - t0:.0f} s)", flush=True)
        for fut in pending:
            fut.cancel()  # a chunk already running is finished by the pool and dropped
        obs_all = pd.concat(obs_parts)
        for col in (keys.PATIENT, keys.SAMPLE, keys.BATCH, keys.RESPONSE):
            obs_all[col] = pd.Categorical(obs_all[col])
        _write_obs_var(f, obs_all, var_names)
    meta = {
        "cells": written,
        "genes": n_genes,
        "samples": int(obs_all[keys.SAMPLE].nunique()),
        "patients": int(obs_all[keys.PATIENT].nunique()),
        "nnz_per_cell": round(nnz / written, 1),
        "density": round(nnz / written / n_genes, 4),
        "file_gb": round(partial.stat().st_size / 1e9, 2),
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    partial.rename(path)
    meta_path.write_text(json.dumps(meta))
    print(f"cohort: wrote {path} {meta}")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# measured paths (each in its own subprocess)
# ----------------------------------------------------------------------------------------------------------------------
def _child_ours(path: Path, *, scheduler: str | None, n_workers: int) -> dict[str, object]:
    from biomarkers.compute import sample_stats
    from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
    from biomarkers.signatures import load_gene_sets

    t0 = time.perf_counter()
    pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))
    res = sample_stats(pipe, path, scheduler=scheduler, n_workers=n_workers)
    feats = pipe.finalize(res.stats)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cells_in": int(res.samples["n_cells_in"].sum()),
        "cells_kept": int(res.samples["n_cells_kept"].sum()),
        "patients": len(feats),
        "features": feats.shape[1],
        "sample_s_sum": float(res.samples["seconds"].sum()),
    }


def _child_scanpy(path: Path) -> dict[str, object]:
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    from biomarkers import _celltypes as celltypes
    from biomarkers import _keys as keys
    from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
    from biomarkers.signatures import load_gene_sets

    gene_sets = load_gene_sets(list(DEFAULT_PLAN))
    defaults = FeaturePipeline(gene_sets=gene_sets)  # the same signatures, plan and pseudobulk genes as ours
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    adata = ad.read_h5ad(path)
    n_in = adata.n_obs
    x = adata.X
    if x.indptr.dtype != x.indices.dtype and x.nnz < np.iinfo(np.int32).max:
        # The incrementally written file keeps a 64-bit indptr (room for > 2**31 values); scipy needs matching index
        # dtypes (eliminate_zeros in calculate_qc_metrics), as in a file written whole. indptr is tiny to convert.
        x.indptr = x.indptr.astype(x.indices.dtype)
    timings["read"] = time.perf_counter() - t0
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    keep = (
        (adata.obs["n_genes_by_counts"] >= 200)
        & (adata.obs["total_counts"] >= 500)
        & (adata.obs["pct_counts_mt"] <= 25)
    )
    adata = adata[keep.to_numpy()].copy()
    timings["qc"] = time.perf_counter() - t0 - sum(timings.values())
    pb_genes = [g for g in defaults.pb_genes if g in adata.var_names]
    raw_pb = adata[:, pb_genes].X.toarray()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    timings["normalize"] = time.perf_counter() - t0 - sum(timings.values())
    types = list(celltypes.MARKERS)
    for t in types:
        sc.tl.score_genes(adata, list(celltypes.MARKERS[t]), score_name=f"ct__{t}", random_state=0)
    scores = adata.obs[[f"ct__{t}" for t in types]].to_numpy()
    cell_type = np.asarray(types)[scores.argmax(axis=1)]
    adata.obs[keys.CELL_TYPE] = cell_type
    adata.obs[keys.COMPARTMENT] = [celltypes.COMPARTMENT_OF[t] for t in cell_type]
    timings["annotate"] = time.perf_counter() - t0 - sum(timings.values())
    for name, comps in defaults.plan.items():
        col = f"sig__{name}"
        adata.obs[col] = np.nan
        for c in comps:
            mask = (adata.obs[keys.COMPARTMENT] == c).to_numpy()
            sub = adata[mask].copy()
            sc.tl.score_genes(sub, list(gene_sets[name].genes), score_name="s", random_state=0)
            adata.obs.loc[mask, f"{col}__{c}"] = sub.obs["s"].to_numpy()
            del sub
    timings["signatures"] = time.perf_counter() - t0 - sum(timings.values())
    obs = adata.obs
    sig_cols = [c for c in obs.columns if c.startswith("sig__") and c.count("__") == 2]
    means = obs.groupby(keys.PATIENT, observed=True)[sig_cols].mean()
    props = pd.crosstab(obs[keys.PATIENT], obs[keys.CELL_TYPE], normalize="index")
    pb = {}
    for c in defaults.pb_compartments:
        m = np.ones(adata.n_obs, dtype=bool) if c == "all" else (obs[keys.COMPARTMENT] == c).to_numpy()
        onehot = pd.get_dummies(obs[keys.PATIENT].astype(str)).to_numpy(dtype=float).T
        tot = onehot @ np.where(m, totals, 0.0)
        for j, g in enumerate(pb_genes):
            pb[f"pb__{c}__{g}"] = np.log1p(1e6 * (onehot @ np.where(m, raw_pb[:, j], 0.0)) / tot)
    feats = pd.concat([means, props], axis=1)
    timings["aggregate"] = time.perf_counter() - t0 - sum(timings.values())
    return {
        "wall_s": time.perf_counter() - t0,
        "cells_in": n_in,
        "cells_kept": int(adata.n_obs),
        "patients": len(feats),
        "features": feats.shape[1] + len(pb),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


def _run_child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True)
    p.add_argument("--path", type=Path, required=True)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--n-workers", type=int, default=2)
    a = p.parse_args(argv)
    if a.child == "scanpy":
        out = _child_scanpy(a.path)
    else:
        out = _child_ours(a.path, scheduler=a.scheduler, n_workers=a.n_workers)
    out["self_maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print("RESULT " + json.dumps(out), flush=True)


def _tree_rss(proc: object) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:  # type: ignore[attr-defined]
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(kind: str, path: Path, *, scheduler: str | None = None, n_workers: int = 2) -> dict[str, object]:
    """Run one path in a subprocess; return its figures plus the sampled peak RSS of its process tree."""
    import psutil

    cmd = [sys.executable, __file__, "--child", kind, "--path", str(path), "--n-workers", str(n_workers)]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_rss(ps))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    done.set()
    thread.join()
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"kind": kind, "error": f"exit code {proc.returncode}"}
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    out.update(kind=kind, process_s=process_s, tree_peak_gb=peak[0] / 1e9)
    out["peak_gb"] = max(out["tree_peak_gb"], out["self_maxrss_gb"])
    out["cells_per_s"] = out["cells_in"] / out["wall_s"]
    return out


def _scanpy_fits(path: Path) -> tuple[bool, str]:
    import psutil

    # Scanpy holds X (data + indices) and, for the QC filter and each compartment subset, copies of it: its peak was
    # 3.2 x the file size at 300k cells (12.2 GB for 3.8 GB).
    need = 3.3 * path.stat().st_size
    avail = psutil.virtual_memory().available
    note = f"needs about {need / 1e9:.0f} GB (3.3 x the {path.stat().st_size / 1e9:.1f} GB matrix), {avail / 1e9:.0f} GB available"
    return need < 0.9 * avail, note


def measure_cmd(kind: str, cmd: list[str], *, env: dict[str, str], cwd: Path, cells: int) -> dict[str, object]:
    """Run a CLI command as a user would; wall time of the process and the sampled peak RSS of its process tree."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    ps = psutil.Process(proc.pid)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_rss(ps))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"kind": kind, "error": f"exit code {proc.returncode}: {err.strip().splitlines()[-1:]}"}
    return {"kind": kind, "wall_s": wall, "process_s": wall, "cells_in": cells, "cells_per_s": cells / wall,
            "peak_gb": peak[0] / 1e9, "tree_peak_gb": peak[0] / 1e9, "self_maxrss_gb": float("nan"),
            "last_line": out.strip().splitlines()[-1] if out.strip() else ""}  # fmt: skip


def _bench_model(work: Path, *, n_genes: int, env: dict[str, str]) -> None:
    """Register models:/scale-bench@champion: a small simulated cohort with the benchmark's gene panel (not timed)."""
    import yaml

    cfg = {
        "schema_version": 1, "name": "scale-bench",
        "data": {"simulate": {"n_patients": 12, "cells_per_patient": 300, "n_genes": n_genes, "seed": 1}},
        "models": [{"kind": "logreg"}], "cv": {"n_splits": 2, "n_repeats": 1},
        "evaluation": {"n_boot": 100, "n_permutations": 0}, "plots": {"umap": False},
        "registry": {"model_name": "scale-bench"},
    }  # fmt: skip
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([str(Path(sys.executable).with_name("biomarkers")), "run", "train.yaml"], cwd=work, env=env,
                   check=True, capture_output=True)  # fmt: skip


def commands(path: Path, *, n_genes: int, cells: int, skip_scanpy: bool, runs: tuple[str, ...]) -> list[dict[str, object]]:
    """The CLI commands a user runs on `path`, and the plain Scanpy pipeline, measured in one run."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="bm-scale-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
           "BIOMARKERS_ARTIFACT_ROOT": str(work / "mlruns"), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    cli = str(Path(sys.executable).with_name("biomarkers"))
    rows = []
    if "features" in runs:
        rows.append(measure_cmd("features", [cli, "features", str(path), "-o", "features.csv"], env=env, cwd=work, cells=cells))
    if "predict" in runs:
        _bench_model(work, n_genes=n_genes, env=env)
        cmd = [cli, "predict", str(path), "--model", "models:/scale-bench@champion", "--out", "preds.csv"]
        rows.append(measure_cmd("predict", cmd, env=env, cwd=work, cells=cells))
    if "run" in runs:
        cfg = {
            "schema_version": 1, "name": "scale-run", "data": {"path": str(path)},
            "models": [{"kind": "logreg"}], "cv": {"n_splits": 3, "n_repeats": 1},
            "evaluation": {"n_boot": 200, "n_permutations": 0}, "registry": {"model_name": "scale-run"},
        }  # fmt: skip
        (work / "run.yaml").write_text(yaml.safe_dump(cfg))
        rows.append(measure_cmd("run", [cli, "run", "run.yaml"], env=env, cwd=work, cells=cells))
    fits, note = _scanpy_fits(path)
    if skip_scanpy or not fits:
        print(f"scanpy: skipped ({'--skip-scanpy' if skip_scanpy else 'would not fit'}; {note})")
    else:
        t0 = time.perf_counter()
        r = measure("scanpy", path)
        r["wall_s"] = time.perf_counter() - t0  # as a user runs it: interpreter start and imports included
        r["cells_per_s"] = r["cells_in"] / r["wall_s"]
        rows.append(r)
    return rows


def main() -> None:
    if "--child" in sys.argv:
        _run_child(sys.argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--samples", type=int, default=None, help="default: cells / 5000")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--scheduler", default=None, help="also run ours on this Dask scheduler (local or tcp://...)")
    p.add_argument("--n-workers", type=int, default=2)
    p.add_argument("--skip-scanpy", action="store_true")
    p.add_argument("--skip-serial", action="store_true")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commands", action="store_true", help="measure the CLI commands (features, predict, run) vs Scanpy")
    p.add_argument("--runs", default="features,predict", help="with --commands: which of features,predict,run")
    a = p.parse_args()
    if a.genes < 20_000:
        print(f"note: --genes {a.genes} is below the 20,000 the benchmark targets")
    n_samples = a.samples or max(4, a.cells // 5000)
    path = generate(a.cells, n_genes=a.genes, n_samples=n_samples, workdir=a.workdir, seed=a.seed)
    if a.generate_only:
        return
    meta = json.loads(path.with_suffix(".json").read_text())
    if a.commands:
        rows = commands(path, n_genes=a.genes, cells=meta["cells"], skip_scanpy=a.skip_scanpy,
                        runs=tuple(a.runs.split(",")))  # fmt: skip
        _report(meta, rows, kinds=("features", "predict", "run"))
        return
    rows = []
    if not a.skip_serial:
        rows.append(measure("ours", path))
    if a.scheduler:
        rows.append(measure("ours-dask", path, scheduler=a.scheduler, n_workers=a.n_workers))
    fits, note = _scanpy_fits(path)
    if a.skip_scanpy:
        print(f"scanpy: skipped (--skip-scanpy; {note})")
    elif not fits:
        print(f"scanpy: skipped, the in-memory path would not fit this machine ({note})")
    else:
        rows.append(measure("scanpy", path))
    _report(meta, rows, kinds=("ours", "ours-dask"))


def _report(meta: dict[str, object], rows: list[dict[str, object]], *, kinds: tuple[str, ...]) -> None:
    print(f"\ncohort: {meta}")
    print(f"{'path':<10} {'cells':>10} {'wall s':>8} {'cells/s':>9} {'peak GB':>8}  notes")
    for r in rows:
        if "error" in r:
            print(f"{r['kind']:<10} {'':>10} {'':>8} {'':>9} {'':>8}  {r['error']}")
            continue
        extra = {k: r[k] for k in ("cells_kept", "patients", "timings") if k in r}
        print(
            f"{r['kind']:<10} {r['cells_in']:>10,} {r['wall_s']:>8.1f} {r['cells_per_s']:>9,.0f} {r['peak_gb']:>8.2f}  "
            f"self {r['self_maxrss_gb']:.2f} GB, tree {r['tree_peak_gb']:.2f} GB, process {r['process_s']:.1f} s, {extra}"
        )
    by = {r["kind"]: r for r in rows if "error" not in r}
    if "scanpy" in by:
        for kind in kinds:
            if kind in by:
                o, s = by[kind], by["scanpy"]
                print(
                    f"ratio {kind} vs scanpy: throughput x{o['cells_per_s'] / s['cells_per_s']:.2f}, "
                    f"peak memory {o['peak_gb'] / s['peak_gb']:.2f} of scanpy's (1/{s['peak_gb'] / o['peak_gb']:.1f})"
                )
    print("RESULTS " + json.dumps({"cohort": meta, "rows": rows}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    main()
