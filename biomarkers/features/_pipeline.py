"""The whole path from raw cells to the patient feature table, with frozen parameters."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from biomarkers import _keys as K
from biomarkers._errors import DataSchemaError
from biomarkers.features._aggregate import ALL, combine_stats, patient_stats, reference_inputs, stats_to_features
from biomarkers.features._bulk import bulk_features
from biomarkers.features._reference import ScoringReference
from biomarkers.features._score import DEFAULT_PLAN, score_by_compartment

if TYPE_CHECKING:
    from collections.abc import Iterable
    from os import PathLike

    import pandas as pd
    from anndata import AnnData

    from biomarkers.signatures import GeneSet

logger = logging.getLogger("biomarkers")

BRIDGE_FAMILY = "bulk_signatures"  # pbz__<set>: cohort-standardised pseudobulk signature scores, also computable on bulk
DEFAULT_FAMILIES = ("aqp9_macrophage_fraction", "proportions", "signature_means", "pseudobulk", "n_cells")
DEFAULT_PB_GENES = ("OSM", "OSMR", "TREM1", "AQP9", "SOCS3")
DEFAULT_PB_COMPARTMENTS = ("MNP", "stroma", "epithelium", ALL)


@dataclass
class PreprocessParams:
    """Frozen QC / normalisation / annotation settings (the experiment config's ``preprocess``)."""

    min_genes: int = 200
    min_counts: int = 500
    max_pct_mt: float | None = 25.0
    nmads: float = 5.0
    nmads_mt: float = 3.0
    mt_prefix: str = "MT-"
    remove_doublets: bool = False
    target_sum: float = 1e4
    refine_annotation: bool = False
    aqp9_threshold: float = 0.0
    annotation: str = "markers"
    annotation_col: str = K.CELL_TYPE
    # A path (from the config) is read here, so the mapping's content, not its path, travels with the model.
    annotation_map: dict[str, str] | str | PathLike[str] | None = None

    def __post_init__(self) -> None:
        from biomarkers.preprocess._cell_type_map import as_annotation_map

        self.annotation_map = as_annotation_map(self.annotation_map)


@dataclass
class FeaturePipeline:
    """Raw counts -> QC -> normalise -> annotate -> AQP9 call -> signatures -> patient features.

    Everything the path learns is fixed by these parameters, none of it from labels, so the pipeline
    can run outside the cross-validation folds and travels with a model to ``predict``.

    Parameters
    ----------
    gene_sets
        Gene sets to score (name -> :class:`biomarkers.signatures.GeneSet`).
    plan
        Gene-set name -> compartments to score it in.
    preprocess
        QC / normalisation / annotation settings.
    pb_genes, pb_compartments
        Pseudobulk genes and compartments.
    families
        Feature families to emit.
    seed
        Seed for control-gene sampling.
    reference
        Frozen control genes per compartment (:class:`ScoringReference`), fitted on the training cohort with
        :meth:`fit_reference`. None: :meth:`finalize` fits one on the statistics it is given (the input itself).
    """

    gene_sets: dict[str, GeneSet]
    plan: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PLAN))
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    pb_genes: tuple[str, ...] = DEFAULT_PB_GENES
    pb_compartments: tuple[str, ...] = DEFAULT_PB_COMPARTMENTS
    families: tuple[str, ...] = DEFAULT_FAMILIES
    seed: int | None = 0
    reference: ScoringReference | None = None

    def __post_init__(self) -> None:
        missing = sorted(set(self.plan) - set(self.gene_sets))
        if missing:
            msg = f"Signature plan names gene sets that were not loaded: {', '.join(missing)}. Add them to `signatures`."
            raise DataSchemaError(msg)

    def check_genes(self, var_names: Iterable[str]) -> pd.DataFrame:
        """Report gene coverage per scored set; raise when a set has no gene present."""
        from biomarkers.signatures import coverage_report

        report = coverage_report({n: self.gene_sets[n] for n in self.plan}, list(var_names))
        empty = report.loc[report["n_found"] == 0, "set"].tolist()
        if empty:
            msg = (
                f"Gene set(s) {', '.join(empty)} have no gene in the data (0/{int(report.set_index('set').loc[empty[0], 'n_genes'])} "
                "found). Are genes named by HGNC symbol (not Ensembl IDs)? Otherwise drop the set from `signatures`."
            )
            raise DataSchemaError(msg)
        if self.reference is not None:
            self.reference.check_coverage(var_names)
        return report

    def process(self, adata: AnnData) -> AnnData:
        """Run QC, normalisation, annotation and the AQP9 call; returns a new AnnData.

        QC and normalisation read the raw counts wherever `adata` keeps them (``layers['counts']``, ``.raw.X``
        or ``X``, see :func:`biomarkers.preprocess.count_cells`). With a frozen :attr:`reference`, each cell's
        signature scores are also set in ``obs['sig__<set>']``.
        """
        from biomarkers.preprocess import annotate, call_aqp9_macrophages, count_cells, normalize, qc

        p = self.preprocess
        t0 = time.perf_counter()
        if adata.n_obs == 0:
            msg = "The input has 0 cells: nothing to process. Check the file, or a data.query that keeps no cells."
            raise DataSchemaError(msg)
        allow = bool(adata.uns.get(K.BM, {}).get("io", {}).get("params", {}).get("allow_non_integer", False))
        cells = count_cells(adata, allow_non_integer=allow)
        self.check_genes(cells.var_names)
        ad = qc(
            cells,
            min_genes=p.min_genes,
            min_counts=p.min_counts,
            max_pct_mt=p.max_pct_mt,
            nmads=p.nmads,
            nmads_mt=p.nmads_mt,
            mt_prefix=p.mt_prefix,
            remove_doublets=p.remove_doublets,
            seed=self.seed,
            copy=True,
        )
        normalize(ad, target_sum=p.target_sum)
        annotate(
            ad,
            source=p.annotation,
            annotation_col=p.annotation_col,
            annotation_map=p.annotation_map,
            refine=p.refine_annotation,
            seed=self.seed,
        )
        call_aqp9_macrophages(ad, threshold=p.aqp9_threshold)
        if self.reference is not None:
            score_by_compartment(ad, reference=self.reference, plan=self.plan)
        ad.uns.setdefault(K.BM, {})["features"] = {"params": self.to_dict()}
        logger.info("process: %d -> %d cells in %.1f s", adata.n_obs, ad.n_obs, time.perf_counter() - t0)
        return ad

    def fit_reference(self, stats: pd.DataFrame) -> FeaturePipeline:
        """Return a copy of this pipeline with control genes fitted on these statistics (no labels used).

        Parameters
        ----------
        stats
            Per-patient statistics of the training cohort, computed without a reference (:meth:`stats`).
        """
        sums, n = reference_inputs(stats, sorted({c for cs in self.plan.values() for c in cs}))
        if not sums:
            msg = (
                "Cannot fit the scoring reference: the statistics hold no expression sums (they were computed "
                "with a reference already). Compute them with a pipeline whose reference is None."
            )
            raise DataSchemaError(msg)
        ref = ScoringReference.fit(sums, n, gene_sets=self.gene_sets, plan=self.plan, seed=self.seed)
        return replace(self, reference=ref)

    @property
    def bridge_genes(self) -> dict[str, list[str]]:
        """Gene set -> its genes, for the ``bulk_signatures`` family (``pbz__<set>``); empty when not requested."""
        if BRIDGE_FAMILY not in self.families:
            return {}
        return {n: list(self.gene_sets[n].genes) for n in self.plan}

    def stats(self, processed: AnnData) -> pd.DataFrame:
        """Additive per-patient statistics of processed cells (see :func:`patient_stats`).

        With a frozen reference only the expression sums of its genes are kept; without one, those of every gene
        in the scored compartments, from which :meth:`fit_reference` fits it.
        """
        score_genes = None
        if self.reference is not None:
            found = self.reference.resolve(processed.var_names)
            score_genes = {c: {g: found[g] for g in genes if g in found} for c, genes in self.reference.genes.items()}
        st = patient_stats(
            processed,
            plan=self.plan,
            pb_genes=self.pb_genes,
            pb_compartments=self.pb_compartments,
            score_genes=score_genes,
        )
        extra = sorted({g for gs in self.bridge_genes.values() for g in gs} - set(self.pb_genes))
        if extra:
            whole = patient_stats(processed, plan={}, pb_genes=extra, pb_compartments=(ALL,), score_genes={})
            st = st.join(whole[[c for c in whole.columns if c.startswith(f"pbsum__{ALL}__")]])
        return st

    def finalize(self, stats: pd.DataFrame) -> pd.DataFrame:
        """Patients x features from (combined) statistics.

        Signature scores use the frozen :attr:`reference`; without one, a reference fitted on `stats` itself.
        """
        reference = self.reference
        if reference is None and "signature_means" in self.families:
            reference = self.fit_reference(stats).reference
        feats = stats_to_features(
            stats,
            plan=self.plan,
            pb_genes=self.pb_genes,
            pb_compartments=self.pb_compartments,
            families=[f for f in self.families if f != BRIDGE_FAMILY],
            reference=reference,
        )
        if self.bridge_genes:
            feats = feats.join(bulk_features(self.pseudobulk_logcpm(stats), gene_sets=self.bridge_genes, genes=[]))
        return feats

    def pseudobulk_logcpm(self, stats: pd.DataFrame) -> pd.DataFrame:
        """Whole-sample pseudobulk log2(CPM+1) per patient of the bridge genes: the single-cell analogue of a biopsy."""
        cols = [c for c in stats.columns if c.startswith(f"pbsum__{ALL}__")]
        tot = stats[f"pbtot__{ALL}"]
        table = np.log2(1 + 1e6 * stats[cols].div(tot.where(tot > 0), axis=0))
        table.columns = [c.removeprefix(f"pbsum__{ALL}__") for c in cols]
        return table

    def transform(self, adata: AnnData) -> pd.DataFrame:
        """Raw-count cells -> patients x features."""
        return self.finalize(self.stats(self.process(adata)))

    def transform_chunks(self, chunks: Iterable[AnnData]) -> pd.DataFrame:
        """Process chunks (e.g. one sample each) one at a time; memory is bounded by the largest chunk."""
        return self.finalize(combine_stats([self.stats(self.process(c)) for c in chunks]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters (gene sets included), for MLflow artifacts and provenance."""
        return {
            "gene_sets": {n: {"genes": list(g.genes), "role": g.role, "source": g.source} for n, g in self.gene_sets.items()},
            "plan": {n: list(c) for n, c in self.plan.items()},
            "preprocess": asdict(self.preprocess),
            "pb_genes": list(self.pb_genes),
            "pb_compartments": list(self.pb_compartments),
            "families": list(self.families),
            "seed": self.seed,
            "reference": self.reference.to_dict() if self.reference is not None else None,
        }

    @classmethod
    def from_config(cls, cfg: Any) -> FeaturePipeline:
        """Build the (unfitted) pipeline of an experiment config's preprocess, signatures and features sections."""
        from biomarkers.signatures import load_gene_sets

        gene_sets = load_gene_sets(list(cfg.signatures), path=[str(p) for p in cfg.signature_files] or None)
        return cls(
            gene_sets=gene_sets,
            plan={k: tuple(v) for k, v in cfg.signatures.items()},
            preprocess=PreprocessParams(**cfg.preprocess.model_dump()),
            pb_genes=tuple(cfg.features.pb_genes),
            pb_compartments=tuple(cfg.features.pb_compartments),
            families=tuple(f for f in cfg.features.families if f != "bulk_genes"),
            seed=cfg.seed,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturePipeline:
        """Rebuild a pipeline from :meth:`to_dict` output."""
        from biomarkers.signatures import GeneSet

        return cls(
            gene_sets={
                n: GeneSet(name=n, genes=tuple(g["genes"]), role=g.get("role", ""), source=g.get("source", ""))
                for n, g in d["gene_sets"].items()
            },
            plan={n: tuple(c) for n, c in d["plan"].items()},
            preprocess=PreprocessParams(**d["preprocess"]),
            pb_genes=tuple(d["pb_genes"]),
            pb_compartments=tuple(d["pb_compartments"]),
            families=tuple(d["families"]),
            seed=d.get("seed", 0),
            reference=ScoringReference.from_dict(d["reference"]) if d.get("reference") else None,
        )
