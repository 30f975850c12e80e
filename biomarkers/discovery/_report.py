"""Reading DE results: planted-truth recovery, where known signatures rank, volcano plots, discovered gene sets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.figure import Figure

    from biomarkers.signatures import GeneSet

KNOWN_SETS: tuple[str, ...] = ("AQP9_INFLAMMATORY_MACROPHAGE", "IL6_JAK_STAT3", "OSM_RESPONSE")
KNOWN_GENES: tuple[str, ...] = ("AQP9", "OSM", "OSMR", "TREM1", "SOCS3")
SET_PREFIX = "DISCOVERED"


def significant(table: pd.DataFrame, *, fdr: float = 0.05, direction: str = "any") -> pd.DataFrame:
    """Rows with ``padj < fdr`` (``direction`` ``'up'``/``'down'`` in non-responders, or ``'any'``), by rank."""
    sig = table[table["padj"] < fdr]
    if direction == "up":
        sig = sig[sig["stat"] > 0]
    elif direction == "down":
        sig = sig[sig["stat"] < 0]
    return sig.sort_values("rank")


def _as_set(values: Any) -> set[str]:
    if values is None:
        return set()
    if isinstance(values, str):
        return {values}
    return {str(v) for v in np.asarray(values).ravel()}


def truth_sets(truth: Mapping[str, Any], compartment: str) -> tuple[set[str], set[str]]:
    """Planted expression DE genes and composition-driven genes of a compartment in ``uns['truth']``.

    Composition genes (MNP) differ in the pseudobulk because the planted shift towards AQP9+ inflammatory
    macrophages changes the cell mix, not any cell's expression: real, planted differences, but indirect.
    """
    planted = _as_set(truth.get("de_genes", {}).get(compartment))
    comp = truth.get("composition_de_genes", {}).get(compartment, {}) or {}
    composition = set().union(*(_as_set(v) for v in comp.values())) if comp else set()
    return planted, composition - planted


def truth_metrics(tables: Mapping[str, pd.DataFrame], truth: Mapping[str, Any], *, fdr: float = 0.05) -> pd.DataFrame:
    """Precision and recall of the significant genes against the simulator's recorded truth, per compartment.

    Parameters
    ----------
    tables
        Compartment -> DE table.
    truth
        ``adata.uns['truth']`` of :func:`biomarkers.simulate_cohort`.
    fdr
        Significance threshold on ``padj``.

    Returns
    -------
    One row per compartment: ``n_tested``, ``n_significant``, ``n_planted`` (expression effects planted there),
    ``n_composition``, ``tp_planted``, ``tp_composition``, ``precision`` (significant genes explained by planted
    biology, direct or compositional), ``precision_planted`` (direct effects only), ``recall`` (planted expression
    genes found; NaN when none were planted), ``recall_composition``.
    """
    rows = []
    for comp, table in tables.items():
        planted, composition = truth_sets(truth, comp)
        sig = set(significant(table, fdr=fdr)["gene"])
        tp, tpc = len(sig & planted), len(sig & composition)
        rows.append(
            {
                "compartment": comp,
                "n_tested": len(table),
                "n_significant": len(sig),
                "n_planted": len(planted),
                "n_composition": len(composition),
                "tp_planted": tp,
                "tp_composition": tpc,
                "precision": (tp + tpc) / len(sig) if sig else np.nan,
                "precision_planted": tp / len(sig) if sig else np.nan,
                "recall": tp / len(planted) if planted else np.nan,
                "recall_composition": tpc / len(composition) if composition else np.nan,
            }
        )
    return pd.DataFrame(rows)


def known_signature_ranks(
    tables: Mapping[str, pd.DataFrame],
    *,
    gene_sets: Mapping[str, GeneSet],
    genes: Sequence[str] = KNOWN_GENES,
    fdr: float = 0.05,
) -> pd.DataFrame:
    """Where known signatures and single genes rank in the data-driven results.

    Parameters
    ----------
    tables
        Compartment -> DE table (``rank`` 1 = most up in non-responders).
    gene_sets
        Sets to locate (e.g. ``load_gene_sets(["OSM_RESPONSE", ...])``).
    genes
        Single genes to locate.
    fdr
        Threshold for the fraction of significant set genes.

    Returns
    -------
    One row per (set or gene, compartment): ``name``, ``kind`` (``set``/``gene``), ``compartment``, ``n_genes``,
    ``n_tested``, ``rank`` (gene rank; median rank for a set), ``percentile`` (100 = top; a set's mean
    percentile, 50 expected by chance), ``log2FC`` (a set's median), ``padj`` (genes), ``frac_significant`` and
    ``frac_up_significant`` (sets), and ``enrichment_pvalue``: one-sided Mann-Whitney test that the set's
    statistics exceed the other tested genes' (a competitive, rank-based test; genes are not independent, so read
    it as a ranking aid, not a calibrated p-value).
    """
    from scipy.stats import mannwhitneyu

    rows = []
    for comp, table in tables.items():
        t = table.set_index("gene")
        n = len(t)
        pct = 100.0 * (1.0 - (t["rank"] - 1) / max(n - 1, 1))
        for name, gs in gene_sets.items():
            tested = [g for g in gs.genes if g in t.index]
            row: dict[str, Any] = {
                "name": name,
                "kind": "set",
                "compartment": comp,
                "n_genes": len(gs.genes),
                "n_tested": len(tested),
            }
            if tested:
                sub = t.loc[tested]
                rest = t.loc[~t.index.isin(tested), "stat"].dropna()
                stats_in = sub["stat"].dropna()
                p = (
                    mannwhitneyu(stats_in, rest, alternative="greater").pvalue
                    if len(stats_in) and len(rest)
                    else np.nan
                )
                row.update(
                    rank=float(sub["rank"].median()),
                    percentile=float(pct.loc[tested].mean()),
                    log2FC=float(sub["log2FC"].median()),
                    frac_significant=float((sub["padj"] < fdr).mean()),
                    frac_up_significant=float(((sub["padj"] < fdr) & (sub["stat"] > 0)).mean()),
                    enrichment_pvalue=float(p),
                )
            rows.append(row)
        for g in genes:
            row = {"name": g, "kind": "gene", "compartment": comp, "n_genes": 1, "n_tested": int(g in t.index)}
            if g in t.index:
                row.update(
                    rank=float(t.loc[g, "rank"]), percentile=float(pct.loc[g]),
                    log2FC=float(t.loc[g, "log2FC"]), padj=float(t.loc[g, "padj"]),
                )  # fmt: skip
            rows.append(row)
    cols = ["name", "kind", "compartment", "n_genes", "n_tested", "rank", "percentile", "log2FC", "padj",
            "frac_significant", "frac_up_significant", "enrichment_pvalue"]  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=cols)


def set_name(compartment: str, *, prefix: str = SET_PREFIX) -> str:
    """Gene-set name of a compartment's discovered signature, e.g. ``DISCOVERED_STROMA_UP``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}_{compartment.upper()}_UP")


def discovered_gene_sets(
    tables: Mapping[str, pd.DataFrame], *, top_n: int = 25, fdr: float = 0.05, source: str, prefix: str = SET_PREFIX
) -> dict[str, GeneSet]:
    """One gene set per compartment: genes with ``padj < fdr`` up in non-responders, ranked by ``stat``, at most ``top_n``.

    Compartments without such a gene get no set.
    """
    from biomarkers.signatures import GeneSet

    out = {}
    for comp, table in tables.items():
        genes = significant(table, fdr=fdr, direction="up")["gene"].head(top_n).tolist()
        if genes:
            name = set_name(comp, prefix=prefix)
            role = (
                f"discovered: up in non-responders in {comp} pseudobulk (padj < {fdr}, top {top_n} by Wald/t statistic); "
                "chosen with this cohort's labels, so evaluate it on another cohort or with cv_with_discovery"
            )
            out[name] = GeneSet(name, tuple(genes), role=role, source=source)
    return out


def volcano_figure(
    table: pd.DataFrame,
    *,
    compartment: str,
    fdr: float = 0.05,
    planted: set[str] | None = None,
    known: Sequence[str] = KNOWN_GENES,
    n_labels: int = 10,
) -> Figure:
    """Volcano plot (log2FC vs -log10 p) of one compartment; significant genes in colour, planted genes ringed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.add_subplot()
    t = table.dropna(subset=["pvalue", "log2FC"])
    y = -np.log10(np.clip(t["pvalue"].to_numpy(), 1e-300, None))
    x = t["log2FC"].to_numpy()
    sig = (t["padj"] < fdr).to_numpy()
    up = sig & (t["stat"] > 0).to_numpy()
    ax.scatter(x[~sig], y[~sig], s=6, c="0.7", linewidths=0, label="not significant")
    ax.scatter(x[up], y[up], s=10, c="tab:red", linewidths=0, label=f"up in non-responders (padj < {fdr})")
    ax.scatter(
        x[sig & ~up], y[sig & ~up], s=10, c="tab:blue", linewidths=0, label=f"down in non-responders (padj < {fdr})"
    )
    if planted:
        m = t["gene"].isin(planted).to_numpy()
        ax.scatter(x[m], y[m], s=28, facecolors="none", edgecolors="k", linewidths=0.6, label="planted (truth)")
    label_genes = set(t.loc[sig, "gene"].head(n_labels)) | (set(known) & set(t["gene"]))
    for gene, xi, yi in zip(t["gene"], x, y, strict=True):
        if gene in label_genes:
            ax.annotate(gene, (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axvline(0, c="0.5", lw=0.5)
    ax.set_xlabel("log2 fold change (non-responder vs responder)")
    ax.set_ylabel("-log10 p-value")
    ax.set_title(f"{compartment}: {int(sig.sum())} of {len(t)} genes with padj < {fdr}")
    ax.legend(fontsize=6, loc="upper left", frameon=False)
    return fig
