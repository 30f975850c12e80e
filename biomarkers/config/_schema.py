"""Experiment configs: YAML validated by pydantic v2. Defaults live only here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SimulateSpec(_Strict):
    """Settings of the embedded simulated cohort (used when ``data.path`` is null)."""

    n_patients: int = Field(40, ge=4)
    cells_per_patient: int = Field(500, ge=20)
    n_genes: int = Field(2000, ge=300)
    effect_size: float = Field(1.0, ge=0)
    seed: int = 0


class DataSpec(_Strict):
    """Where the cohort comes from and which columns mean what."""

    kind: Literal["single_cell", "bulk", "features"] = "single_cell"
    path: Path | None = None
    format: Literal["h5ad", "10x_h5", "10x_mtx", "geo_10x_series", "bulk_table", "geo_series_matrix"] | None = None
    simulate: SimulateSpec = Field(default_factory=SimulateSpec)
    patient_col: str = "patient_id"
    sample_col: str = "sample_id"
    label_col: str = "response"
    positive_label: str = "non_responder"
    negative_label: str | None = "responder"
    obs_map: dict[str, str] = Field(default_factory=dict)
    label_map: dict[str, str] = Field(default_factory=dict)
    query: str | None = None
    labels: Path | None = None
    allow_mixed_samples: bool = False
    # The cohort (study, site) of each patient: a column of the cells' obs (after obs_map), of the bulk table, or of
    # the feature table. Used by features.standardize: per_cohort and cv.strategy: leave_one_cohort_out.
    cohort_col: str | None = None

    @model_validator(mode="after")
    def _features_need_path(self) -> DataSpec:
        if self.kind == "features" and self.path is None:
            msg = "data.kind: features needs data.path (a CSV/TSV of patients x features); the simulator makes cells."
            raise ValueError(msg)
        return self


class PreprocessSpec(_Strict):
    """QC, normalisation and annotation (single-cell)."""

    min_genes: int = Field(200, ge=0)
    min_counts: int = Field(500, ge=0)
    max_pct_mt: float | None = Field(25.0, gt=0, le=100)
    nmads: float = Field(5.0, gt=0)
    nmads_mt: float = Field(3.0, gt=0)
    mt_prefix: str = "MT-"
    remove_doublets: bool = False
    target_sum: float = Field(1e4, gt=0)
    refine_annotation: bool = False
    aqp9_threshold: float = 0.0
    # Where obs["cell_type"] comes from: the marker call, or curated labels in obs[annotation_col] (after data.obs_map)
    # mapped onto the package's types; annotation_map (TSV/CSV: label, cell_type) extends the shipped table.
    annotation: Literal["markers", "obs"] = "markers"
    annotation_col: str = Field("cell_type", min_length=1)
    annotation_map: Path | None = None


Compartment = Literal["MNP", "granulocyte", "lymphoid", "plasma", "stroma", "epithelium"]


class FeatureSpec(_Strict):
    """Patient-level features."""

    families: list[
        Literal["aqp9_macrophage_fraction", "proportions", "signature_means", "pseudobulk", "n_cells", "bulk_signatures", "bulk_genes"]
    ] = Field(default_factory=lambda: ["aqp9_macrophage_fraction", "proportions", "signature_means", "pseudobulk", "n_cells"])
    pb_genes: list[str] = Field(default_factory=lambda: ["OSM", "OSMR", "TREM1", "AQP9", "SOCS3"])
    pb_compartments: list[Literal["MNP", "granulocyte", "lymphoid", "plasma", "stroma", "epithelium", "all"]] = Field(
        default_factory=lambda: ["MNP", "stroma", "epithelium", "all"]
    )
    # Clinical covariates as features clin__<col> (categorical: one-hot clin__<col>__<level>); column names after
    # data.obs_map (e.g. severity), from the cells' obs, the data.labels table or the feature table.
    clinical: list[str] = Field(default_factory=list)
    # per_cohort: z-score every non-clinical feature within each cohort (data.cohort_col; unset: the whole input).
    standardize: Literal["none", "per_cohort"] = "none"


class _ModelBase(_Strict):
    select_k: int | None = Field(None, ge=1)
    name: str | None = None


class LogRegSpec(_ModelBase):
    """Regularised logistic regression, standardised inside the pipeline."""

    kind: Literal["logreg"] = "logreg"
    tune: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


class RandomForestSpec(_ModelBase):
    """Random forest."""

    kind: Literal["random_forest"] = "random_forest"
    params: dict[str, Any] = Field(default_factory=dict)


class LightGBMSpec(_ModelBase):
    """LightGBM with small-cohort settings."""

    kind: Literal["lightgbm"] = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)


class MechanismScoreSpec(_Strict):
    """A prespecified mechanism score: a fixed-sign sum of standardised features (no weights are learned).

    ``weights`` null means the shipped list (``biomarkers.models.DEFAULT_MECHANISM_WEIGHTS``: AQP9+ macrophage
    fraction, MNP OSM, and the OSM / IL-6-STAT3 response of MNPs, stroma and epithelium).
    """

    kind: Literal["mechanism_score"] = "mechanism_score"
    name: str | None = None
    weights: dict[str, Literal[1, -1]] | None = None


ModelSpec = Annotated[LogRegSpec | RandomForestSpec | LightGBMSpec | MechanismScoreSpec, Field(discriminator="kind")]


class BaselineSpec(_Strict):
    """Baselines evaluated on the same folds."""

    majority: bool = True
    single_features: list[str] = Field(default_factory=lambda: ["aqp9_macrophage_fraction", "pb__MNP__OSM"])


class CVSpec(_Strict):
    """Repeated stratified k-fold over patients, or leave-one-cohort-out (``data.cohort_col``).

    ``inner_splits`` is K of the nested CV's inner loop, which chooses among candidates inside each outer training
    fold (null: ``n_splits``). Leave-one-cohort-out holds out each cohort once (one repeat).
    """

    strategy: Literal["stratified", "leave_one_cohort_out"] = "stratified"
    n_splits: int = Field(5, ge=2)
    n_repeats: int = Field(5, ge=1)
    inner_splits: int | None = Field(None, ge=2)


class TargetSensitivity(_Strict):
    """Operating threshold: the most specific call that keeps at least this sensitivity."""

    target_sensitivity: float = Field(gt=0, lt=1)


class EvaluationSpec(_Strict):
    """Confidence intervals, the selection-aware permutation test and the operating threshold.

    ``threshold`` (``youden`` or ``{target_sensitivity: 0.9}``) is chosen inside each outer training fold for the
    reported sensitivity / specificity, and on all patients' out-of-fold predictions for ``predict``.
    """

    n_boot: int = Field(1000, ge=100)
    n_permutations: int = Field(100, ge=0)
    ci: float = Field(0.95, gt=0.5, lt=1)
    threshold: Literal["youden"] | TargetSensitivity = "youden"


class PlotSpec(_Strict):
    """Figures logged with the run."""

    umap: bool = True
    umap_max_cells: int = Field(5000, ge=100)


class RegistrySpec(_Strict):
    """MLflow model registry.

    ``model_name`` null means the experiment's ``name`` (see :attr:`ExperimentConfig.registered_model_name`): a
    shared name would let a model of one cohort hold the champion alias over another cohort's models.
    """

    enabled: bool = True
    model_name: str | None = None
    alias: str = "champion"


class ComputeSpec(_Strict):
    """Where per-sample work runs: in process, a local Dask cluster, or a cluster by address."""

    scheduler: str | None = None
    n_workers: int = Field(2, ge=1)
    stream: bool = True  # files are read one sample at a time; false reads them whole into memory

    @model_validator(mode="after")
    def _check_scheduler(self) -> ComputeSpec:
        s = self.scheduler
        if s is not None and s != "local" and not s.startswith("tcp://"):
            msg = f"compute.scheduler must be null, 'local' or 'tcp://HOST:PORT' (got {s!r})"
            raise ValueError(msg)
        return self


class DiscoverySpec(_Strict):
    """``biomarkers discover`` on this experiment's cohort.

    ``method`` is how the DESeq2 test (``--method deseq2``, the default) is fitted: ``deseq2`` = PyDESeq2's own
    ``DefaultInference``; ``deseq2_fast`` = the package's vectorised inference (``discovery/_inference.py``, which
    overrides PyDESeq2 internals), opt-in: 6-10x faster (``benchmarks/deseq2_inference.py``).
    """

    method: Literal["deseq2", "deseq2_fast"] = "deseq2"


class ExperimentConfig(_Strict):
    """An experiment: data -> preprocess -> signatures -> features -> models -> MLflow."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    signatures: dict[str, list[Compartment]] = Field(
        default_factory=lambda: {
            "AQP9_INFLAMMATORY_MACROPHAGE": ["MNP"],
            "IL6_JAK_STAT3": ["MNP", "stroma", "epithelium"],
            "OSM_RESPONSE": ["MNP", "stroma", "epithelium"],
        }
    )
    signature_files: list[Path] = Field(default_factory=list)
    features: FeatureSpec = Field(default_factory=FeatureSpec)
    models: list[ModelSpec] = Field(
        default_factory=lambda: [LogRegSpec(), RandomForestSpec(), LightGBMSpec()], min_length=1
    )
    baselines: BaselineSpec = Field(default_factory=BaselineSpec)
    cv: CVSpec = Field(default_factory=CVSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    plots: PlotSpec = Field(default_factory=PlotSpec)
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    discovery: DiscoverySpec = Field(default_factory=DiscoverySpec)
    seed: int = 0

    @property
    def registered_model_name(self) -> str:
        """The registry name models of this experiment go to: ``registry.model_name``, else the experiment ``name``."""
        return self.registry.model_name or self.name

    @model_validator(mode="after")
    def _unique_model_names(self) -> ExperimentConfig:
        names = [m.name or m.kind for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            msg = f"models have duplicate names {dup}: give each a distinct `name`"
            raise ValueError(msg)
        return self
