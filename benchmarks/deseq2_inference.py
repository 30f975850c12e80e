"""PyDESeq2 inference: stock ``DefaultInference`` (``method="deseq2"``) vs the vectorised back-end (``deseq2_fast``).

Usage::

    python benchmarks/deseq2_inference.py [--compartment stroma] [--repeats 1] [--n-patients 40] [--seed 0]

Builds the default simulated cohort (``biomarkers.simulate_cohort()``: 40 patients x 500 cells x 2,000 genes),
annotates it as ``biomarkers discover`` does (``annotate_cells``), pseudobulks one compartment and times
``rank_genes`` on it with each method (batch as covariate, the default gene filter), one core each (``n_cpus=1``).
Prints wall seconds (median of ``--repeats``) and how closely the two agree: correlation of the Wald statistics,
largest log2FC difference, and the genes with ``padj < 0.05`` in each.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compartment", default="stroma")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n-patients", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import biomarkers as bm
    from biomarkers import _keys as k
    from biomarkers.discovery import annotate_cells, patient_labels, pseudobulk, rank_genes

    t0 = time.perf_counter()
    cells = annotate_cells(bm.simulate_cohort(n_patients=args.n_patients, seed=args.seed))
    counts, meta = pseudobulk(cells, compartment=args.compartment)
    y = patient_labels(meta).reindex(counts.index)
    ok = y.notna().to_numpy()
    counts, meta, y = counts.loc[ok], meta.loc[ok], y[ok].astype(int)
    print(f"cohort + annotation + pseudobulk: {time.perf_counter() - t0:.1f} s (not timed below)")
    print(f"{args.compartment}: {counts.shape[0]} patients ({int(y.sum())} NR) x {counts.shape[1]} genes")

    tables, seconds = {}, {}
    for method in ("deseq2_fast", "deseq2"):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tables[method] = rank_genes(counts, y.to_numpy(), covariates=meta[[k.BATCH]], method=method)
            times.append(time.perf_counter() - t)
        seconds[method] = statistics.median(times)
        print(f"{method:12s} {seconds[method]:8.2f} s  (runs: {', '.join(f'{s:.2f}' for s in times)})")

    fast, stock = (tables[m].set_index("gene") for m in ("deseq2_fast", "deseq2"))
    fast = fast.loc[stock.index]
    both = np.isfinite(fast["stat"]) & np.isfinite(stock["stat"])
    sig_f, sig_s = set(fast.index[fast["padj"] < 0.05]), set(stock.index[stock["padj"] < 0.05])
    print(f"genes tested: {len(stock)}; speed-up x{seconds['deseq2'] / seconds['deseq2_fast']:.1f}")
    print(f"corr(stat): {np.corrcoef(fast.loc[both, 'stat'], stock.loc[both, 'stat'])[0, 1]:.6f}")
    print(f"max |log2FC diff|: {np.nanmax(np.abs(fast['log2FC'] - stock['log2FC'])):.4f}")
    print(f"padj < 0.05: stock {len(sig_s)}, fast {len(sig_f)}, both {len(sig_s & sig_f)}")


if __name__ == "__main__":
    main()
