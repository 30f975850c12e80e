"""``mlflow models serve`` on the registered champion answers a scoring request, one row per patient."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import biomarkers as bm

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
MODEL = "models:/anti-tnf-nonresponse@champion"
TINY = [
    "data.simulate.n_patients=12",
    "data.simulate.cells_per_patient=100",
    "data.simulate.n_genes=600",
    "cv.n_splits=2",
    "cv.n_repeats=1",
    "evaluation.n_boot=100",
    "evaluation.n_permutations=0",
    "models=[{kind: lightgbm, params: {n_estimators: 20}}]",
    "baselines.majority=false",
    "baselines.single_features=[]",
    "plots.umap=false",
]
STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(tmp / "mlruns"))
        yield uri, bm.run_experiment(bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=TINY))


def test_models_serve_scores_one_row_per_patient(registered, tmp_path):
    uri, run = registered
    port = _free_port()
    bindir = str(Path(sys.executable).parent)  # the server execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, (
                f"no answer in {STARTUP_S} s:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
            time.sleep(0.5)

        features = run.cohort.features  # patients x features
        body = {"dataframe_split": json.loads(features.to_json(orient="split"))}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            rows = json.loads(r.read())["predictions"]
    finally:
        _stop(server)
        log.close()

    assert len(rows) == len(features)
    assert {k for row in rows for k in row} == {"p_non_response", "prediction"}
    here = bm.prediction.load_model(MODEL)[1].predict_features(features)  # the same model, in process
    np.testing.assert_allclose([row["p_non_response"] for row in rows], here["p_non_response"], rtol=0, atol=1e-9)  # JSON: 10 digits
    assert [row["prediction"] for row in rows] == here["prediction"].tolist()


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the CLI and the uvicorn it execs), SIGKILL it if still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # the CLI is gone; nothing else in its group may linger
            os.killpg(server.pid, signal.SIGKILL)
        return
