"""A frozen scoring reference: control genes fitted once per compartment on the training cohort.

Seurat's and scanpy's module scores subtract the mean of expression-matched control genes. Which genes match is
decided by binning every gene's mean expression over a set of reference cells. Binning inside each sample (what
v0.1 did) lets a patient whose program is up move its genes, and their controls, to higher bins, which cancels
most of the between-patient signal. Here the bins and controls are fitted once per compartment over the training
cohort's cells, stored with the model, and applied unchanged to every sample, in training and at predict time.
A patient's score therefore never depends on the other patients scored with it.

Scores are linear in expression, so a patient's mean score in a compartment is ``(sum of log X over its cells) @ w
/ n_cells``: the per-patient gene sums that :func:`biomarkers.features.patient_stats` adds up are all that is
needed, and streaming stays one pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers._errors import FeatureMismatchError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from biomarkers.signatures import GeneSet

logger = logging.getLogger("biomarkers")

# Fraction of a set's reference genes, and of its control genes, that an input must have to be scored.
MIN_REFERENCE_COVERAGE = 0.7
CTRL_SIZE = 50  # scanpy's defaults
N_BINS = 25


@dataclass(frozen=True)
class SetReference:
    """One gene set in one compartment: its genes and its frozen control genes (names as in the training data)."""

    genes: tuple[str, ...]
    controls: tuple[str, ...]


@dataclass(frozen=True)
class ScoringReference:
    """Frozen control genes per compartment and gene set.

    Attributes
    ----------
    sets
        Compartment -> set name -> :class:`SetReference`.
    n_cells
        Compartment -> number of training cells the bins were computed over.
    ctrl_size, n_bins, seed
        The binning settings (scanpy's ``score_genes`` algorithm).
    """

    sets: dict[str, dict[str, SetReference]]
    n_cells: dict[str, int] = field(default_factory=dict)
    ctrl_size: int = CTRL_SIZE
    n_bins: int = N_BINS
    seed: int | None = 0

    @classmethod
    def fit(
        cls,
        gene_sums: Mapping[str, pd.Series],
        n_cells: Mapping[str, float],
        *,
        gene_sets: Mapping[str, GeneSet],
        plan: Mapping[str, Sequence[str]],
        ctrl_size: int = CTRL_SIZE,
        n_bins: int = N_BINS,
        seed: int | None = 0,
    ) -> ScoringReference:
        """Fit control genes per compartment from the cohort's summed log-normalised expression.

        Parameters
        ----------
        gene_sums
            Compartment -> sum over the cohort's cells of that compartment of each gene's log-normalised
            expression (index = gene names).
        n_cells
            Compartment -> number of those cells.
        gene_sets, plan
            The sets, and the compartments each is scored in.
        ctrl_size, n_bins, seed
            As in :func:`biomarkers.signatures.score_signatures`.

        Returns
        -------
        The reference. Compartments without cells get no entry; their features are NaN.
        """
        from biomarkers.signatures import control_genes, resolve_genes

        sets: dict[str, dict[str, SetReference]] = {}
        fitted_cells: dict[str, int] = {}
        for comp in sorted({c for cs in plan.values() for c in cs}):
            n = float(n_cells.get(comp, 0.0))
            if comp not in gene_sums or n <= 0:
                continue
            sums = gene_sums[comp]
            var_names = np.asarray(sums.index.astype(str))
            index = pd.Index(var_names)
            members = {}
            for name, comps in plan.items():
                if comp not in comps:
                    continue
                mapping, _ = resolve_genes(gene_sets[name].genes, var_names)
                if mapping:
                    members[name] = np.unique(index.get_indexer(list(mapping.values())))
            controls = control_genes(
                sums.to_numpy(dtype=np.float64) / n, var_names, members, ctrl_size=ctrl_size, n_bins=n_bins, seed=seed
            )
            sets[comp] = {
                name: SetReference(genes=tuple(var_names[idx]), controls=tuple(var_names[controls[name]]))
                for name, idx in members.items()
            }
            fitted_cells[comp] = int(n)
        return cls(sets=sets, n_cells=fitted_cells, ctrl_size=ctrl_size, n_bins=n_bins, seed=seed)

    @property
    def genes(self) -> dict[str, list[str]]:
        """Compartment -> every gene with a weight there (set genes and controls), sorted."""
        return {
            comp: sorted({g for ref in refs.values() for g in (*ref.genes, *ref.controls)})
            for comp, refs in self.sets.items()
        }

    def resolve(self, var_names: Iterable[str]) -> dict[str, str]:
        """Map reference genes to the input's var names (direct, case, then alias), for the genes present."""
        from biomarkers.signatures import resolve_genes

        names = [str(v) for v in var_names]
        wanted = sorted({g for genes in self.genes.values() for g in genes})
        present = set(names)
        # Exact names first; an alias or case match only where its target is not another reference gene's, so
        # one input gene never stands for two reference genes (e.g. CCL3L1 and CCL3L3), once as set, once as control.
        mapping = {g: g for g in wanted if g in present}
        claimed = set(mapping.values())
        rest, _ = resolve_genes([g for g in wanted if g not in mapping], names)
        for g, v in rest.items():
            if v not in claimed:
                mapping[g] = v
                claimed.add(v)
        return mapping

    def check_coverage(self, var_names: Iterable[str], *, min_coverage: float = MIN_REFERENCE_COVERAGE) -> pd.DataFrame:
        """Fraction of each set's reference genes and controls in the input; raise below `min_coverage`.

        Raises
        ------
        FeatureMismatchError
            A set has fewer than `min_coverage` of its genes, or of its control genes, in the input.
        """
        present = set(self.resolve(var_names))
        rows = []
        for comp, refs in self.sets.items():
            for name, ref in refs.items():
                rows.append(
                    {
                        "compartment": comp,
                        "set": name,
                        "genes": len(ref.genes),
                        "genes_found": sum(g in present for g in ref.genes),
                        "controls": len(ref.controls),
                        "controls_found": sum(g in present for g in ref.controls),
                    }
                )
        report = pd.DataFrame(rows, columns=["compartment", "set", "genes", "genes_found", "controls", "controls_found"])
        if report.empty:
            return report
        frac = np.minimum(report["genes_found"] / report["genes"], report["controls_found"] / report["controls"])
        partial = report[(frac < 1) & (frac >= min_coverage)]
        if len(partial):
            # Scores are then means over the genes present: usable, but not the training weights exactly.
            r = partial.iloc[0]
            logger.warning(
                "scoring reference: %d set x compartment scores use only the genes present (e.g. %s in %s: %d/%d "
                "set genes, %d/%d controls)", len(partial), r["set"], r["compartment"], r["genes_found"], r["genes"],
                r["controls_found"], r["controls"],
            )  # fmt: skip
        low = report[frac < min_coverage]
        if len(low):
            r = low.iloc[0]
            msg = (
                f"The input has too few of the scoring reference's genes: {r['set']} in {r['compartment']} has "
                f"{r['genes_found']}/{r['genes']} set genes and {r['controls_found']}/{r['controls']} control genes "
                f"(min {min_coverage:.0%} of each). Are genes HGNC symbols, and is this the full transcriptome?"
            )
            raise FeatureMismatchError(msg)
        return report

    def weights(self, comp: str, genes: Sequence[str]) -> pd.DataFrame:
        """Genes x sets weights for compartment `comp` over `genes` (reference names of the genes present).

        ``+1/n`` on the set's genes present and ``-1/m`` on its control genes present, so a score is the mean of
        the set's genes minus the mean of its controls, over what the input has.
        """
        present = set(genes)
        refs = self.sets.get(comp, {})
        w = pd.DataFrame(0.0, index=pd.Index(list(genes)), columns=list(refs))
        for name, ref in refs.items():
            g = [x for x in ref.genes if x in present]
            c = [x for x in ref.controls if x in present]
            if g:
                w.loc[g, name] += 1.0 / len(g)
            if c:
                w.loc[c, name] -= 1.0 / len(c)
        return w

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored with the model."""
        return {
            "sets": {
                comp: {n: {"genes": list(r.genes), "controls": list(r.controls)} for n, r in refs.items()}
                for comp, refs in self.sets.items()
            },
            "n_cells": dict(self.n_cells),
            "ctrl_size": self.ctrl_size,
            "n_bins": self.n_bins,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoringReference:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            sets={
                comp: {n: SetReference(tuple(r["genes"]), tuple(r["controls"])) for n, r in refs.items()}
                for comp, refs in d["sets"].items()
            },
            n_cells={k: int(v) for k, v in d.get("n_cells", {}).items()},
            ctrl_size=int(d.get("ctrl_size", CTRL_SIZE)),
            n_bins=int(d.get("n_bins", N_BINS)),
            seed=d.get("seed", 0),
        )
