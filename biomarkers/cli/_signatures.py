"""``signatures list | show | evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import biomarkers as bm

app = typer.Typer(help="Published gene sets: list, show, and evaluate on a bulk cohort.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List the package's gene sets with their sizes and citations."""
    df = bm.signatures.list_gene_sets()
    typer.echo(df.to_string(index=False, max_colwidth=70))


@app.command()
def show(name: Annotated[str, typer.Argument(help="Gene-set name")]) -> None:
    """Genes and citation of one gene set."""
    gs = bm.signatures.load_gene_sets([name])[name]
    typer.echo(f"{gs.name} ({len(gs.genes)} genes)\nrole: {gs.role}\nsource: {gs.source}\n" + " ".join(gs.genes))


@app.command()
def evaluate(
    table: Annotated[Path, typer.Argument(help="Bulk table (CSV/TSV, samples x genes + metadata) or GEO series matrix")],
    label_col: Annotated[str, typer.Option(help="Label column")] = "response",
    positive: Annotated[str, typer.Option(help="Positive label (non-response)")] = "non_responder",
    genes: Annotated[str | None, typer.Option(help="Comma-separated single genes to score too")] = None,
    group_col: Annotated[str | None, typer.Option(help="Patient column: bootstrap by patient")] = "patient_id",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV to write")] = None,
    seed: Annotated[int, typer.Option(help="Seed")] = 0,
) -> None:
    """AUROC (95% CI) and p-value of every signature, and of single genes, on a bulk cohort."""
    from biomarkers._atomic import write_csv

    adata = bm.read_cohort(table, kind="bulk_table" if table.suffix.lower() in {".csv", ".tsv", ".gz", ".txt"} and "series_matrix" not in table.name else None, label_col=label_col)
    gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
    res = bm.signatures.evaluate_signatures(
        adata,
        label_col="response",
        positive=positive,
        genes=gene_list,
        group_col=group_col if group_col and group_col in adata.obs else None,
        seed=seed,
    )
    typer.echo(res.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if out is not None:
        write_csv(res, out)
        typer.echo(f"-> {out}")
