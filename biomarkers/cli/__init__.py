"""The ``biomarkers`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import logging
import os
import sys

import typer

from biomarkers._errors import BiomarkersError
from biomarkers.cli import _data, _discover, _report, _run, _server, _signatures

app = typer.Typer(
    name="biomarkers",
    help="Biomarker discovery for anti-TNF non-response in Crohn's disease: experiments, MLflow tracking, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (INFO)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and DEBUG logs."),
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("biomarkers")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # MLflow logs every store migration and model validation at INFO: keep that for -v. It reads this
    # variable when it is first imported, which is after this point (imports are lazy).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if debug else "INFO" if verbose else "WARNING")
    logging.getLogger("alembic").setLevel(logging.INFO if verbose else logging.WARNING)
    # Our pyfunc is logged as a Python object (cloudpickle), by design; MLflow warns about that on every run.
    logging.getLogger("mlflow.pyfunc").addFilter(lambda r: "CloudPickle" not in r.getMessage())


_run.register(app)
_discover.register(app)
_server.register(app)
_report.register(app)
app.add_typer(_data.app, name="data")
app.add_typer(_signatures.app, name="signatures")


def main() -> None:
    """Entry point: user-fixable errors are one line on stderr with exit code 2; ``--debug`` shows tracebacks."""
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except BiomarkersError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2 if isinstance(e, click.exceptions.UsageError) else e.exit_code)
        if debug:
            raise
        typer.echo(f"error: unexpected {type(e).__name__}: {e}. Re-run with --debug for the traceback.", err=True)
        sys.exit(1)
