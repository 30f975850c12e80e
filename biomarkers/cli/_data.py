"""``data simulate | list | fetch``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import biomarkers as bm

app = typer.Typer(help="Embedded simulated cohort and public data sets (checksummed cache).", no_args_is_help=True)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="h5ad to write")],
    patients: Annotated[int, typer.Option(help="Patients")] = 40,
    cells_per_patient: Annotated[int, typer.Option(help="Mean cells per patient")] = 500,
    genes: Annotated[int, typer.Option(help="Genes (at least 2000 for realism)")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed")] = 0,
    effect_size: Annotated[float, typer.Option(help="Planted non-response effect; 0 = null cohort")] = 1.0,
) -> None:
    """Write a simulated single-cell IBD cohort (raw counts, metadata, ground truth) to h5ad."""
    from biomarkers._atomic import write_h5ad

    adata = bm.simulate_cohort(n_patients=patients, cells_per_patient=cells_per_patient, n_genes=genes, seed=seed, effect_size=effect_size)
    write_h5ad(adata, out)
    truth = adata.uns.get("truth", {})
    ideal = truth.get("ideal_auroc")
    n_nr = int((adata.obs.groupby("patient_id", observed=True)["response"].first() == "non_responder").sum())
    typer.echo(
        f"{adata.n_obs} cells x {adata.n_vars} genes, {patients} patients ({n_nr} non-responders), effect size {effect_size}"
        + (f", ideal AUROC {float(ideal):.2f}" if ideal is not None else "")
        + f" -> {out}"
    )


@app.command("list")
def list_() -> None:
    """Known public data sets and whether they are cached."""
    df = bm.io.list_datasets()
    typer.echo(df.to_string(index=False))


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="Data set name (see `biomarkers data list`)")],
    data_dir: Annotated[Path | None, typer.Option(help="Cache folder (default data/cache or $BIOMARKERS_DATA_DIR)")] = None,
    allow_unverified: Annotated[
        bool, typer.Option("--allow-unverified/--verified-only", help="Accept entries with no recorded checksum (the sha256 is logged to pin)")
    ] = False,
) -> None:
    """Download a public data set into the checksummed cache."""
    import sys

    path = bm.io.fetch_dataset(name, data_dir=data_dir, allow_unverified=allow_unverified, progress=sys.stderr.isatty())
    typer.echo(str(path))
