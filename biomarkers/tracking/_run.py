"""``run_experiment``: cohort -> features -> CV of models and baselines -> MLflow runs -> registry."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from biomarkers import _keys as K
from biomarkers.models import METRICS
from biomarkers.tracking._pyfunc import FORMAT_VERSION

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

    from biomarkers.cohort import Cohort
    from biomarkers.config import ExperimentConfig
    from biomarkers.models import EvaluationResult
    from biomarkers.tracking._registry import Promotion

logger = logging.getLogger("biomarkers")



@dataclass
class RunResult:
    """What :func:`run_experiment` did.

    Attributes
    ----------
    experiment_name, parent_run_id
        Where it is in MLflow.
    child_runs
        Model or baseline name -> child run id.
    evaluation
        The cross-validation result.
    model_uri
        ``models:/<name>/<version>`` of the registered best model (None when not registered).
    model_version
        The new registered version.
    champion_version
        Version the champion alias points to after this run.
    became_champion
        Whether this run moved the alias.
    seconds
        Wall time.
    promotion
        What the registry compared and decided (None when not registered).
    """

    experiment_name: str
    parent_run_id: str
    child_runs: dict[str, str]
    evaluation: EvaluationResult
    cohort: Cohort
    model_uri: str | None
    model_version: str | None
    champion_version: str | None
    became_champion: bool
    seconds: float
    alias: str = "champion"
    timings: dict[str, float] = field(default_factory=dict)
    promotion: Promotion | None = None


def _git_sha() -> str:
    try:
        # The package's checkout, not the working directory: runs are launched from anywhere.
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False, cwd=here  # noqa: S607
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("biomarkers", "scanpy", "anndata", "scikit-learn", "lightgbm", "mlflow", "numpy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


@contextmanager
def _store_lock() -> Iterator[None]:
    """Hold an inter-process lock on the SQLite store in force (no-op for other stores, or without ``fcntl``).

    Two ``biomarkers run`` started together on a new SQLite store would both run MLflow's schema migrations and
    one would fail (``table _alembic_tmp_params already exists``); and two runs promoting at once could both see
    the old champion. The lock file lives in the temp folder (keyed by the database path), not next to the store.
    """
    from biomarkers.tracking._store import tracking_uri

    uri = tracking_uri()
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: concurrent first runs on one new store are not supported there
        fcntl = None  # type: ignore[assignment]
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()
    lock = Path(tempfile.gettempdir()) / f"biomarkers-store-{hashlib.sha256(str(db).encode()).hexdigest()[:16]}.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(name: str) -> str:
    """Experiment id for ``name``; creates (and on first use, migrates) the store under :func:`_store_lock`."""
    from biomarkers.tracking._store import get_or_create_experiment

    with _store_lock():
        return get_or_create_experiment(name)


def _model_specs(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in cfg.models]


def _baselines(cfg: ExperimentConfig, columns: pd.Index) -> list[str]:
    """Baseline strings for :func:`evaluate_models`; raise on a ``single_features`` entry that is not a feature.

    The study's default single features (``DEFAULT_SINGLE_FEATURES``) exist only for some feature families and
    genes; one the cohort lacks is skipped with a log line. Any other entry must be a feature column.
    """
    import difflib

    from biomarkers._errors import DataSchemaError
    from biomarkers.models._evaluate import DEFAULT_SINGLE_FEATURES

    out = ["majority"] if cfg.baselines.majority else []
    for c in cfg.baselines.single_features:
        if c in columns:
            out.append(f"single_feature:{c}")
        elif c in DEFAULT_SINGLE_FEATURES:
            logger.info("baselines: default single feature %r is not among the %d features; skipped", c, len(columns))
        else:
            names = [str(n) for n in columns]
            close = difflib.get_close_matches(c, names, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            msg = (
                f"baselines.single_features entry {c!r} is not a feature column; {hint}"
                f"available ({len(names)}): {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}. "
                "Fix baselines.single_features (or set it to [])."
            )
            raise DataSchemaError(msg)
    return out


def _split_features(cfg: ExperimentConfig, cohort: Cohort) -> Any:
    """Under leave-one-cohort-out, features rebuilt per split from the training cohorts only (``Cohort.split_features``)."""
    if cfg.cv.strategy != "leave_one_cohort_out":
        return None
    return getattr(cohort, "split_features", None)


def run_experiment(cfg: ExperimentConfig, *, adata: AnnData | None = None) -> RunResult:
    """Run an experiment end to end and record it in MLflow.

    All computation (cohort, features, cross-validation, final refits) happens before any MLflow run
    is opened, so bad input never leaves a run behind. The parent run then gets the resolved config,
    tags, the input data and plots; one child run per model and baseline gets its metrics with CIs;
    each model's final refit is logged as a :class:`BiomarkerModel` pyfunc. The best model is
    registered, and the ``champion`` alias moves to it only if it beats the current champion's CV AUROC.
    If anything fails (or Ctrl-C) after the run opened, the runs are marked FAILED and a model version
    created by this run is deleted, leaving the registry as it was.

    Parameters
    ----------
    cfg
        The experiment.
    adata
        Cells to use instead of ``cfg.data``.

    Returns
    -------
    A :class:`RunResult`.
    """
    from biomarkers.cohort import prepare_cohort
    from biomarkers.tracking import _plots
    from biomarkers.tracking._store import setup_mlflow

    t0 = time.perf_counter()
    setup_mlflow()
    cohort = prepare_cohort(cfg, adata=adata)
    umap = None
    if cohort.cells is not None and cfg.plots.umap:
        umap = _plots.UmapJob(cohort.cells, max_cells=cfg.plots.umap_max_cells, seed=cfg.seed)
    try:
        return _evaluate_and_log(cfg, cohort, umap=umap, t0=t0)
    finally:
        if umap is not None:
            umap.close()


def _evaluate_and_log(cfg: ExperimentConfig, cohort: Cohort, *, umap: Any, t0: float) -> RunResult:
    import mlflow

    from biomarkers.models import check_cv, evaluate_models, feature_importance, fit_final

    X, y = cohort.features, cohort.labels
    t_feat = time.perf_counter()
    # Check the labels against cv.n_splits (both classes, enough patients per class) before the store is touched,
    # so a cohort too small for the CV creates no MLflow database or experiment either.
    baselines = _baselines(cfg, X.columns)  # likewise: a misspelled baseline feature is refused before the store
    # Nested CV: every outer training fold must also hold an inner CV.
    check_cv(y, cfg.cv.model_dump(), seed=cfg.seed, groups=cohort.groups, cohorts=getattr(cohort, "cohorts", None), index=X.index)
    # A new SQLite store runs its schema migrations on first use (~8 s): overlap that with the CV.
    pool = ThreadPoolExecutor(max_workers=1)
    exp_future = pool.submit(_experiment_id, cfg.name)
    pool.shutdown(wait=False)
    evaluation = evaluate_models(
        X,
        y,
        model_specs=_model_specs(cfg),
        cv_spec=cfg.cv.model_dump(),
        seed=cfg.seed,
        groups=cohort.groups,
        baselines=baselines,
        n_boot=cfg.evaluation.n_boot,
        ci=cfg.evaluation.ci,
        n_permutations=cfg.evaluation.n_permutations,
        threshold_rule_=cfg.evaluation.threshold,
        n_workers=cfg.compute.n_workers,
        cohorts=getattr(cohort, "cohorts", None),
        split_features=_split_features(cfg, cohort),
    )
    t_cv = time.perf_counter()
    # Every model gets its refit (and a child-run pyfunc); a selected baseline or clinical model gets one too.
    fitted = [n for n in evaluation.metrics.index if evaluation.metrics.loc[n, "kind"] == "model"]
    if evaluation.best_model not in fitted:
        fitted.append(evaluation.best_model)
    finals = {n: fit_final(evaluation.specs[n], X, y, seed=cfg.seed) for n in fitted}
    importances = {n: feature_importance(est, feature_names=list(X.columns)) for n, est in finals.items()}
    t_fit = time.perf_counter()

    exp_id = exp_future.result()
    run_name = f"{cfg.name}-{datetime.now(tz=UTC).strftime('%Y%m%d-%H%M%S')}"
    client = mlflow.MlflowClient()
    created_version: str | None = None
    promotion: Promotion | None = None
    child_runs: dict[str, str] = {}
    model_uris: dict[str, str | None] = {}
    parent = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
    try:
        _log_parent(cfg, cohort, evaluation, umap=umap)
        for name in evaluation.metrics.index:
            with mlflow.start_run(run_name=name, nested=True, experiment_id=exp_id) as child:
                child_runs[name] = child.info.run_id
                model_uris[name] = _log_child(cfg, cohort, evaluation, name, finals.get(name), importances.get(name))
        best = evaluation.best_model
        best_auroc = float(evaluation.metrics.loc[best, "auroc"])
        honest = evaluation.nested_auroc if evaluation.nested is not None else best_auroc
        mlflow.log_metric("best_cv_auroc", best_auroc)
        mlflow.set_tags({"best_model": best, "selected_model": best, "selected_role": evaluation.role})
        if evaluation.nested_skipped:
            mlflow.set_tag("nested_cv", f"not run: {evaluation.nested_skipped}")
        model_uri = model_version = None
        if cfg.registry.enabled:
            from biomarkers.tracking import _registry
            from biomarkers.tracking._registry import promote_if_better

            name = cfg.registered_model_name
            # Candidate features before any in-fold selection: versions compete only on the same inputs.
            tags = {
                _registry.AUROC_TAG: f"{honest:.6f}",
                "auroc_estimate": "nested" if evaluation.nested is not None else "selected (nested CV not run)",
                "selected_cv_auroc": f"{best_auroc:.6f}",
                "selected_model": best,
                "role": evaluation.role,
                "experiment": cfg.name,
                "run_id": parent.info.run_id,
                _registry.KIND_TAG: cohort.kind,
                _registry.FEATURE_SCHEMA_TAG: _registry.feature_schema(cohort.features.columns),
                _registry.N_FEATURES_TAG: str(cohort.features.shape[1]),
                _registry.FORMAT_TAG: str(FORMAT_VERSION),
            }
            block = evaluation.champion_block
            if block is not None:
                tags[_registry.NOT_CHAMPION_TAG] = block
            with _store_lock():  # concurrent runs: each compares against the champion the other may just have set
                mv = mlflow.register_model(model_uris[best], name, tags=tags)
                created_version = str(mv.version)
                model_version = created_version
                model_uri = f"models:/{name}/{mv.version}"
                promotion = promote_if_better(
                    client, name, alias=cfg.registry.alias, version=mv.version, cv_auroc=honest, blocked=block
                )
            mlflow.set_tag("registered_model", model_uri)
            mlflow.set_tag("champion", f"models:/{name}@{cfg.registry.alias} -> version {promotion.current}")
            mlflow.set_tag("champion_decision", promotion.reason)
        # Last, so it reads everything the run logged (children, registry decision): one file to hand on.
        from biomarkers.tracking._report import log_report

        log_report(parent.info.run_id, client=client)
        mlflow.end_run(status="FINISHED")
    except BaseException:
        # Restore the alias only if this run moved it: otherwise a concurrent run's promotion would be undone.
        restore = promotion.previous if promotion is not None and promotion.moved else None
        _fail(client, cfg, created_version, restore, child_runs=list(child_runs.values()))
        raise
    t_end = time.perf_counter()
    timings = {
        **cohort.timings,
        "cv_s": t_cv - t_feat,
        "final_fit_s": t_fit - t_cv,
        "mlflow_s": t_end - t_fit,
        "total_s": t_end - t0,
    }
    logger.info("run_experiment: %s", ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    return RunResult(
        experiment_name=cfg.name,
        parent_run_id=parent.info.run_id,
        child_runs=child_runs,
        evaluation=evaluation,
        cohort=cohort,
        model_uri=model_uri,
        model_version=model_version,
        champion_version=promotion.current if promotion is not None else None,
        became_champion=promotion is not None and promotion.moved,
        alias=cfg.registry.alias,
        seconds=t_end - t0,
        timings=timings,
        promotion=promotion,
    )


def _fail(
    client: Any, cfg: ExperimentConfig, created_version: str | None, previous_alias: str | None, *, child_runs: list[str]
) -> None:
    """Mark the parent and its children FAILED and undo this run's registry changes."""
    import mlflow

    try:
        for run_id in child_runs:  # finished children of a failed parent are not results either
            client.set_terminated(run_id, status="FAILED")
        if created_version is not None:
            name, alias = cfg.registered_model_name, cfg.registry.alias
            with _store_lock():
                if previous_alias is not None:
                    client.set_registered_model_alias(name, alias, previous_alias)
                client.delete_model_version(name, created_version)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")


def _log_parent(cfg: ExperimentConfig, cohort: Cohort, evaluation: EvaluationResult, *, umap: Any) -> None:
    import mlflow

    from biomarkers.config import dump_config, flatten
    from biomarkers.tracking import _plots

    params = flatten(cfg.model_dump(mode="json"))
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow caps params per batch
        mlflow.log_params({k[:250]: v[:6000] for k, v in items[i : i + 100]})
    versions = _versions()
    mlflow.set_tags(
        {
            "git_sha": _git_sha(),
            "data_digest": cohort.digest,
            "data_source": cohort.source,
            "data_kind": cohort.kind,
            "bm.version": versions["biomarkers"],
            "package_versions": json.dumps(versions),
            "n_patients": str(len(cohort.features)),
            "n_features": str(cohort.features.shape[1]),
        }
    )
    if cohort.samples is not None:  # biopsies kept (several per patient in atlas cohorts)
        mlflow.set_tag("n_samples", str(len(cohort.samples)))
    table = cohort.features.copy()
    # Float, not int: MLflow's schema inference warns that an integer column cannot hold missing values.
    table["label"] = cohort.labels.astype("float64")
    dataset = mlflow.data.from_pandas(table.reset_index(), source=_dataset_source(cohort.source), name=f"{cfg.name}-features", targets="label", digest=cohort.digest[:36])
    mlflow.log_input(dataset, context="training")
    mlflow.log_metric("n_patients", len(cohort.features))
    mlflow.log_metrics(selection_metrics(evaluation))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "config.resolved.yaml").write_text(dump_config(cfg))
        table.to_csv(d / "features.csv")
        preds = evaluation.predictions.copy()
        preds.index.name = K.PATIENT
        preds.to_csv(d / "cv_predictions.csv")
        pd.concat(evaluation.oof, names=["model"]).to_csv(d / "cv_predictions_by_fold.csv")
        evaluation.metrics.to_csv(d / "metrics.csv")
        cohort.coverage.to_csv(d / "gene_set_coverage.csv", index=False)
        if evaluation.nested is not None:
            evaluation.nested.choices.to_csv(d / "nested_cv_choices.csv", index=False)
            evaluation.nested.oof.to_csv(d / "nested_cv_predictions.csv", index=False)
        if evaluation.decision_curve is not None:
            evaluation.decision_curve.to_csv(d / "decision_curve.csv", index=False)
        if evaluation.cohort_metrics is not None:
            evaluation.cohort_metrics.to_csv(d / "cohort_metrics.csv", index=False)
        mlflow.log_artifacts(str(d))
        plots = d / "plots"
        plots.mkdir()
        oof = {n: evaluation.predictions[[n]].rename(columns={n: "p"}).assign(y_true=evaluation.predictions["y_true"]) for n in evaluation.metrics.index}
        baselines = {n for n in evaluation.metrics.index if evaluation.metrics.loc[n, "kind"] == "baseline"}
        reliability = {n: oof[n] for n in oof if n not in baselines}
        if evaluation.nested is not None:  # the procedure's own, honest probabilities first
            reliability = {"nested (selected procedure)": evaluation.nested.patients[["y_true", "p"]], **reliability}
        figs = {
            "roc_pr.png": _plots.roc_pr_figure(oof, baselines=baselines),
            "calibration.png": _plots.calibration_figure(reliability),
            "patient_signature_heatmap.png": _plots.heatmap_figure(cohort.features, cohort.labels),
        }
        if evaluation.decision_curve is not None:
            figs["decision_curve.png"] = _plots.decision_curve_figure(evaluation.decision_curve)
        if umap is not None:
            figs["umap_cell_type_aqp9.png"] = umap.figure()
        import matplotlib.pyplot as plt

        for fname, fig in figs.items():
            fig.savefig(plots / fname, dpi=110)
            plt.close(fig)
        mlflow.log_artifacts(str(plots), artifact_path="plots")


def _dataset_source(source: str) -> Any:
    """Return the MLflow dataset source of the training table, built explicitly.

    Given a path string, MLflow resolves it against its registered sources, finds two local-file ones (for the
    ``""`` and ``file`` schemes) and warns that the source "can be interpreted in multiple ways"; a simulated or
    in-memory cohort is no file at all, so it is recorded as a code source with its description.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import _dataset_source_registry

    path = Path(source)
    if path.exists():
        local = next(s for s in _dataset_source_registry.sources if s.__name__ == "LocalArtifactDatasetSource")
        return local._resolve(str(path.resolve()))
    return CodeDatasetSource({"description": source})


# Declared dependencies that only some estimators use: a model lists one only when its pickle refers to it.
_ESTIMATOR_ONLY = frozenset({"lightgbm"})


def _log_portable_model(model: Any, **kwargs: Any) -> Any:
    """Log ``model`` as the run's pyfunc so it loads where ``biomarkers`` is not installed.

    The ``biomarkers`` source travels with the model (``code_paths``: MLflow puts it on ``sys.path``
    at load), and ``requirements.txt`` pins what that code and the pickle import, never ``biomarkers``
    itself. ``log_model`` reloads the model to check the input example; that load's ``sys.path`` entry
    (a temporary copy of the code) is dropped afterwards.
    """
    import sys

    import mlflow

    import biomarkers

    path = list(sys.path)
    try:
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            code_paths=[str(Path(biomarkers.__file__).parent)],
            pip_requirements=_model_requirements(model),
            **kwargs,
        )
    finally:
        sys.path[:] = path


def _model_requirements(model: Any) -> list[str]:
    """Pinned pip requirements of a pyfunc whose code is the ``biomarkers`` package (not ``biomarkers`` itself).

    ``biomarkers``' declared runtime dependencies (LightGBM only for a model whose pickle uses it), cloudpickle
    (which unpickles the pyfunc) and every other distribution the pickle refers to, each ``==`` the installed version.
    """
    import io
    import pickle
    import sys
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires, version

    import cloudpickle
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    modules: set[str] = set()

    class _Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            modules.add(module.partition(".")[0])
            return super().find_class(module, name)

    _Recorder(io.BytesIO(cloudpickle.dumps(model))).load()
    owners = packages_distributions()
    pickled = {canonicalize_name(d) for m in modules - set(sys.stdlib_module_names) for d in owners.get(m, [])}
    try:
        declared = [Requirement(r) for r in requires("biomarkers") or []]
        names = [r.name for r in declared if r.marker is None or r.marker.evaluate({"extra": ""})]
    except PackageNotFoundError:  # running from a model's own code copy: the pinned core of ``_versions``
        names = [n for n, v in _versions().items() if v != "absent"]
    names = [n for n in names if canonicalize_name(n) not in _ESTIMATOR_ONLY or canonicalize_name(n) in pickled]
    wanted = {canonicalize_name(n): n for n in [*names, "cloudpickle", *sorted(pickled)]}
    wanted.pop("biomarkers", None)
    out = []
    for name in wanted.values():
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _log_child(
    cfg: ExperimentConfig,
    cohort: Cohort,
    evaluation: EvaluationResult,
    name: str,
    final: Any,
    importance: pd.Series | None,
) -> str | None:
    import mlflow

    from biomarkers.tracking import _plots

    row = evaluation.metrics.loc[name]
    mlflow.set_tag("kind", row["kind"])
    mlflow.log_params({"model_name": name, "spec": json.dumps(evaluation.specs[name], default=str)[:6000]})
    metrics = {}
    for m in METRICS:
        metrics[f"cv_{m}"] = float(row[m])
        metrics[f"cv_{m}_ci_low"] = float(row[f"{m}_ci_low"])
        metrics[f"cv_{m}_ci_high"] = float(row[f"{m}_ci_high"])
    metrics["cv_auroc_repeat_mean"] = float(row["auroc_repeat_mean"])
    metrics["cv_auroc_repeat_sd"] = float(row["auroc_repeat_sd"])
    mlflow.log_metrics(metrics)
    for rep in evaluation.per_repeat[evaluation.per_repeat["model"] == name].itertuples():
        mlflow.log_metric("cv_auroc_by_repeat", float(rep.auroc), step=int(rep.repeat))
    if evaluation.cohort_metrics is not None:
        mlflow.log_metrics(cohort_metrics_for(evaluation, name))
    if final is None:
        return None
    from mlflow.models import infer_signature

    from biomarkers.tracking._profile import training_profile
    from biomarkers.tracking._pyfunc import BiomarkerModel

    threshold = evaluation.threshold if name == evaluation.best_model else _own_threshold(evaluation, name)
    model = BiomarkerModel(
        final,
        features=list(cohort.features.columns),
        threshold=threshold,
        pipeline=cohort.pipeline.to_dict() if cohort.pipeline is not None else None,
        kind=cohort.kind,
        bulk=cohort.bulk,
        metadata={"experiment": cfg.name, "model": name, "cv_auroc": float(row["auroc"])},
        read_spec=cohort.read_spec.to_dict() if cohort.read_spec is not None else None,
        profile=training_profile(cohort.features, model_features=list(cohort.features.columns)),
        **cohort.model_kwargs,
    )
    example = cohort.features.iloc[:2].astype("float64")
    signature = infer_signature(example, model.predict_features(example))
    mlflow.log_param("threshold", threshold)
    info = _log_portable_model(model, signature=signature, input_example=example)
    if importance is not None and len(importance):
        import matplotlib.pyplot as plt

        fig = _plots.importance_figure(importance)
        mlflow.log_figure(fig, "plots/feature_importance.png")
        plt.close(fig)
        mlflow.log_text(importance.to_csv(), "feature_importance.csv")
    return info.model_uri


def _own_threshold(evaluation: EvaluationResult, name: str) -> float:
    """Return a non-selected model's threshold: the same rule on its own out-of-fold predictions."""
    from biomarkers.models._metrics import choose_threshold

    p = evaluation.predictions
    return choose_threshold(p["y_true"], p[name], evaluation.threshold_rule)


def sanitize(name: str) -> str:
    """Return a cohort name as an MLflow metric-key segment: ``[A-Za-z0-9_.-]``, anything else as ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def cohort_metrics_for(evaluation: EvaluationResult, name: str) -> dict[str, float]:
    """``cohort_auroc__<cohort>`` (with ``_ci_low`` / ``_ci_high``) of one candidate, leave-one-cohort-out."""
    table = evaluation.cohort_metrics
    out: dict[str, float] = {}
    if table is None:
        return out
    for row in table[table["model"] == name].itertuples():
        key = f"cohort_auroc__{sanitize(row.cohort)}"
        if row.auroc == row.auroc:  # a cohort with one class has no AUROC (logged as a warning)
            out[key] = float(row.auroc)
            out[f"{key}_ci_low"] = float(row.auroc_ci_low)
            out[f"{key}_ci_high"] = float(row.auroc_ci_high)
    return out


def selection_metrics(evaluation: EvaluationResult) -> dict[str, float]:
    """Return the parent run's metrics of the selected procedure (nested AUROC, selection p, deltas, threshold)."""
    out: dict[str, float] = {}
    nm = evaluation.nested_metrics
    if nm:
        out.update(
            {
                "nested_cv_auroc": nm["auroc"],
                "nested_cv_auroc_ci_low": nm["auroc_ci_low"],
                "nested_cv_auroc_ci_high": nm["auroc_ci_high"],
                "nested_cv_brier": nm["brier"],
            }
        )
    nest = evaluation.nested
    if nest is not None:
        out.update(
            {
                "calibration_slope": nest.calibration_slope,
                "calibration_intercept": nest.calibration_intercept,
                "oof_sensitivity": nest.sensitivity,
                "oof_specificity": nest.specificity,
            }
        )
    out["threshold"] = evaluation.threshold
    for key in ("vs_best_baseline", "vs_clinical"):
        if key in evaluation.deltas:
            d = evaluation.deltas[key]
            out[f"delta_auroc_{key}"] = d["delta"]
            out[f"delta_auroc_{key}_ci_low"] = d["ci_low"]
            out[f"delta_auroc_{key}_ci_high"] = d["ci_high"]
    if "incremental" in evaluation.deltas:
        d = evaluation.deltas["incremental"]
        out.update(
            {
                "incremental_auroc_biomarkers_over_clinical": d["delta"],
                "incremental_auroc_biomarkers_over_clinical_ci_low": d["ci_low"],
                "incremental_auroc_biomarkers_over_clinical_ci_high": d["ci_high"],
            }
        )
    perm = evaluation.permutation
    if perm is not None:
        out["selection_p_value"] = perm.p_value
        out["selection_permutations"] = float(perm.n_permutations)
        out["selection_null_auroc_mean"] = float(perm.null.mean())
    return {k: float(v) for k, v in out.items() if v == v}
