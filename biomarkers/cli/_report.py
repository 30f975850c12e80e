"""``report``: the self-contained HTML report of a ``biomarkers run`` parent run, rebuilt from MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import biomarkers as bm


def report(
    run_id: Annotated[
        str, typer.Argument(help="Parent run id of `biomarkers run` (see its summary or `biomarkers compare`)")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path("report.html"),
) -> None:
    """Write a run's HTML report (cohort, features, models, calibration, importance, UMAP, model card)."""
    from biomarkers._atomic import write_atomic

    # Built in full before anything is written: a bad run id leaves no file behind.
    html = bm.tracking.build_report(run_id)
    write_atomic(out, lambda p: p.write_text(html, encoding="utf-8"))
    typer.echo(f"report of run {run_id} -> {out} ({len(html) / 1024:.0f} kB)")


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the root app."""
    app.command()(report)
