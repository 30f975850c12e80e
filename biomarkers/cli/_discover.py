"""``discover``: find candidate biomarkers by pseudobulk differential expression (one MLflow run)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import typer

import biomarkers as bm

DEFAULT_COMPARTMENTS = ["MNP", "stroma", "epithelium", "lymphoid", "plasma", "granulocyte"]


class CompartmentChoice(StrEnum):
    """Compartments ``--compartment`` accepts (``all`` = every cell)."""

    MNP = "MNP"
    stroma = "stroma"
    epithelium = "epithelium"
    lymphoid = "lymphoid"
    plasma = "plasma"
    granulocyte = "granulocyte"
    all = "all"


def _print_summary(res) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    has_truth = res.truth is not None
    table = Table(title=f"Pseudobulk DE, non-responders vs responders (padj < FDR), {res.seconds:.1f} s")
    cols = ["compartment", "patients (NR)", "tested", "significant (up/down)", "top 5 genes (by statistic)"]
    cols += ["precision", "recall"] if has_truth else []
    for col in cols:
        if col == "compartment":
            table.add_column(col, no_wrap=True, min_width=11)
        else:
            table.add_column(col, justify="left" if col.startswith("top") else "right")
    for r in res.summary.itertuples(index=False):
        row = [
            str(r.compartment),
            f"{r.n_patients} ({r.n_non_responders})",
            str(r.n_tested),
            f"{r.n_significant} ({r.n_up}/{r.n_down})",
            str(r.top_genes).replace(",", ", "),
        ]
        if has_truth:
            row += [f"{v:.2f}" if v == v else "-" for v in (r.precision, r.recall)]
        table.add_row(*row)
    console.print(table)
    if res.skipped:
        typer.echo(f"Skipped (too few patients per group): {', '.join(res.skipped)}")
    if has_truth:
        typer.echo(
            "precision: significant genes explained by planted effects (direct or MNP composition); "
            "recall: planted expression genes found."
        )
    typer.echo(f"Outputs: {res.out_dir} (de/*.csv, plots/volcano_*.png, summary.csv, known_signatures.csv)")
    if res.gene_set_path is not None:
        names = ", ".join(res.gene_sets)
        typer.echo(f"Gene sets: {res.gene_set_path} ({names}); use via signature_files: in an experiment config.")
        typer.echo(
            "  They were chosen with this cohort's labels: evaluate them on another cohort, or with "
            "biomarkers.discovery.cv_with_discovery (discovery inside each CV fold)."
        )
    else:
        typer.echo("Gene sets: none (no gene significant and up in non-responders).")
    if res.run_id is not None:
        console.print(f"MLflow: experiment '{res.experiment_name}', run {res.run_id} ({bm.tracking.tracking_uri()})")


def discover(
    source: Annotated[
        Path, typer.Argument(metavar="EXPERIMENT_OR_COHORT", help="Experiment YAML, or a cohort file (h5ad, 10x, ...)")
    ],
    compartment: Annotated[
        list[CompartmentChoice] | None,
        typer.Option(
            "--compartment",
            help="Compartment to test (repeat the option); default: all six",
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Output folder (default: discovery/NAME-TIMESTAMP)")] = None,
    fdr: Annotated[float, typer.Option(help="Significance threshold on BH-adjusted p-values", min=0.0, max=1.0)] = 0.05,
    top_n: Annotated[int, typer.Option(help="At most this many genes per discovered set", min=1)] = 25,
    method: Annotated[
        Literal["deseq2", "deseq2_fast", "ttest", "wilcoxon"],
        typer.Option(help="DE test (deseq2 follows an experiment's discovery.method; deseq2_fast: vectorised, opt-in)"),
    ] = "deseq2",
    covariate: Annotated[
        list[str] | None, typer.Option("--covariate", help="Patient-level covariate (repeat); default: batch")
    ] = None,
    no_covariates: Annotated[bool, typer.Option("--no-covariates", help="Test without covariates")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set data.simulate.seed=1")
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log an MLflow run")] = True,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Read a file one sample at a time (bounded memory) or whole; default: compute.stream, or stream",
            show_default=False,
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Process samples on Dask: local or tcp://HOST:PORT (default: compute.scheduler)")
    ] = None,
    n_workers: Annotated[
        int | None, typer.Option(min=1, help="Workers of --scheduler local (default: compute.n_workers, 2)")
    ] = None,
) -> None:
    """Find candidate biomarkers: pseudobulk differential expression per compartment, gene sets, MLflow run."""
    covariates: list[str] = [] if no_covariates else list(covariate or ["batch"])
    res = bm.discovery.run_discovery(
        source,
        out_dir=out_dir,
        compartments=[c.value for c in compartment] if compartment else DEFAULT_COMPARTMENTS,
        covariates=covariates,
        method=method,
        fdr=fdr,
        top_n=top_n,
        overrides=list(set_ or []),
        track=track,
        stream=stream,
        scheduler=scheduler,
        n_workers=n_workers,
    )
    _print_summary(res)


def register(app: typer.Typer) -> None:
    """Add the ``discover`` command to the root app."""
    app.command()(discover)
