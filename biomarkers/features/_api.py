"""One-call entry point: ``bm.build_features(adata)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from biomarkers import _keys as K
from biomarkers.features._pipeline import FeaturePipeline, PreprocessParams
from biomarkers.features._score import DEFAULT_PLAN

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from anndata import AnnData


def build_features(
    adata: AnnData,
    *,
    plan: Mapping[str, Sequence[str]] | None = None,
    preprocess: PreprocessParams | None = None,
    gene_set_path: str | None = None,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Build the patients x features table from raw-count cells.

    Runs QC, normalisation, annotation, the AQP9+ macrophage call and compartment signature scoring
    (see :class:`FeaturePipeline`), then aggregates per patient.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (or ``layers['counts']``), ``obs['patient_id']`` and ``obs['sample_id']``.
    plan
        Gene-set name -> compartments; defaults to the AQP9 program in MNPs and the STAT3 and
        OSM-response programs in MNPs, stroma and epithelium.
    preprocess
        QC / normalisation / annotation settings.
    gene_set_path
        Extra gene-set file (TSV or GMT) to load the plan's sets from, besides the package's own.
    seed
        Seed for control-gene sampling.

    Returns
    -------
    Patients (index ``patient_id``) x features: ``aqp9_macrophage_fraction``, ``prop__<type>``,
    ``sig__<compartment>__<set>``, ``pb__<compartment>__<gene>``, ``n_cells``.

    Examples
    --------
    >>> import biomarkers as bm
    >>> adata = bm.simulate_cohort(n_patients=6, cells_per_patient=120, n_genes=500, seed=0)
    >>> feats = bm.build_features(adata)
    >>> feats.shape[0]
    6
    """
    from biomarkers.signatures import load_gene_sets

    plan = {k: tuple(v) for k, v in (plan or DEFAULT_PLAN).items()}
    gene_sets = load_gene_sets(list(plan), path=gene_set_path)
    pipe = FeaturePipeline(gene_sets=gene_sets, plan=plan, preprocess=preprocess or PreprocessParams(), seed=seed)
    feats = pipe.transform(adata)
    feats.index.name = K.PATIENT
    return feats

