"""The champion alias: versions compete only on the same input kind and candidate features.

Unit tests call :func:`promote_if_better` on model versions registered directly (no training) in a real SQLite
store; one end-to-end run checks that a config without ``registry.model_name`` registers under the experiment name.
"""

from __future__ import annotations

import itertools

import mlflow
import pytest

import biomarkers as bm
from biomarkers.config import ExperimentConfig
from biomarkers.tracking._registry import Promotion, feature_schema, promote_if_better

FEATURES = ("prop__CD8_T", "aqp9_macrophage_fraction", "sig__MNP__OSM_RESPONSE")
_names = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """An MlflowClient on one SQLite store for the module; each test registers under a name of its own."""
    tmp = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("BIOMARKERS_ARTIFACT_ROOT", str(tmp / "mlruns"))
        c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.source = tmp.as_uri()  # type: ignore[attr-defined]
        yield c


def new_model(client) -> str:
    name = f"model-{next(_names)}"
    client.create_registered_model(name)
    return name


def register(
    client, name: str, auroc: float | None, *, kind: str | None = "single_cell", features=FEATURES, fmt: str | None = "2"
) -> str:
    """A version of ``name`` tagged as ``run_experiment`` tags it (``None`` leaves a tag out)."""
    tags = {"nested_cv_auroc": None if auroc is None else f"{auroc:.6f}", "kind": kind, "format_version": fmt}
    if features is not None:
        tags |= {"feature_schema": feature_schema(features), "n_candidate_features": str(len(features))}
    mv = client.create_model_version(name, source=client.source, tags={k: v for k, v in tags.items() if v is not None})
    return str(mv.version)


def champion(client, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def promote(client, name: str, version: str, auroc: float) -> Promotion:
    return promote_if_better(client, name, alias="champion", version=version, cv_auroc=auroc)


@pytest.fixture
def held(client):
    """A model whose champion is version 1 (single_cell, FEATURES, CV AUROC 0.75)."""
    name = new_model(client)
    first = promote(client, name, register(client, name, 0.75), 0.75)
    assert first == Promotion(None, "1", moved=True, reason=first.reason, compared_with=None)
    assert "no champion yet" in first.reason
    return name


def test_feature_schema_ignores_column_order():
    assert feature_schema(FEATURES) == feature_schema(reversed(FEATURES))
    assert feature_schema(FEATURES) != feature_schema(FEATURES[:2])


def test_better_version_takes_the_alias(client, held):
    p = promote(client, held, register(client, held, 0.8), 0.8)
    assert (p.previous, p.current, p.moved, p.compared_with) == ("1", "2", True, "1")
    assert (
        p.reason
        == "version 2 becomes champion: nested CV AUROC 0.800 > 0.750 of version 1 (same kind single_cell, same 3 candidate features)"
    )
    assert champion(client, held) == "2"


@pytest.mark.parametrize("auroc", [0.7, 0.75, 0.75 + 1e-9], ids=["worse", "tie", "tie_at_tag_precision"])
def test_worse_or_tied_version_leaves_the_alias(client, held, auroc):
    p = promote(client, held, register(client, held, auroc), auroc)
    assert (p.previous, p.current, p.moved, p.compared_with) == ("1", "1", False, "1")
    assert p.reason.startswith(f"champion stays at version 1: nested CV AUROC 0.750 >= {auroc:.3f} (same kind single_cell")
    assert champion(client, held) == "1"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"kind": "bulk"}, "champion version 1 was trained on kind=single_cell (this version: bulk)"),
        (
            {"features": ("gz__IL6", "gz__PTGS2")},
            "champion version 1 was trained on other candidate features (3 columns; this version: 2)",
        ),
        ({"features": (*FEATURES, "pb__MNP__OSM")}, "other candidate features (3 columns; this version: 4)"),
    ],
    ids=["kind", "features", "one_more_feature"],
)
def test_incomparable_version_leaves_the_alias_and_says_why(client, held, changes, why):
    p = promote(client, held, register(client, held, 0.99, **changes), 0.99)
    assert (p.previous, p.current, p.moved, p.compared_with) == ("1", "1", False, None)
    assert p.reason.startswith("not compared: ")
    assert why in p.reason
    assert p.reason.endswith("; pick another registry.model_name")
    assert champion(client, held) == "1"


@pytest.mark.parametrize(
    ("changes", "missing"),
    [
        ({"features": None}, "feature_schema"),
        ({"kind": None}, "kind"),
        ({"kind": None, "features": None}, "kind/feature_schema"),
    ],
)
def test_champion_without_input_tags_is_not_compared(client, changes, missing):
    name = new_model(client)
    client.set_registered_model_alias(name, "champion", register(client, name, 0.5, **changes))  # an older version
    p = promote(client, name, register(client, name, 0.9), 0.9)
    assert (p.current, p.moved, p.compared_with) == ("1", False, None)
    assert f"champion version 1 has no {missing} tag" in p.reason
    assert champion(client, name) == "1"


def test_a_champion_of_an_older_model_format_is_replaced(client):
    # A v0.1 (format 1, untagged) champion can no longer predict from cells: a retrained version takes the alias
    # even with a lower CV AUROC, and the reason says why.
    name = new_model(client)
    client.set_registered_model_alias(name, "champion", register(client, name, 0.95, kind=None, features=None, fmt=None))
    p = promote(client, name, register(client, name, 0.7), 0.7)
    assert (p.previous, p.current, p.moved) == ("1", "2", True)
    assert "registered in model format 1" in p.reason
    assert champion(client, name) == "2"


def test_comparable_champion_without_nested_auroc_is_replaced(client):
    # A v0.1 champion has only the selected model's own (optimistic) cv_auroc: not comparable with a nested one.
    name = new_model(client)
    old = client.create_model_version(
        name, source=client.source,
        tags={"cv_auroc": "0.990000", "kind": "single_cell", "format_version": "2",
              "feature_schema": feature_schema(FEATURES), "n_candidate_features": str(len(FEATURES))},
    )  # fmt: skip
    client.set_registered_model_alias(name, "champion", str(old.version))
    p = promote(client, name, register(client, name, 0.6), 0.6)
    assert (p.previous, p.current, p.moved, p.compared_with) == ("1", "2", True, "1")
    assert "version 1 has no nested CV AUROC" in p.reason


def test_majority_or_clinical_only_winner_is_registered_but_never_champion(client):
    name = new_model(client)
    client.set_registered_model_alias(name, "champion", register(client, name, 0.7))
    p = promote_if_better(client, name, alias="champion", version=register(client, name, 0.9), cv_auroc=0.9,
                          blocked="the clinical-only model won")  # fmt: skip
    assert (p.previous, p.current, p.moved) == ("1", "1", False)
    assert "never promoted: the clinical-only model won" in p.reason
    assert champion(client, name) == "1"
    fresh = new_model(client)
    q = promote_if_better(client, fresh, alias="champion", version=register(client, fresh, 0.9), cv_auroc=0.9,
                          blocked="the majority baseline won")  # fmt: skip
    assert not q.moved
    assert "no champion is set" in q.reason


# --- end to end: the default registry name is the experiment name -------------------------------------------------

TINY = {
    "name": "registry-default-name",
    "preprocess": {"min_genes": 20, "min_counts": 50},
    "features": {"families": ["aqp9_macrophage_fraction", "proportions", "n_cells"]},
    "models": [{"kind": "logreg"}],
    "cv": {"n_splits": 2, "n_repeats": 1},
    "evaluation": {"n_boot": 100, "n_permutations": 0},
    "baselines": {"majority": False},  # on 12 patients the majority can win, and it never becomes champion
    "plots": {"umap": False},
}


def test_config_without_model_name_registers_under_the_experiment_name(mlflow_store, capsys):
    from biomarkers.cli._run import _print_summary

    cells = bm.simulate_cohort(n_patients=12, cells_per_patient=60, n_genes=400, seed=0)
    cfg = ExperimentConfig.model_validate(TINY)
    assert cfg.registry.model_name is None
    res = bm.run_experiment(cfg, adata=cells.copy())
    assert res.model_uri == "models:/registry-default-name/1"
    assert res.became_champion
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("registry-default-name", "champion")
    assert mv.tags["kind"] == "single_cell"
    assert mv.tags["feature_schema"] == feature_schema(res.cohort.features.columns)
    assert mv.tags["n_candidate_features"] == str(res.cohort.features.shape[1])
    parent = client.get_run(res.parent_run_id)
    assert parent.data.tags["champion_decision"] == res.promotion.reason
    _print_summary(res)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"Registered model: models:/registry-default-name/1 ({res.promotion.reason})" in out

    # Same registry name, other candidate features: registered, but not compared with the champion.
    other = ExperimentConfig.model_validate({**TINY, "features": {"families": ["proportions", "n_cells"]}})
    res2 = bm.run_experiment(other, adata=cells.copy())
    assert res2.model_uri == "models:/registry-default-name/2"
    assert not res2.became_champion
    assert res2.champion_version == "1"
    assert res2.promotion.reason.startswith("not compared: champion version 1 was trained on other candidate features")
    assert client.get_run(res2.parent_run_id).data.tags["champion_decision"] == res2.promotion.reason
    _print_summary(res2)
    out = capsys.readouterr().out
    assert f"Registered model: models:/registry-default-name/2 ({res2.promotion.reason})" in " ".join(out.split())
    print(out)  # shown with -s: the summary users see
