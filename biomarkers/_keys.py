"""Every AnnData key the package reads or writes.

One registry, so that no other module spells an ``.obs``/``.layers``/``.uns`` name
as a string literal.
"""

from __future__ import annotations

# .layers
COUNTS = "counts"  # raw integer UMI counts, never overwritten
LOG1P = "log1p"

# .obs: canonical input columns (io renames the user's *_col to these)
PATIENT = "patient_id"
SAMPLE = "sample_id"
RESPONSE = "response"
BATCH = "batch"
SEVERITY = "severity"
TISSUE = "tissue"
INFLAMED = "inflamed"
TIMEPOINT = "timepoint"
CELL_TYPE = "cell_type"
CELL_TYPE_AUTHOR = "cell_type_author"  # the input's own cell_type labels, kept when annotation writes cell_type
CELL_TYPE_CONF = "cell_type_confidence"
COMPARTMENT = "compartment"
AQP9_MAC = "aqp9_macrophage"  # bool: AQP9+ inflammatory macrophage call (within MNPs)

# .obs: ground truth written by the simulator (never read by the pipeline)
TRUE_CELL_TYPE = "true_cell_type"
TRUE_DOUBLET = "true_doublet"
TRUE_LOW_QUALITY = "true_low_quality"

# .obs: QC metrics
QC_N_COUNTS = "qc_n_counts"
QC_N_GENES = "qc_n_genes"
QC_PCT_MT = "qc_pct_mt"
QC_DOUBLET_SCORE = "qc_doublet_score"
QC_PASS = "qc_pass"  # noqa: S105 - an obs column name, not a secret

# .obs: signature scores are SIG_PREFIX + set name
SIG_PREFIX = "sig__"

# .var
MT = "mt"
GENE_SYMBOL = "gene_symbol"
GENE_ID = "gene_id"

# .obsm
SIG_SCORES = "sig_scores"
UMAP = "X_umap"

# .uns
BM = "bm"  # provenance: uns["bm"][step] = {"params": ..., "version": ...}
TRUTH = "truth"  # simulator ground truth

# labels
RESPONDER = "responder"
NON_RESPONDER = "non_responder"

# Feature families: <family>__<name>, segments in [A-Za-z0-9_.-]
FEATURE_SEP = "__"
FAMILY_PROP = "prop"
FAMILY_SIG = "sig"
FAMILY_PB = "pb"
FAMILY_PBZ = "pbz"  # pseudobulk signature z-score: exists in single-cell and bulk
FAMILY_CLIN = "clin"  # clinical covariates: clin__<column> (one-hot: clin__<column>__<level>)
AQP9_FRACTION = "aqp9_macrophage_fraction"
N_CELLS = "n_cells"
N_SAMPLES = "n_samples"
