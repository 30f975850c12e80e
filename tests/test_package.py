"""API conventions for every public name (scanpy's test_package_structure, adapted)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import biomarkers as bm

SUBPACKAGES = ["datasets", "io", "preprocess", "signatures", "features", "models", "config", "tracking", "discovery", "compute"]


def _public():
    seen = {}
    for name in bm.__all__:
        if name != "__version__":
            seen[f"biomarkers.{name}"] = getattr(bm, name)
    for sub in SUBPACKAGES:
        mod = importlib.import_module(f"biomarkers.{sub}")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if callable(obj) or inspect.isclass(obj):
                seen[f"biomarkers.{sub}.{name}"] = obj
    return seen


PUBLIC = _public()
FUNCTIONS = {k: v for k, v in PUBLIC.items() if inspect.isfunction(v)}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_has_docstring(name):
    assert inspect.getdoc(PUBLIC[name]), f"{name} has no docstring"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_at_most_three_positional_and_no_positional_booleans(name):
    params = inspect.signature(FUNCTIONS[name]).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 3, f"{name}: {len(positional)} positional arguments"
    for p in positional:
        assert not (isinstance(p.default, bool)), f"{name}: boolean {p.name} must be keyword-only"
    copy = [p for p in params if p.name == "copy"]
    assert all(p.kind == p.KEYWORD_ONLY for p in copy), f"{name}: copy must be keyword-only"


def test_import_is_light():
    # `import biomarkers` and `biomarkers --help` must not pull in scanpy, mlflow or lightgbm.
    code = "import sys, biomarkers; print(sorted(m for m in ('scanpy', 'mlflow', 'lightgbm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
