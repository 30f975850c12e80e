"""``server``: a team MLflow tracking server (``bm.tracking.start_server``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer


def server(
    backend_store_uri: Annotated[
        str | None,
        typer.Option(help="Runs and registry: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: ./mlflow.db, the store `biomarkers run` uses)"),
    ] = None,
    artifacts_destination: Annotated[
        str | None, typer.Option(help="Where the server keeps artifacts: a folder or s3://... (default: mlartifacts/ next to the SQLite store)")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 lets teammates connect (then use --app-name basic-auth)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 5000,
    workers: Annotated[int | None, typer.Option(help="Server worker processes (default: MLflow's)")] = None,
    app_name: Annotated[str | None, typer.Option(help="MLflow server app, e.g. basic-auth for user accounts")] = None,
    allowed_hosts: Annotated[
        str | None, typer.Option(help="Host names teammates use, comma-separated (MLflow's default: localhost and private IPs)")
    ] = None,
    log: Annotated[Path | None, typer.Option(help="Append the server's log to this file instead of the console")] = None,
) -> None:
    """Start a team MLflow tracking server that stores runs, artifacts and registered models itself."""
    from biomarkers.tracking import start_server

    srv = start_server(
        backend_store_uri=backend_store_uri, artifacts_destination=artifacts_destination, host=host, port=port,
        workers=workers, app_name=app_name, allowed_hosts=allowed_hosts, log=log,
    )  # fmt: skip
    shared = srv.url if host not in ("0.0.0.0", "::") else f"http://{socket.gethostname()}:{port}"  # noqa: S104
    typer.echo(f"MLflow tracking server: UI {srv.url}  (store {srv.backend_store_uri}, artifacts {srv.artifacts_destination})")
    typer.echo("Point clients at it (runs, artifacts and the model registry then live on this server):")
    typer.echo(f"  export MLFLOW_TRACKING_URI={shared}")
    if host in ("127.0.0.1", "localhost", "::1"):
        typer.echo("Listening on this machine only; --host 0.0.0.0 (with --app-name basic-auth) to share it.")
    typer.echo("Ctrl-C to stop.")
    raise typer.Exit(srv.wait())


def register(app: typer.Typer) -> None:
    """Add this command to the root app."""
    app.command()(server)
