"""Figures logged with each run. Matplotlib only, Agg backend, nothing shown."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from biomarkers import _keys as K
from biomarkers.stats import zscore

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from matplotlib.figure import Figure


def _plt():
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_pr_figure(oof: dict[str, pd.DataFrame], *, baselines: set[str]) -> Figure:
    """ROC and PR curves of the out-of-fold predictions; baselines dashed.

    Parameters
    ----------
    oof
        Model name -> DataFrame with columns ``y_true`` and ``p`` (one row per patient).
    baselines
        Names in ``oof`` that are baselines.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, df in oof.items():
        y, p = df["y_true"].to_numpy(), df["p"].to_numpy()
        style = {"linestyle": "--", "alpha": 0.7} if name in baselines else {"linewidth": 2}
        fpr, tpr, _ = roc_curve(y, p)
        ax1.plot(fpr, tpr, label=f"{name} ({auc(fpr, tpr):.2f})", **style)
        prec, rec, _ = precision_recall_curve(y, p)
        ax2.plot(rec, prec, label=name, **style)
    ax1.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax1.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (out-of-fold, averaged over CV repeats, by patient)")
    prevalence = float(next(iter(oof.values()))["y_true"].mean())
    ax2.axhline(prevalence, color="grey", linewidth=0.8)
    ax2.set(xlabel="Recall", ylabel="Precision", title="Precision-recall")
    ax1.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def calibration_figure(oof: dict[str, pd.DataFrame], *, n_bins: int = 5) -> Figure:
    """Reliability diagram of out-of-fold probabilities."""
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, df in oof.items():
        frac, mean_p = calibration_curve(df["y_true"], df["p"], n_bins=n_bins, strategy="quantile")
        ax.plot(mean_p, frac, marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set(xlabel="Predicted P(non-response)", ylabel="Observed fraction", title="Calibration (out-of-fold)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def importance_figure(importance: pd.Series, *, top: int = 20) -> Figure:
    """Horizontal bars of the largest absolute importances."""
    plt = _plt()
    imp = importance.reindex(importance.abs().sort_values(ascending=False).index)[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1.2))
    ax.barh(imp.index, imp.to_numpy(), color=np.where(imp.to_numpy() >= 0, "#b2182b", "#2166ac"))
    ax.set(title="Feature importance (final model)")
    fig.tight_layout()
    return fig


def heatmap_figure(features: pd.DataFrame, labels: pd.Series) -> Figure:
    """Patients x signature features (z-scored), patients ordered by label."""
    plt = _plt()
    cols = [c for c in features.columns if c.startswith(K.FAMILY_SIG + K.FEATURE_SEP) or c == K.AQP9_FRACTION]
    order = labels.sort_values().index
    z = features.loc[order, cols]
    zs = zscore(z.astype(float))
    # A feature constant across patients is drawn at 0 (neutral colour); only missing values stay blank.
    z = zs.mask(zs.isna() & z.notna(), 0.0)
    fig, ax = plt.subplots(figsize=(0.5 * len(cols) + 3, 0.12 * len(order) + 2))
    im = ax.imshow(z.T.to_numpy(dtype=float), aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    ax.set_yticks(range(len(cols)), cols, fontsize=7)
    lab = labels.loc[order].to_numpy()
    ax.set_xticks(range(len(order)), [("NR " if v == 1 else "R ") + str(p) for p, v in zip(order, lab, strict=True)], fontsize=5, rotation=90)
    ax.set(title="Patients x signatures (z-score); NR = non-responder")
    fig.colorbar(im, ax=ax, shrink=0.6)
    fig.tight_layout()
    return fig


def umap_embedding(pcs: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D UMAP of PCA coordinates (scanpy's neighbours + UMAP). Runs in a worker process, see :class:`UmapJob`."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(np.zeros((pcs.shape[0], 1), dtype=np.float32), obsm={"X_pca": pcs})
    sc.pp.neighbors(a, n_neighbors=15, use_rep="X_pca", random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm[K.UMAP])


class UmapJob:
    """UMAP of a cell subsample, computed in a separate process while cross-validation runs.

    umap-learn and pynndescent spend most of their time compiling with numba on first use (tens of
    seconds on 2 cores); the model evaluation is single-threaded, so the second core does this for free.

    Parameters
    ----------
    adata
        Processed cells (log-normalised ``X``, ``obs['cell_type']``).
    max_cells
        Cells to embed (a seeded subsample).
    seed
        Seed for the subsample, PCA and UMAP.
    """

    def __init__(self, adata: AnnData, *, max_cells: int = 5000, seed: int = 0) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        import scanpy as sc

        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(adata.n_obs, size=min(max_cells, adata.n_obs), replace=False))
        sub = adata[idx].copy()
        sc.pp.pca(sub, n_comps=min(30, sub.n_vars - 1, sub.n_obs - 1), random_state=seed)
        self.obs = sub.obs[[K.CELL_TYPE, *[c for c in sub.obs.columns if c.startswith(K.SIG_PREFIX)]]].copy()
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        self._future = self._pool.submit(umap_embedding, np.asarray(sub.obsm["X_pca"], dtype=np.float32), seed=seed)

    def figure(self) -> Figure:
        """Wait for the embedding and draw it coloured by cell type and by the AQP9 program score."""
        try:
            xy = self._future.result()
        finally:
            self.close()
        return umap_figure(xy, self.obs)

    def close(self) -> None:
        """Stop the worker (also on failure or Ctrl-C)."""
        self._future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def umap_figure(xy: np.ndarray, obs: pd.DataFrame) -> Figure:
    """Two panels: cells coloured by cell type, and by the AQP9+ macrophage program score (MNPs)."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    types = obs[K.CELL_TYPE].astype(str)
    for t in sorted(types.unique()):
        m = (types == t).to_numpy()
        ax1.scatter(xy[m, 0], xy[m, 1], s=2, label=t)
    ax1.legend(markerscale=4, fontsize=7, loc="best")
    ax1.set(title="Cell type", xticks=[], yticks=[])
    score = obs.get(K.SIG_PREFIX + "AQP9_INFLAMMATORY_MACROPHAGE")
    ax2.scatter(xy[:, 0], xy[:, 1], s=2, color="lightgrey")
    if score is not None:
        m = np.isfinite(score.to_numpy())
        sca = ax2.scatter(xy[m, 0], xy[m, 1], s=3, c=score.to_numpy()[m], cmap="viridis")
        fig.colorbar(sca, ax=ax2, shrink=0.6)
    ax2.set(title="AQP9+ macrophage program score (MNPs)", xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def decision_curve_figure(curve: pd.DataFrame) -> Figure:
    """Decision curve: net benefit of acting on the model's calls, against treating everyone or no one.

    Parameters
    ----------
    curve
        ``threshold, net_benefit_model, net_benefit_treat_all, net_benefit_treat_none`` (see
        :attr:`biomarkers.models.EvaluationResult.decision_curve`).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    t = curve["threshold"].to_numpy()
    ax.plot(t, curve["net_benefit_model"], color="#b2182b", label="selected procedure (nested CV)")
    ax.plot(t, curve["net_benefit_treat_all"], color="grey", linestyle="--", label="treat all as non-responders")
    ax.plot(t, curve["net_benefit_treat_none"], color="black", linewidth=0.8, label="treat none")
    top = float(np.nanmax(curve[["net_benefit_model", "net_benefit_treat_all"]].to_numpy()))
    ax.set_ylim(-0.05, max(0.05, top * 1.1))
    ax.set(xlabel="Threshold probability of non-response", ylabel="Net benefit", title="Decision curve (out-of-fold)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
