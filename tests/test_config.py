from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import biomarkers as bm
from biomarkers._errors import ConfigError
from biomarkers.config import ExperimentConfig, dump_config, flatten

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = bm.load_config(path)
    assert cfg.name


def test_template_lists_every_top_level_key():
    raw = yaml.safe_load((EXPERIMENTS / "_template.yaml").read_text())
    assert set(raw) == set(ExperimentConfig.model_fields)


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\ncv: {n_split: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'cv\.n_split'"):
        bm.load_config(p)


def test_wrong_type_is_an_error(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\ncv: {n_splits: five}\n")
    with pytest.raises(ConfigError, match=r"cv\.n_splits"):
        bm.load_config(p)


def test_overrides_are_revalidated():
    cfg = bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=["cv.n_splits=3", "models.0.params.C=0.5"])
    assert cfg.cv.n_splits == 3
    assert cfg.models[0].params["C"] == 0.5
    with pytest.raises(ConfigError, match=r"cv\.n_splits"):
        bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=["cv.n_splits=1"])


@pytest.mark.parametrize("override", ["cv.n_splitz=3", "nope=1", "models.7.params.C=1", "cv"])
def test_override_of_missing_key_is_an_error(override):
    with pytest.raises(ConfigError, match="--set"):
        bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=[override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        bm.load_config(tmp_path / "none.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        bm.load_config(p)


def test_relative_paths_resolve_against_the_config(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "x.yaml"
    p.write_text("name: x\ndata: {path: ../cohort.h5ad}\n")
    assert bm.load_config(p).data.path == (tmp_path / "cohort.h5ad").resolve()


@settings(max_examples=25, deadline=None)
@given(n_splits=st.integers(2, 10), n_repeats=st.integers(1, 10), seed=st.integers(0, 2**31), c=st.floats(0.001, 100))
def test_config_round_trips_yaml(n_splits, n_repeats, seed, c):
    cfg = ExperimentConfig(name="rt", cv={"n_splits": n_splits, "n_repeats": n_repeats}, seed=seed, models=[{"kind": "logreg", "params": {"C": c}}])
    again = ExperimentConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_flatten_for_mlflow_params():
    flat = flatten(ExperimentConfig(name="x").model_dump(mode="json"))
    assert flat["cv.n_splits"] == "5"
    assert flat["models.2.kind"] == "lightgbm"
    assert all(len(k) < 250 for k in flat)
