"""A team tracking server: a real ``mlflow server`` on 127.0.0.1 (SQLite, and PostgreSQL when installed).

``run`` in one working directory registers a model whose artifacts land on the server; ``predict`` in another
working directory (the first one deleted, as on a teammate's machine) loads ``models:/...@champion`` through it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

import biomarkers as bm
from biomarkers._errors import ConfigError
from biomarkers.cli import app
from biomarkers.tracking._store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, get_or_create_experiment, setup_mlflow

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "anti_tnf_default.yaml"
TINY = [
    "data.simulate.n_patients=20",
    "data.simulate.cells_per_patient=60",
    "data.simulate.n_genes=400",
    "preprocess.min_genes=50",
    "preprocess.min_counts=100",
    "models=[{kind: logreg}]",
    "features.clinical=[]",
    "cv.n_splits=3",
    "cv.n_repeats=1",
    "evaluation.n_permutations=0",
    "evaluation.n_boot=100",
    "plots.umap=false",
    "baselines.majority=false",
    "baselines.single_features=[]",
    "registry.model_name=tiny-team",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300, check=False,
    )  # fmt: skip


# --- a throwaway PostgreSQL cluster ----------------------------------------------------------------------


def _pg_bin() -> Path | None:
    """Folder with initdb and pg_ctl: Debian's /usr/lib/postgresql/<version>/bin (newest), else PATH."""
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for folder in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl else None


def _pg_driver_missing() -> str | None:
    """Why SQLAlchemy cannot drive postgresql:// here, or None."""
    import importlib

    import sqlalchemy

    driver = sqlalchemy.engine.make_url("postgresql://u@h/d").get_dialect().driver
    try:
        importlib.import_module(driver)
    except ImportError:
        return f"PostgreSQL driver {driver!r} not installed (pip install 'biomarkers[server]')"
    return None


@contextlib.contextmanager
def postgres_cluster():
    """Yield ``postgresql://bm@127.0.0.1:PORT/mlflow`` of a new cluster in a temp folder; stop and delete it after.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user (Debian's package
    creates it), else ``nobody``, and every server command runs through ``runuser``.
    """
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if (why := _pg_driver_missing()) is not None:
        pytest.skip(why)
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="bm-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if runuser is None or user is None:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root without runuser or an unprivileged user for initdb")
        os.chown(base, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        prefix = [runuser, "-u", user, "--"]
    data, sock, log = base / "data", base / "sock", base / "pg.log"
    port = free_port()

    def run(*cmd: str) -> None:
        res = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr or res.stdout}\n{_read(log)}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "bm", "--auth=trust", "-E", "UTF8", "--no-sync")
        run("mkdir", str(sock))
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "bm", "mlflow")
            yield f"postgresql://bm@127.0.0.1:{port}/mlflow"
        finally:
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _read(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


# --- the server -------------------------------------------------------------------------------------------


BACKENDS = ["sqlite", "postgresql"]


def _start(kind: str, tmp: Path, stack: contextlib.ExitStack) -> bm.tracking.TrackingServer:
    backend = f"sqlite:///{tmp}/mlflow.db" if kind == "sqlite" else stack.enter_context(postgres_cluster())
    srv = bm.tracking.start_server(
        backend_store_uri=backend, artifacts_destination=tmp / "artifacts", port=free_port(), workers=1,
        log=tmp / "server.log", timeout=120,
    )  # fmt: skip
    stack.callback(srv.stop, timeout=1)  # the client's idle keep-alive connections hold uvicorn's graceful exit
    return srv


@pytest.fixture(scope="module")
def _servers(tmp_path_factory):
    """Both servers start at once (startup is mostly imports and schema migrations); stopped after the module."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(BACKENDS)) as pool:
        yield {kind: pool.submit(_start, kind, tmp_path_factory.mktemp(f"server-{kind}"), stack) for kind in BACKENDS}


@pytest.fixture(params=BACKENDS)
def server(request, _servers):
    """A running tracking server on a free port with its artifacts in a temp folder (skips without PostgreSQL)."""
    srv = _servers[request.param].result()
    yield srv
    log = Path(srv.artifacts_destination).parent / "server.log"
    assert srv.process.poll() is None, f"the server died during the test:\n{_read(log)}"


def test_run_registers_on_the_server_and_predict_loads_it_from_elsewhere(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("BIOMARKERS_ARTIFACT_ROOT", raising=False)
    here = tmp_path / "alice"
    here.mkdir()
    monkeypatch.chdir(here)
    res = bm.run_experiment(bm.load_config(DEFAULT, overrides=TINY))
    assert res.model_uri is not None
    assert res.champion_version is not None

    # Nothing was written next to the client: the server holds runs, artifacts and the model.
    assert sorted(p.name for p in here.iterdir()) == []
    exp = mlflow.get_experiment_by_name(res.experiment_name)
    assert exp.artifact_location.startswith("mlflow-artifacts:/")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    stored = Path(server.artifacts_destination)
    assert list(stored.rglob("MLmodel")), f"no model files in the server's store {stored}"
    assert list(stored.rglob("python_model.pkl"))
    assert list(stored.rglob("requirements.txt"))
    assert list(stored.rglob("config.resolved.yaml"))

    # The summary names the server's UI, on the experiment's runs table.
    from biomarkers.cli._run import _print_summary

    _print_summary(res)
    out = capsys.readouterr().out
    assert f"UI: {server.url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out
    assert "biomarkers ui" not in out

    # A teammate: another folder (the first one gone, with any local artifacts), only MLFLOW_TRACKING_URI in common.
    shutil.rmtree(here)
    there = tmp_path / "bob"
    there.mkdir()
    new = bm.simulate_cohort(n_patients=6, cells_per_patient=60, n_genes=400, seed=3)
    new.write_h5ad(there / "new.h5ad")
    model = f"models:/{res.model_uri.split('/')[1]}@champion"
    monkeypatch.chdir(there)
    done = CliRunner().invoke(app, ["predict", "new.h5ad", "--model", model, "--out", "preds.csv"])
    assert done.exit_code == 0, done.output
    preds = pd.read_csv(there / "preds.csv")
    assert len(preds) == 6
    assert preds["p_non_response"].between(0, 1).all()
    assert not (there / "mlruns").exists()
    assert not (there / "mlflow.db").exists()


def test_ui_address_is_the_servers(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org/")
    assert bm.tracking.is_tracking_server()
    assert bm.tracking.ui_address() == "https://mlflow.example.org"
    assert bm.tracking.ui_hint() == "https://mlflow.example.org"
    with pytest.raises(ConfigError, match="serves its own UI"):
        bm.tracking.start_ui()


# --- local stores (no server) ----------------------------------------------------------------------------


def test_local_store_keeps_artifacts_local_and_tags_experiments(mlflow_store, tmp_path):
    setup_mlflow()
    exp = mlflow.get_experiment(get_or_create_experiment("local-exp"))
    assert exp.artifact_location == (tmp_path / "mlruns").resolve().as_uri() + "/local-exp"
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # An experiment created before the tag existed gets it on its next run; one with a kind keeps it.
    old = mlflow.create_experiment("old-exp")
    assert EXPERIMENT_KIND_TAG not in mlflow.get_experiment(old).tags
    assert get_or_create_experiment("old-exp") == old
    assert mlflow.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    genai = mlflow.create_experiment("genai-exp", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    get_or_create_experiment("genai-exp")
    assert mlflow.get_experiment(genai).tags[EXPERIMENT_KIND_TAG] == "genai_development"

    assert not bm.tracking.is_tracking_server()
    page = f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    assert bm.tracking.ui_address("local-exp", port=5009) == f"http://127.0.0.1:5009/{page}"
    assert bm.tracking.ui_hint("local-exp") == f"biomarkers ui  (http://127.0.0.1:5000/{page})"


@pytest.mark.parametrize(
    ("uri", "is_server"),
    [("http://h:5000", True), ("https://mlflow.example.org/", True), ("sqlite:///mlflow.db", False),
     ("file:///tmp/mlruns", False), ("mlruns", False), ("/abs/mlruns", False), ("postgresql://u@h/db", False)],
)  # fmt: skip
def test_which_uris_are_tracking_servers(uri, is_server):
    assert bm.tracking.is_tracking_server(uri) is is_server


# --- bad input: one line, exit code 2 --------------------------------------------------------------------


def test_start_server_refuses_bad_input(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"Port {port} on 127.0.0.1 is in use"):
            bm.tracking.start_server(backend_store_uri=f"sqlite:///{tmp_path}/m.db", port=port)
    with pytest.raises(ConfigError, match="not a database or folder"):
        bm.tracking.start_server(backend_store_uri="redis://localhost:6379", port=free_port())
    with pytest.raises(ConfigError, match="does not exist"):
        bm.tracking.start_server(backend_store_uri=f"sqlite:///{tmp_path}/nowhere/m.db", port=free_port())
    if _pg_driver_missing() is None:
        dead = free_port()
        with pytest.raises(ConfigError, match=rf"Cannot connect to --backend-store-uri postgresql://bm:\*\*\*@127.0.0.1:{dead}/db"):
            bm.tracking.start_server(backend_store_uri=f"postgresql://bm:secret@127.0.0.1:{dead}/db", port=free_port())
    assert not list(tmp_path.iterdir())


def test_cli_server_error_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("server", "--port", str(port), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: Port {port} on 127.0.0.1 is in use")
    assert not list(tmp_path.iterdir())


def test_ui_refuses_a_missing_store_or_experiment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"No MLflow store at {tmp_path / 'mlflow.db'}"):
        bm.tracking.start_ui(port=free_port())
    assert not (tmp_path / "mlflow.db").exists()  # `mlflow ui` would have created an empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    setup_mlflow()
    get_or_create_experiment("present")
    with pytest.raises(ConfigError, match=r"No experiment 'absent' .* \(have: present, Default\)"):
        bm.tracking.start_ui("absent", port=free_port())
