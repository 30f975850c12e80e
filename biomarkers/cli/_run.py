"""``run``, ``predict``, ``compare``, ``ui``, ``features``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import biomarkers as bm


def _print_summary(res) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    ev = res.evaluation
    cv = ev.cv
    n = len(res.cohort.features)
    groups = res.cohort.groups
    unit = f"{n} samples of {groups.nunique()} patients" if groups is not None else f"{n} patients"
    scheme = "leave-one-cohort-out" if cv.get("strategy") == "leave_one_cohort_out" else f"{cv['n_repeats']}x{cv['n_splits']}-fold CV by patient"
    table = Table(title=f"{res.experiment_name}: {unit}, {scheme}, {ev.ci * 100:g}% bootstrap CIs")
    for col in ("model", "kind", "AUROC", "AUPRC", "balanced acc.", "Brier"):
        table.add_column(col, justify="left" if col in {"model", "kind"} else "right")
    for name, r in ev.metrics.iterrows():
        cells = [f"{r[m]:.3f} [{r[m + '_ci_low']:.2f}-{r[m + '_ci_high']:.2f}]" for m in ("auroc", "auprc", "balanced_accuracy", "brier")]
        style = "bold" if name == ev.best_model else None
        table.add_row(str(name), str(r["kind"]), *cells, style=style)
    console.print(table)
    if "majority" in ev.metrics.index:
        console.print(
            "[dim]majority predicts each training fold's prevalence: its AUROC below 0.5 is a CV artifact "
            "(holding out a non-responder lowers its fold's prevalence); compare models with it on Brier score.[/dim]"
        )
    for line in selection_summary(ev):
        console.print(line)
    if ev.cohort_metrics is not None:
        console.print(_cohort_table(ev))
    console.print(f"MLflow: experiment '{res.experiment_name}', parent run {res.parent_run_id} ({bm.tracking.tracking_uri()})")
    if res.model_uri:
        # What the registry compared (same kind and candidate features), or why it compared nothing.
        console.print(f"Registered model: {res.model_uri} ({res.promotion.reason})")
        name = res.model_uri.split("/")[1]
        console.print(f"Champion: models:/{name}@{res.alias} -> version {res.champion_version}")
        new = "NEW_COHORT.csv (samples x genes)" if res.cohort.kind == "bulk" else "NEW.h5ad"
        console.print(f"Predict:  biomarkers predict {new} --model models:/{name}@{res.alias} --out preds.csv")
    console.print(f"Compare:  biomarkers compare --experiment {res.experiment_name}    UI: {bm.tracking.ui_hint(res.experiment_name)}")
    console.print(f"Time: {res.seconds:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in res.timings.items() if k != 'total_s')})")


def _ci(d: dict, key: str = "delta") -> str:
    return f"{d[key]:+.3f} [{d['ci_low']:+.2f} to {d['ci_high']:+.2f}]"


def selection_summary(ev) -> list[str]:
    """Return the lines that say what was selected, how honestly it was evaluated, and what it adds."""
    lines = []
    best, spec = ev.best_model, ev.specs[ev.best_model]
    cv_auroc = ev.metrics.loc[best, "auroc"]
    if spec["kind"] == "single_feature":
        lines.append(
            f"Selected: a single feature wins, {spec['feature']} (CV AUROC {cv_auroc:.3f}): no model beats it; it is "
            "registered as a one-feature model (logistic regression on that feature)."
        )
    else:
        lines.append(f"Selected: {best} ({ev.role}; CV AUROC {cv_auroc:.3f}, optimistic: it is the highest of {len(ev.specs)}).")
    if ev.champion_block:
        lines.append(f"[bold red]Not promoted to champion:[/bold red] {ev.champion_block}.")
    nm = ev.nested_metrics
    if ev.nested_skipped:
        lines.append(f"[bold red]Nested CV not run[/bold red] ({ev.nested_skipped}): the CV AUROC above is optimistic.")
    if nm:
        counts = ", ".join(f"{n} {c}" for n, c in ev.nested.counts.items())
        lines.append(
            f"Nested CV AUROC of the choose-then-fit procedure: [bold]{nm['auroc']:.3f} [{nm['auroc_ci_low']:.2f}-"
            f"{nm['auroc_ci_high']:.2f}][/bold] (outer folds chose: {counts})"
        )
    perm = ev.permutation
    if perm is not None:
        stop = f", stopped early after {perm.n_permutations}" if perm.stopped_early else ""
        lines.append(
            f"Selection-aware permutation test: p = {perm.p_value:.3g} (best of {len(ev.specs)} candidates' 1x"
            f"{ev.cv['n_splits']}-fold AUROC {perm.observed:.3f} vs {perm.n_permutations} permutations{stop}; null mean "
            f"{perm.null.mean():.3f})"
        )
    rule = ev.threshold_rule
    name = "Youden" if rule["rule"] == "youden" else f"sensitivity >= {rule['target_sensitivity']:g}"
    if ev.nested is not None:
        n = ev.nested
        lines.append(
            f"Threshold ({name}, chosen inside each training fold): {ev.threshold:.3f}; out-of-fold sensitivity "
            f"{n.sensitivity:.2f}, specificity {n.specificity:.2f}"
        )
        lines.append(
            f"Calibration (nested, out-of-fold): slope {n.calibration_slope:.2f} (ideal 1), intercept "
            f"{n.calibration_intercept:+.2f} (ideal 0)"
        )
    else:
        lines.append(f"Threshold ({name}, out-of-fold): {ev.threshold:.3f}")
    for key, label in (("vs_best_baseline", "best baseline"), ("vs_clinical", "clinical-only model")):
        if key in ev.deltas:
            d = ev.deltas[key]
            lines.append(f"ΔAUROC vs {label} ({d['against']}): {_ci(d)} (paired bootstrap over patients)")
    if "incremental" in ev.deltas:
        d = ev.deltas["incremental"]
        verdict = "the biomarkers add to the clinical covariates" if d["ci_low"] > 0 else "not shown to add beyond them"
        lines.append(f"Biomarkers beyond clinical covariates ({d['model']} - {d['against']}): ΔAUROC {_ci(d)}: {verdict}")
    return lines


def _cohort_table(ev):
    from rich.table import Table

    t = ev.cohort_metrics
    cohorts = sorted(t["cohort"].unique())
    table = Table(title="Leave-one-cohort-out: AUROC on each held-out cohort")
    table.add_column("model")
    for c in cohorts:
        n = t.loc[t["cohort"] == c, "n"].iloc[0]
        table.add_column(f"{c} (n={n})", justify="right")
    for name, rows in t.groupby("model", sort=False):
        by = rows.set_index("cohort")
        cells = [
            "n/a" if by.loc[c, "auroc"] != by.loc[c, "auroc"] else f"{by.loc[c, 'auroc']:.2f} [{by.loc[c, 'auroc_ci_low']:.2f}-{by.loc[c, 'auroc_ci_high']:.2f}]"
            for c in cohorts
        ]
        table.add_row(str(name), *cells)
    return table


def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. experiments/anti_tnf_default.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set cv.n_splits=10")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate config and data, print the resolved config.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler: local or tcp://HOST:PORT")] = None,
) -> None:
    """Run an experiment: features, cross-validated models and baselines, MLflow runs, registry."""
    overrides = list(set_ or [])
    if scheduler:
        overrides.append(f"compute.scheduler={scheduler}")
    cfg = bm.load_config(experiment, overrides=overrides)
    if dry_run:
        typer.echo(bm.config.dump_config(cfg), nl=False)
        bm.check_experiment(cfg)
        typer.echo("# config and data are valid", err=True)
        return
    _print_summary(bm.run_experiment(cfg))


def _obs_map(pairs: list[str] | None) -> dict[str, str] | None:
    """``KEY=COL`` pairs -> ``{canonical name: column}``."""
    from biomarkers._errors import ConfigError

    out = {}
    for pair in pairs or []:
        key, sep, column = pair.partition("=")
        if not sep or not key.strip() or not column.strip():
            msg = f"--obs-map {pair!r} must be KEY=COLUMN, e.g. --obs-map tissue=tissue_type."
            raise ConfigError(msg)
        out[key.strip()] = column.strip()
    return out or None


PatientCol = Annotated[str | None, typer.Option(help="Patient column of the cells' metadata (default: the training one)")]
SampleCol = Annotated[str | None, typer.Option(help="Sample column of the cells' metadata (default: the training one)")]
Query = Annotated[
    str | None, typer.Option(help="Samples to keep: a pandas query over the file's own columns ('' keeps all)")
]
ObsMap = Annotated[list[str] | None, typer.Option("--obs-map", help="Map a canonical column: KEY=COLUMN (repeatable)")]
Scheduler = Annotated[str | None, typer.Option(help="Process samples on Dask: local or tcp://HOST:PORT")]
NWorkers = Annotated[int, typer.Option(help="Workers of a local Dask cluster")]


def predict(
    input_: Annotated[Path, typer.Argument(metavar="INPUT", help="h5ad/10x of raw counts, a patient x feature CSV, or a bulk table")],
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/anti-tnf-nonresponse@champion")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write")] = Path("predictions.csv"),
    patient_col: PatientCol = None,
    sample_col: SampleCol = None,
    query: Query = None,
    obs_map: ObsMap = None,
    scheduler: Scheduler = None,
    n_workers: NWorkers = 2,
    clinical: Annotated[
        Path | None, typer.Option(help="CSV/TSV of the new patients' clinical covariates by patient id (models with clin__ features)")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write an HTML report of this batch: probabilities, explanations, flags")
    ] = None,
) -> None:
    """Predict anti-TNF non-response for new patients (or bulk samples), reading them as the training data was."""
    table = bm.predict(
        input_, model_uri=model, out=out, patient_col=patient_col, sample_col=sample_col, query=query,
        obs_map=_obs_map(obs_map), scheduler=scheduler, n_workers=n_workers, clinical=clinical, report=report,
    )  # fmt: skip
    shown = [c for c in (*table.columns[:5], "flags") if c in table.columns]
    head = table[shown].to_string(index=False, max_rows=20, float_format=lambda v: f"{v:.3f}")
    typer.echo(head)
    typer.echo(f"{len(table)} rows -> {out}" + (f"; report -> {report}" if report else ""))


def compare(
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name (default: all)")] = None,
    metric: Annotated[str, typer.Option(help="Sort by this metric")] = "cv_auroc",
    top: Annotated[int, typer.Option(help="Rows to show")] = 30,
) -> None:
    """List runs best-first with CV metrics and CIs (read through the MLflow API)."""
    df = bm.compare_runs(experiment=experiment, metric=metric)
    if df.empty:
        typer.echo("No runs yet. Start one with: biomarkers run experiments/anti_tnf_default.yaml")
        return
    base = metric.removesuffix("_ci_low").removesuffix("_ci_high")
    df["ci"] = df.apply(lambda r: f"[{r[base + '_ci_low']:.2f}, {r[base + '_ci_high']:.2f}]", axis=1)
    cols = ["experiment", "model", "kind", base, "ci", "cv_auprc", "cv_brier", "status", "run_id"]
    typer.echo(df[cols].head(top).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def ui(
    experiment: Annotated[str | None, typer.Option(help="Experiment whose runs table to open (default: the latest)")] = None,
    port: Annotated[int, typer.Option(help="Port")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; only 127.0.0.1 unless you mean to expose it")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on an experiment's runs table: the tracking server's, or a local one over ./mlflow.db."""
    from biomarkers.tracking import is_tracking_server, start_ui, tracking_uri, ui_address

    if is_tracking_server():
        typer.echo(f"MLflow UI of the tracking server {tracking_uri()}: {ui_address(experiment)}")
        return
    srv = start_ui(experiment, host=host, port=port)
    typer.echo(f"MLflow UI on {srv.page} (store {srv.backend_store_uri}); Ctrl-C to stop")
    raise typer.Exit(srv.wait())


def features(
    cohort: Annotated[Path, typer.Argument(help="h5ad (or 10x) of raw counts")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write")] = Path("features.csv"),
    experiment: Annotated[
        Path | None, typer.Option(help="Use this experiment's data, preprocess, signatures and features settings")
    ] = None,
    patient_col: PatientCol = None,
    sample_col: SampleCol = None,
    query: Query = None,
    obs_map: ObsMap = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the experiment's, else 0)")] = None,
    scheduler: Scheduler = None,
    n_workers: NWorkers = 2,
) -> None:
    """Build the patient x feature table from raw-count cells (scoring reference fitted on this input)."""
    from biomarkers._atomic import write_csv
    from biomarkers.cohort import features_from_file

    cfg = bm.load_config(experiment) if experiment is not None else None
    feats = features_from_file(
        cohort, config=cfg, patient_col=patient_col, sample_col=sample_col, query=query, obs_map=_obs_map(obs_map),
        seed=seed, scheduler=scheduler, n_workers=n_workers,
    )  # fmt: skip
    write_csv(feats.reset_index(), out)
    typer.echo(f"{feats.shape[0]} patients x {feats.shape[1]} features -> {out}")


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""
    app.command()(run)
    app.command()(predict)
    app.command()(compare)
    app.command()(ui)
    app.command()(features)
