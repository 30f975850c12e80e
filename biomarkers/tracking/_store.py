"""The MLflow store: SQLite by default, artifacts under ./mlruns, ``MLFLOW_TRACKING_URI`` overrides.

Two kinds of store:

- a store the client writes itself (``sqlite:``, ``file:``, a plain path, a database URI): new experiments put
  their artifacts under the project's artifact root (``./mlruns`` or ``$BIOMARKERS_ARTIFACT_ROOT``);
- a tracking server (``http://``, ``https://``, e.g. one started by :func:`start_server`): the server decides
  where artifacts go (its proxied ``mlflow-artifacts:/`` store), so a registered model is on the server and
  loads from any machine that can reach it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from biomarkers._errors import ConfigError

logger = logging.getLogger("biomarkers")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns"
#: Folder next to the server's SQLite store where :func:`start_server` keeps the proxied artifacts.
DEFAULT_SERVER_ARTIFACTS = "mlartifacts"
#: The experiment tag that makes MLflow 3's UI open an experiment on its runs table (not the GenAI overview).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_UI_PORT = 5000
_SERVER_SCHEMES = ("http", "https")
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def tracking_uri() -> str:
    """Return the tracking URI in force: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _scheme(uri: str) -> str:
    """Return the scheme: ``'postgresql'`` for ``postgresql+psycopg2://...``, ``''`` for a plain path or ``C:/...``."""
    head, sep, _ = uri.partition("://")
    if not sep and uri.startswith("file:"):
        return "file"
    if not sep or len(head) == 1:
        return ""
    return head.split("+", 1)[0].lower()


def is_tracking_server(uri: str | None = None) -> bool:
    """Whether `uri` (default: the one in force) is a tracking server (``http(s)://``) rather than a local store.

    Parameters
    ----------
    uri
        A tracking URI; default :func:`tracking_uri`.

    Returns
    -------
    True for ``http://`` and ``https://`` URIs.

    Examples
    --------
    >>> from biomarkers.tracking import is_tracking_server
    >>> is_tracking_server("http://127.0.0.1:5000"), is_tracking_server("sqlite:///mlflow.db")
    (True, False)
    """
    return _scheme(tracking_uri() if uri is None else uri) in _SERVER_SCHEMES


def artifact_root() -> str:
    """Where new experiments put artifacts: ``$BIOMARKERS_ARTIFACT_ROOT`` or ``./mlruns`` (absolute URI)."""
    root = os.environ.get("BIOMARKERS_ARTIFACT_ROOT") or DEFAULT_ARTIFACT_ROOT
    return Path(root).resolve().as_uri()


def setup_mlflow() -> str:
    """Point MLflow at the project's store and registry; returns the tracking URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def get_or_create_experiment(name: str) -> str:
    """Experiment id for ``name``, creating it where the store in force keeps artifacts.

    A local store (SQLite, files, a database the client writes to) gets artifacts under :func:`artifact_root`;
    a tracking server chooses their location itself (its ``mlflow-artifacts:/`` proxy), so they land on the
    server. Experiments are tagged ``mlflow.experimentKind = custom_model_development`` (also existing ones
    that lack the tag), so MLflow's UI opens them on the runs table.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None if is_tracking_server() else f"{artifact_root()}/{name}"
        try:
            return mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create (concurrent runs).
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if is_tracking_server() and _scheme(exp.artifact_location) in ("file", ""):
        msg = (
            f"Experiment {name!r} on {tracking_uri()} keeps its artifacts in {exp.artifact_location}, a folder on the "
            "machine that created it: teammates cannot load its models. Use a new experiment name (config `name`) "
            "so the server stores the artifacts."
        )
        warnings.warn(msg, stacklevel=2)
    return exp.experiment_id


def _experiment_id(name: str | None) -> str | None:
    """Id of experiment `name` (None: the most recently updated one with runs) in the store in force."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if name is not None:
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            names = [e.name for e in MlflowClient().search_experiments()]
            msg = (
                f"No experiment {name!r} in {tracking_uri()} (have: {', '.join(names) or 'none'}). "
                "Run `biomarkers run EXPERIMENT.yaml` first, or check MLFLOW_TRACKING_URI."
            )
            raise ConfigError(msg)
        return exp.experiment_id
    exps = MlflowClient().search_experiments(order_by=["last_update_time DESC"])
    named = [e for e in exps if e.name != "Default"]
    return (named or exps)[0].experiment_id if exps else None


def ui_address(experiment: str | None = None, *, port: int = DEFAULT_UI_PORT) -> str:
    """Return the web address of the MLflow UI for the store in force, on `experiment`'s runs table when given.

    For a tracking server it is the server itself; for a local store it is where ``biomarkers ui`` serves it
    (``http://127.0.0.1:<port>``).

    Parameters
    ----------
    experiment
        An experiment name; None gives the UI's home page.
    port
        The port of ``biomarkers ui`` for a local store.

    Returns
    -------
    A URL such as ``http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning``.

    Examples
    --------
    With ``MLFLOW_TRACKING_URI=http://mlflow.internal:5000`` after ``biomarkers run`` of the default experiment:

    >>> from biomarkers.tracking import ui_address
    >>> ui_address("anti-tnf-default")  # doctest: +SKIP
    'http://mlflow.internal:5000/#/experiments/1/runs?workflowType=machine_learning'
    """
    uri = tracking_uri()
    base = uri.rstrip("/") if is_tracking_server(uri) else f"http://127.0.0.1:{port}"
    if experiment is None:
        return base
    return _runs_page(base, experiment)


def _runs_page(base: str, experiment: str | None) -> str:
    """``<base>/#/experiments/<id>/runs?...`` for `experiment` (None: the latest) in the store in force; `base` if none."""
    setup_mlflow()
    exp_id = _experiment_id(experiment)
    # workflowType: MLflow 3's sidebar otherwise stays on its GenAI pages (a per-browser setting).
    return base if exp_id is None else f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def ui_hint(experiment: str | None = None) -> str:
    """Return what the run summary prints after ``UI:``: the server's address, or ``biomarkers ui`` and its address."""
    try:
        address = ui_address(experiment)
    except ConfigError:  # the summary of a result whose experiment is not in this store: the UI's front page
        address = ui_address(None)
    return address if is_tracking_server() else f"biomarkers ui  ({address})"


# --- starting MLflow's server ------------------------------------------------------------------------------


@dataclass
class TrackingServer:
    """An ``mlflow server`` (or ``mlflow ui``) process started by :func:`start_server` or :func:`start_ui`.

    Attributes
    ----------
    process
        The process (leader of its own process group, so :meth:`stop` ends its workers too).
    url
        Where a client or a browser reaches it, e.g. ``http://127.0.0.1:5000``.
    backend_store_uri
        Its tracking and registry store.
    artifacts_destination
        Where it stores proxied artifacts (None for ``biomarkers ui``, which reads the local ``mlruns``).
    command
        The command line it was started with.
    page
        The page to open first: for :func:`start_ui`, the experiment's runs table; else :attr:`url`.
    """

    process: subprocess.Popen
    url: str
    backend_store_uri: str
    artifacts_destination: str | None
    command: list[str] = field(repr=False)
    page: str = ""

    def __post_init__(self) -> None:
        self.page = self.page or self.url

    def wait(self) -> int:
        """Block until the server exits; Ctrl-C or SIGTERM stops it (its own process group sees neither)."""
        import threading

        def interrupt(*_: object) -> None:
            raise KeyboardInterrupt

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, interrupt) if main else None
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            self.stop()
            return 130
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def stop(self, timeout: float = 5) -> None:
        """Stop the server and its worker processes: SIGTERM, then SIGKILL after `timeout` seconds.

        Uvicorn's graceful shutdown waits for clients' idle keep-alive connections, hence the bound.
        """
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except (ProcessLookupError, AttributeError):  # pragma: no cover - already gone, or no process groups
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port(host: str, port: int) -> None:
    """Raise a one-line :class:`ConfigError` when `host`:`port` cannot be listened on."""
    if not 0 < port < 65536:
        msg = f"--port {port} is not a TCP port. Use 1-65535, e.g. --port 5000."
        raise ConfigError(msg)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            reason = "is in use" if err.errno in (98, 48, 10048) else f"cannot be opened ({err.strerror})"
            msg = f"Port {port} on {host} {reason}. Pick another with --port {port + 1}, or stop what is listening there."
            raise ConfigError(msg) from None


def _redact(uri: str) -> str:
    """`uri` with any password replaced by ``***``."""
    head, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        auth, _, host = rest.partition("@")
        user = auth.split(":", 1)[0]
        return f"{head}://{user}{':***' if ':' in auth else ''}@{host}"
    return uri


def default_backend_store_uri() -> str:
    """Return the store ``biomarkers run`` uses here, absolute: ``$MLFLOW_TRACKING_URI`` unless it is a server, else ./mlflow.db."""
    uri = tracking_uri()
    if is_tracking_server(uri):
        uri = DEFAULT_TRACKING_URI
    return _absolute_sqlite(uri)


def _absolute_sqlite(uri: str) -> str:
    if _scheme(uri) == "sqlite" and not uri.startswith("sqlite:////") and uri != "sqlite://":
        path, q, query = uri.removeprefix("sqlite:///").partition("?")
        return f"sqlite:///{Path(path).resolve()}{q}{query}"
    return uri


def _check_backend(uri: str) -> str:
    """Validate a backend store URI (scheme, SQLite folder, database driver and connection); return it normalised."""
    from biomarkers._optional import require

    scheme = _scheme(uri)
    if scheme in ("", "file"):
        return uri
    if scheme not in _DB_SCHEMES:
        msg = (
            f"--backend-store-uri {_redact(uri)!r} is not a database or folder (scheme {scheme!r}). "
            "Use sqlite:///path/mlflow.db or postgresql://user@host:5432/dbname."
        )
        raise ConfigError(msg)
    if scheme == "sqlite":
        uri = _absolute_sqlite(uri)
        folder = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).parent
        if not folder.is_dir():
            msg = f"--backend-store-uri {uri!r}: folder {folder} does not exist. Create it, or pick another path."
            raise ConfigError(msg)
        return uri
    import sqlalchemy

    if scheme == "postgresql":
        # SQLAlchemy picks the driver of a bare postgresql:// (psycopg from 2.1, psycopg2 before).
        try:
            driver = sqlalchemy.engine.make_url(uri).get_dialect().driver
        except Exception:  # noqa: BLE001 - a malformed URI: the connection attempt below says so
            driver = "psycopg"
        require(driver, "server", purpose=f"A PostgreSQL backend store (driver {driver})")

    connect_args = {"connect_timeout": 5} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - any driver error means the same to the user: cannot connect
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (
            f"Cannot connect to --backend-store-uri {_redact(uri)}: {first}. "
            "Check the host, port, user, password and database name, and that the database server is running."
        )
        raise ConfigError(msg) from None
    return uri


def _wait_ready(server: TrackingServer, timeout: float) -> None:
    """Poll ``/health`` until the server answers; raise if it exits or does not answer within `timeout` s."""
    deadline = time.monotonic() + timeout
    probe = server.url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            msg = (
                f"mlflow server exited with code {server.process.returncode} before answering on {server.url} "
                f"(store {_redact(server.backend_store_uri)}). Its log above (or the log file) says why."
            )
            raise ConfigError(msg)
        try:
            with urllib.request.urlopen(f"{probe}/health", timeout=2) as r:  # noqa: S310 - our own http URL
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    server.stop()
    msg = f"mlflow server did not answer on {server.url}/health within {timeout:g} s; it was stopped."
    raise ConfigError(msg)


def _launch(cmd: list[str], *, url: str, backend: str, artifacts: str | None, log: Path | None, timeout: float) -> TrackingServer:
    out: IO[bytes] | None = log.open("ab") if log is not None else None
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)  # noqa: S603
    finally:
        if out is not None:
            out.close()
    server = TrackingServer(process=proc, url=url, backend_store_uri=backend, artifacts_destination=artifacts, command=cmd)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_server(
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_UI_PORT,
    workers: int | None = None,
    app_name: str | None = None,
    allowed_hosts: str | None = None,
    log: Path | None = None,
    timeout: float = 60,
) -> TrackingServer:
    """Start a team tracking server (``mlflow server``) that stores artifacts itself, and wait until it answers.

    Clients point ``MLFLOW_TRACKING_URI`` at :attr:`TrackingServer.url`; their runs, artifacts and registered
    models then live on the server (artifacts are proxied through it to `artifacts_destination`).

    Parameters
    ----------
    backend_store_uri
        Runs and registry: any SQLAlchemy URI (``sqlite:///...``, ``postgresql://user@host:5432/db``; PostgreSQL
        needs ``pip install 'biomarkers[server]'``). Default: the SQLite store ``biomarkers run`` uses here.
    artifacts_destination
        Where the server keeps artifacts (a folder, ``s3://...``). Default: ``mlartifacts/`` next to a SQLite
        store, else in the working directory.
    host
        Interface to listen on; ``0.0.0.0`` for teammates on other machines (then add authentication:
        ``app_name="basic-auth"``).
    port
        TCP port.
    workers
        Server worker processes (MLflow's default when None).
    app_name
        MLflow server app, e.g. ``"basic-auth"`` for user accounts.
    allowed_hosts
        Host names clients may use, comma-separated (MLflow's default: localhost and private IP addresses), e.g.
        ``"mlflow.lab.example.org"`` when teammates reach the server by name.
    log
        Append the server's output to this file instead of the console.
    timeout
        Seconds to wait for ``/health``.

    Returns
    -------
    The running :class:`TrackingServer` (stop it with :meth:`TrackingServer.stop` or use it as a context manager).

    Raises
    ------
    ConfigError
        The port is in use, the backend URI is not a database or cannot be reached, or the server did not start.
    MissingDependencyError
        A PostgreSQL backend without its driver.
    """
    _check_port(host, port)
    backend = _check_backend(backend_store_uri or default_backend_store_uri())
    if artifacts_destination is None:
        base = Path(backend.removeprefix("sqlite:///").split("?", 1)[0]).parent if _scheme(backend) == "sqlite" else Path.cwd()
        artifacts_destination = base / DEFAULT_SERVER_ARTIFACTS
    dest = str(artifacts_destination)
    if _scheme(dest) in ("", "file"):
        local = Path(dest.removeprefix("file://")).resolve()
        local.mkdir(parents=True, exist_ok=True)
        dest = str(local)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination", dest]
    cmd += ["--host", host, "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if app_name is not None:
        cmd += ["--app-name", app_name]
    if allowed_hosts is not None:
        cmd += ["--allowed-hosts", allowed_hosts]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    logger.info("start_server: %s", " ".join(_redact(c) for c in cmd))
    return _launch(cmd, url=url, backend=backend, artifacts=dest, log=log, timeout=timeout)


def start_ui(
    experiment: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_UI_PORT,
    log: Path | None = None,
    timeout: float = 60,
) -> TrackingServer:
    """Start MLflow's UI over the local store in force (``biomarkers ui``), and wait until it answers.

    Parameters
    ----------
    experiment
        The experiment whose runs table :attr:`TrackingServer.page` opens; default: the latest updated one.
    host
        Interface to listen on.
    port
        TCP port.
    log
        Append the UI's output to this file instead of the console.
    timeout
        Seconds to wait for ``/health``.

    Returns
    -------
    The running :class:`TrackingServer`; :attr:`TrackingServer.page` is the experiment's runs table.

    Raises
    ------
    ConfigError
        The store in force is a tracking server (it has its own UI), the SQLite store does not exist yet,
        `experiment` is not in it, or the port is in use.
    """
    uri = tracking_uri()
    if is_tracking_server(uri):
        msg = f"MLFLOW_TRACKING_URI is the tracking server {uri}: open {ui_address()} (it serves its own UI)."
        raise ConfigError(msg)
    uri = _absolute_sqlite(uri)
    if _scheme(uri) == "sqlite":
        db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.is_file():
            where = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else f"the default ./mlflow.db in {Path.cwd()}"
            msg = (
                f"No MLflow store at {db} ({where}). Run `biomarkers run experiments/anti_tnf_default.yaml` here "
                "first, or set MLFLOW_TRACKING_URI to the store you ran with."
            )
            raise ConfigError(msg)
    _check_port(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    page = _runs_page(url.replace("://0.0.0.0:", "://127.0.0.1:"), experiment)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", artifact_root()]
    cmd += ["--host", host, "--port", str(port)]
    server = _launch(cmd, url=url, backend=uri, artifacts=None, log=log, timeout=timeout)
    server.page = page
    return server
