"""CV + permutation test of the default experiment on 1 and 2 workers (and Dask): wall time, CPU time, equality.

Usage::

    python benchmarks/cv_parallel.py [--config experiments/anti_tnf_default.yaml] [--workers 1 2] [--dask]
                                     [--rounds 1] [--workdir DIR]

Builds the config's cohort features once (``biomarkers.cohort.prepare_cohort``, cached in ``--workdir``, default
``$TMPDIR/biomarkers-cv-parallel``; not timed), then, each in a fresh subprocess (so loky or Dask workers start cold,
as in ``biomarkers run``), calls ``evaluate_models`` exactly as ``biomarkers.tracking`` does, with
``n_workers=N``; ``--dask`` adds a run inside ``joblib.parallel_config(backend="dask")`` on a 2-worker
``LocalCluster`` on 127.0.0.1 (cluster start included). Prints, per run, the wall time of the call, the CPU seconds of
the process and its workers, and the load average during the run (the machine may be shared), and checks that
metrics, OOF predictions, per-repeat metrics and the permutation null are identical across runs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _features(config: Path, workdir: Path) -> Path:
    path = workdir / f"{config.stem}.features.pkl"
    if not path.exists():
        from biomarkers.cohort import prepare_cohort
        from biomarkers.config import load_config

        cohort = prepare_cohort(load_config(config))
        path.write_bytes(pickle.dumps((cohort.features, cohort.labels, cohort.groups)))
    return path


def _one(config: Path, features: Path, out: Path, n_workers: int, *, dask: bool) -> None:
    from contextlib import ExitStack

    from biomarkers.config import load_config
    from biomarkers.models import evaluate_models
    from biomarkers.tracking._run import _baselines, _model_specs

    cfg = load_config(config)
    X, y, groups = pickle.loads(features.read_bytes())
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with ExitStack() as stack:
        if dask:
            import joblib

            from biomarkers.compute import dask_client

            stack.enter_context(dask_client("local", n_workers=n_workers))
            stack.enter_context(joblib.parallel_config(backend="dask"))
        res = evaluate_models(
            X,
            y,
            model_specs=_model_specs(cfg),
            cv_spec=cfg.cv.model_dump(),
            seed=cfg.seed,
            groups=groups,
            baselines=_baselines(cfg, X.columns),
            n_boot=cfg.evaluation.n_boot,
            ci=cfg.evaluation.ci,
            n_permutations=cfg.evaluation.n_permutations,
            n_workers=n_workers,
        )
    wall = time.perf_counter() - t0
    if not dask and n_workers > 1:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)  # so the workers' CPU time is in RUSAGE_CHILDREN
    cpu = sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    stats = {"wall": wall, "cpu": cpu, "load": (load0, os.getloadavg()[0])}
    out.write_bytes(pickle.dumps((stats, res)))


def _same(a: Any, b: Any) -> list[str]:
    import numpy as np
    import pandas as pd

    diffs = []
    checks = {
        "metrics": lambda r: r.metrics,
        "per_repeat": lambda r: r.per_repeat,
        "predictions": lambda r: r.predictions,
        **{f"oof[{k}]": (lambda r, k=k: r.oof[k]) for k in a.oof},
    }
    for name, get in checks.items():
        try:
            pd.testing.assert_frame_equal(get(a), get(b), check_exact=True)
        except AssertionError:
            diffs.append(name)
    pa, pb = a.permutation, b.permutation
    if not (np.array_equal(pa.null, pb.null) and pa.observed == pb.observed and pa.p_value == pb.p_value):
        diffs.append("permutation")
    return diffs


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments" / "anti_tnf_default.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dask", action="store_true", help="also run on a 2-worker local Dask cluster")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run this many times (interleaved)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "biomarkers-cv-parallel")
    parser.add_argument("--one", nargs=3, metavar=("FEATURES", "OUT", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        features, out, spec = args.one
        _one(args.config, Path(features), Path(out), int(spec.removeprefix("dask")), dask=spec.startswith("dask"))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    features = _features(args.config, args.workdir)
    specs = [str(n) for n in args.workers] + (["dask2"] if args.dask else [])
    results = {}
    print(f"{'run':<10} {'wall s':>8} {'cpu s':>8} {'load 1 min (start-end)':>24}")
    for rnd in range(args.rounds):
        for spec in specs:
            out = args.workdir / f"result_{spec}_{rnd}.pkl"
            cmd = [sys.executable, __file__, "--config", str(args.config), "--one", str(features), str(out), spec]
            subprocess.run(cmd, check=True, cwd=REPO)
            stats, res = pickle.loads(out.read_bytes())
            results.setdefault(spec, res)
            label = f"dask x{spec[4:]}" if spec.startswith("dask") else f"{spec} worker(s)"
            load = f"{stats['load'][0]:.2f}-{stats['load'][1]:.2f}"
            print(f"{label:<10} {stats['wall']:>8.1f} {stats['cpu']:>8.1f} {load:>24}", flush=True)
    ref_spec, ref = next(iter(results.items()))
    for spec, res in results.items():
        diffs = _same(ref, res)
        print(f"{spec} vs {ref_spec}: {'identical' if not diffs else 'DIFFERENT: ' + ', '.join(diffs)}")
    print(
        f"best {ref.best_model}, AUROC {ref.metrics.loc[ref.best_model, 'auroc']:.4f}, permutation p {ref.permutation_p:.4f}"
    )


if __name__ == "__main__":
    main()
