"""The command line as a user runs it: exit codes, one-line errors, and the main commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
from typer.testing import CliRunner

from biomarkers.cli import app

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "anti_tnf_default.yaml"
runner = CliRunner()


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed entry point (exit codes and stderr exactly as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600, check=False,
    )  # fmt: skip


def test_help_lists_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("run", "predict", "compare", "ui", "features", "data", "signatures", "discover"):
        assert cmd in res.output


def test_dry_run_prints_resolved_config(tmp_path):
    res = cli("run", str(DEFAULT), "--dry-run", "--set", "cv.n_splits=4", "--set", "data.simulate.n_patients=12",
              "--set", "data.simulate.cells_per_patient=60", "--set", "data.simulate.n_genes=400", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "n_splits: 4" in res.stdout
    assert "config and data are valid" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "missing.yaml"], "Config file not found"),
        (["run", str(DEFAULT), "--set", "cv.n_splitz=3", "--dry-run"], "no key 'n_splitz'"),
        (["run", str(DEFAULT), "--set", "cv.n_splits=zero", "--dry-run"], "cv.n_splits"),
        (["predict", "nowhere.h5ad", "--model", "models:/nope@champion"], "Input not found"),
        (["predict", str(DEFAULT), "--model", "models:/nope@champion"], "Model models:/nope@champion not found"),
        (["signatures", "show", "NOT_A_SET"], "NOT_A_SET"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, expected):
    res = cli(*args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in res.stderr


def test_debug_shows_traceback(tmp_path):
    res = cli("--debug", "run", "missing.yaml", cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" in res.stderr


def test_data_simulate_writes_valid_h5ad(tmp_path):
    out = tmp_path / "c.h5ad"
    res = runner.invoke(app, ["data", "simulate", "--patients", "6", "--cells-per-patient", "50", "--genes", "400", "--out", str(out)])
    assert res.exit_code == 0, res.output
    a = ad.read_h5ad(out)
    assert {"patient_id", "sample_id", "response", "batch", "severity"} <= set(a.obs.columns)
    assert "truth" in a.uns
    assert (a.X.data == a.X.data.round()).all()


def test_signatures_list_and_show():
    res = runner.invoke(app, ["signatures", "list"])
    assert res.exit_code == 0
    assert "AQP9_INFLAMMATORY_MACROPHAGE" in res.output
    res = runner.invoke(app, ["signatures", "show", "OSM_RESPONSE"])
    assert "Jiang et al. 2021" in res.output
    assert "SOCS3" in res.output


def test_compare_on_empty_store(tmp_path, mlflow_store):
    res = runner.invoke(app, ["compare"])
    assert res.exit_code == 0
    assert "No runs yet" in res.output
