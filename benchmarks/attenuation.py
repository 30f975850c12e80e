"""Effect size kept by the signature features, against the plain mean of the set's genes (not a test).

For the default simulated cohort (40 patients x 500 cells x 2,000 genes, planted effects), Cohen's d between
non-responders and responders of each per-patient ``sig__<compartment>__<set>`` feature is compared with d of the
plain mean of the set's genes over the same cells. A scoring method that keeps the between-patient signal has a
ratio near 1; recomputing control genes inside each sample pulls it towards 0 (the v0.1 behaviour).

Run: ``.venv/bin/python benchmarks/attenuation.py --seeds 0 1 2``
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd

import biomarkers as bm
from biomarkers import _keys as K
from biomarkers.features import DEFAULT_PLAN, FeaturePipeline
from biomarkers.signatures import load_gene_sets

FEATURES = [
    ("MNP", "AQP9_INFLAMMATORY_MACROPHAGE"),
    ("stroma", "IL6_JAK_STAT3"),
    ("stroma", "OSM_RESPONSE"),
    ("epithelium", "OSM_RESPONSE"),
]


def cohens_d(values: pd.Series, y: pd.Series) -> float:
    """(mean NR - mean R) / SD over patients."""
    v = values.loc[y.index]
    return float((v[y].mean() - v[~y].mean()) / v.std())


def measure(seed: int, *, n_patients: int, cells: int, n_genes: int) -> pd.DataFrame:
    adata = bm.simulate_cohort(n_patients=n_patients, cells_per_patient=cells, n_genes=n_genes, seed=seed)
    pipe = FeaturePipeline(gene_sets=load_gene_sets(list(DEFAULT_PLAN)))
    processed = pipe.process(adata)
    stats = pipe.stats(processed)
    if hasattr(pipe, "fit_reference"):
        pipe = pipe.fit_reference(stats)
    feats = pipe.finalize(stats)
    obs = processed.obs
    y = obs.groupby(K.PATIENT, observed=True)[K.RESPONSE].first().astype(str).eq(K.NON_RESPONDER)
    rows = []
    for comp, name in FEATURES:
        m = (obs[K.COMPARTMENT] == comp).to_numpy()
        genes = [g for g in pipe.gene_sets[name].genes if g in processed.var_names]
        sub = processed[m, genes]
        plain = pd.Series(np.asarray(sub.X.mean(axis=1)).ravel(), index=sub.obs_names)
        plain = plain.groupby(sub.obs[K.PATIENT].astype(str).to_numpy()).mean()
        d_feat = cohens_d(feats[f"sig__{comp}__{name}"], y)
        d_plain = cohens_d(plain, y)
        rows.append({"seed": seed, "feature": f"sig__{comp}__{name}", "d_feature": d_feat, "d_plain_mean": d_plain,
                     "ratio": d_feat / d_plain})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--genes", type=int, default=2000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    table = pd.concat([measure(s, n_patients=args.patients, cells=args.cells, n_genes=args.genes) for s in args.seeds])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"min ratio: {table['ratio'].min():.2f}")


if __name__ == "__main__":
    main()
