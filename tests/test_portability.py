"""Registered models load where ``biomarkers`` is not installed; output files get the user's permissions.

The clean environment is a new venv (no system site packages) holding exactly the distributions that the
model's ``requirements.txt`` pulls in (its pins plus their dependencies), symlinked from this venv: what
``pip install -r requirements.txt`` would give, built offline. ``biomarkers`` is not among them, nor is the
checkout on ``sys.path``, so the model can only load through the code it carries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    "features.clinical=[]",  # LightGBM is the only candidate: the champion
    "plots.umap=false",
]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A LightGBM champion in a fresh SQLite store: (tracking URI, run result)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(tmp / "mlruns"))
        yield uri, bm.run_experiment(bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=TINY))


def _closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the requirements and everything they depend on, as installed here."""
    seen: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        extras = sorted(req.extras)
        key = f"{name}[{','.join(extras)}]"
        if key in seen:
            continue
        seen.add(key)
        for sub in metadata.requires(req.name) or []:
            todo.extend((Requirement(sub), e) for e in ["", *extras])
    return {k.partition("[")[0] for k in seen}


def _clean_env(root: Path, requirements: list[Requirement]) -> Path:
    """A new venv whose site-packages holds only the distributions the requirements pull in; returns its python."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    src = Path(sysconfig.get_paths()["purelib"])
    dst = root / src.relative_to(sys.prefix)
    wanted = _closure(requirements)
    allowed: set[Path] = set()  # files (site-packages relative) of wanted distributions, and their directories
    blocked: set[Path] = set()  # directories that also hold files of other distributions
    for dist in metadata.distributions(path=[str(src)]):
        keep = canonicalize_name(dist.metadata["Name"]) in wanted
        for f in dist.files or []:
            if f.parts[0] == "..":
                continue
            rel = Path(f)
            if keep:
                allowed.update([rel, *rel.parents])
            else:
                blocked.update(rel.parents)

    def mirror(rel: Path) -> None:
        for entry in os.scandir(src / rel):
            r = rel / entry.name
            if r in blocked and r in allowed:
                (dst / r).mkdir()
                mirror(r)
            elif r in allowed:
                (dst / r).symlink_to(entry.path)

    mirror(Path())
    return root / "bin" / "python"


SCRIPT = """
import importlib.util, json, sys
from importlib.metadata import version
import mlflow, pandas as pd
from packaging.requirements import Requirement
assert importlib.util.find_spec("biomarkers") is None, "biomarkers is installed in the clean environment"
reqs = [Requirement(r) for r in open(sys.argv[1]).read().split()]
bad = [f"{r} (have {version(r.name)})" for r in reqs if not r.specifier.contains(version(r.name))]
assert not bad, bad
pyfunc = mlflow.pyfunc.load_model(sys.argv[2])
features = pd.read_parquet(sys.argv[3])
p = pyfunc.predict(features)["p_non_response"].tolist()
import biomarkers as bm
cells = bm.simulate_cohort(n_patients=4, cells_per_patient=100, n_genes=600, seed=1)
from_cells = pyfunc.predict(pyfunc.unwrap_python_model().features_from_cells(cells))["p_non_response"].tolist()
print(json.dumps({"p": p, "from_cells": from_cells, "biomarkers": bm.__file__}))
"""


def test_registered_model_loads_in_a_clean_environment_from_its_requirements(registered, tmp_path):
    uri, run = registered
    local = Path(mlflow.artifacts.download_artifacts(MODEL, dst_path=str(tmp_path / "model")))
    lines = (local / "requirements.txt").read_text().split()
    reqs = [Requirement(r) for r in lines]
    names = {canonicalize_name(r.name) for r in reqs}
    assert "biomarkers" not in names
    assert {"scikit-learn", "scanpy", "anndata", "mlflow", "cloudpickle", "pandas", "numpy"} <= names
    # LightGBM is listed exactly when the registered (selected) model is a LightGBM model
    assert ("lightgbm" in names) == (run.evaluation.specs[run.evaluation.best_model]["kind"] == "lightgbm")
    assert all(str(r.specifier).startswith("==") for r in reqs), lines
    assert (local / "code" / "biomarkers" / "tracking" / "_pyfunc.py").is_file()

    python = _clean_env(tmp_path / "env", reqs)
    features = run.cohort.features
    features.to_parquet(tmp_path / "f.parquet")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(
        [python, "-c", SCRIPT, str(local / "requirements.txt"), MODEL, str(tmp_path / "f.parquet")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mismatches between the model's dependencies" not in out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "/code/biomarkers/" in got["biomarkers"]  # imported from the code the model carries
    assert not got["biomarkers"].startswith(str(Path(bm.__file__).parent))

    pyfunc = mlflow.pyfunc.load_model(MODEL)
    np.testing.assert_array_equal(got["p"], pyfunc.predict(features)["p_non_response"])
    cells = bm.simulate_cohort(n_patients=4, cells_per_patient=100, n_genes=600, seed=1)
    here = pyfunc.predict(pyfunc.unwrap_python_model().features_from_cells(cells))["p_non_response"]
    np.testing.assert_allclose(got["from_cells"], here, rtol=0, atol=1e-12)


def test_requirements_pin_what_the_model_needs_and_never_biomarkers():
    from biomarkers.models import fit_final
    from biomarkers.tracking import BiomarkerModel
    from biomarkers.tracking._run import _model_requirements

    X = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0)[::-1]})
    y = pd.Series([0, 1] * 5)
    names = {}
    for kind in ("logreg", "lightgbm"):
        params = {"n_estimators": 5, "min_child_samples": 2} if kind == "lightgbm" else {}
        spec = {"kind": kind, "params": params}
        model = BiomarkerModel(fit_final(spec, X, y), features=["a", "b"], threshold=0.5)
        reqs = [Requirement(r) for r in _model_requirements(model)]
        assert all(str(r.specifier) == f"=={metadata.version(r.name)}" for r in reqs)
        names[kind] = {canonicalize_name(r.name) for r in reqs}
    assert "biomarkers" not in names["logreg"] | names["lightgbm"]
    assert "lightgbm" not in names["logreg"]
    assert names["lightgbm"] - names["logreg"] == {"lightgbm"}
    assert {"scikit-learn", "numpy", "scipy", "pandas", "mlflow", "cloudpickle", "scanpy", "anndata"} <= names["logreg"]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    import anndata as ad

    from biomarkers._atomic import write_atomic, write_csv, write_h5ad

    old = os.umask(mask)
    try:
        paths = [
            write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv"),
            write_h5ad(ad.AnnData(np.ones((3, 2), dtype=np.float32)), tmp_path / "c.h5ad"),
            write_atomic(tmp_path / "sub" / "x.txt", lambda p: p.write_text("x")),
        ]
    finally:
        os.umask(old)
    for p in paths:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, (p, oct(p.stat().st_mode))
    assert not list(tmp_path.glob("**/.*.tmp"))
