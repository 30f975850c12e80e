"""The HTML report: built from a real tiny run's MLflow records, parsed with the stdlib, figures decoded."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

import biomarkers as bm
from biomarkers._errors import BiomarkersError
from biomarkers.cli import app
from biomarkers.tracking._report import NOT_RECORDED, PNG_MAGIC, SECTIONS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FAST = [
    "data.simulate.n_patients=16",
    "data.simulate.cells_per_patient=150",
    "data.simulate.n_genes=600",
    "cv.n_splits=3",
    "cv.n_repeats=1",
    "evaluation.n_boot=200",
    "evaluation.n_permutations=5",
    "models.1.params.n_estimators=50",
    "plots.umap=true",
    "plots.umap_max_cells=500",
    "registry.enabled=false",  # the report reads runs, not the registry
]


class _Doc(HTMLParser):
    """Sections (id -> h2 text, text), every <img> src and every table row's cell texts, by section."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, str]] = {}
        self.imgs: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self._sec: str | None = None
        self._in_h2 = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._sec = a.get("id") or ""
            self.sections[self._sec] = {"h2": "", "text": ""}
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.imgs.append(a.get("src") or "")
        elif tag == "tr":
            self._row = []
            self.row_classes.setdefault(self._sec or "", []).append(a.get("class") or "")
        elif tag in {"td", "th"}:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._sec = None
        elif tag == "h2":
            self._in_h2 = False
        elif tag in {"td", "th"} and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._sec or "", []).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._sec is not None:
            self.sections[self._sec]["text"] += data
            if self._in_h2:
                self.sections[self._sec]["h2"] += data
        if self._cell is not None:
            self._cell.append(data)

    def value(self, section: str, item: str) -> str:
        """The value cell of an ``item | value`` row in ``section``."""
        return next(r[1] for r in self.rows[section] if r and r[0] == item)


def parse(html: str) -> _Doc:
    doc = _Doc()
    doc.feed(html)
    doc.close()
    return doc


@pytest.fixture(scope="module")
def store(module_store):
    return module_store


@pytest.fixture(scope="module")
def finished_run(store):
    return bm.run_experiment(bm.load_config(EXPERIMENTS / "anti_tnf_default.yaml", overrides=FAST))


@pytest.fixture(scope="module")
def report(finished_run):
    return bm.tracking.build_report(finished_run.parent_run_id)


def test_every_section_has_its_heading_and_every_figure_is_an_embedded_png(report):
    doc = parse(report)
    for sid in SECTIONS:
        assert sid in doc.sections, sid
        assert doc.sections[sid]["h2"].strip(), f"section {sid} has no <h2>"
    # roc_pr, calibration, decision curve, heatmap, UMAP and the selected model's importance
    assert len(doc.imgs) >= 6
    for src in doc.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    # self-contained: nothing is fetched from elsewhere
    assert "<script" not in report
    assert "<link" not in report
    assert "http://" not in report
    assert "https://" not in report


def test_candidates_table_lists_every_child_run_and_bolds_the_selected(finished_run, report):
    doc = parse(report)
    client = mlflow.MlflowClient()
    parent = client.get_run(finished_run.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{finished_run.parent_run_id}'"
    )
    assert {c.info.run_name for c in children} == set(finished_run.child_runs)
    listed = {r[0].removesuffix(" (selected)"): r for r in doc.rows["models"] if r and r[0] != "model"}
    for child in children:
        assert child.info.run_name in listed, child.info.run_name
        assert listed[child.info.run_name][-1] == child.info.run_id
    best = finished_run.evaluation.best_model
    selected = [r[0] for r, cls in zip(doc.rows["models"], doc.row_classes["models"], strict=True) if cls == "selected"]
    assert selected == [f"{best} (selected)"]
    nested = finished_run.evaluation.nested_metrics["auroc"]
    assert doc.value("models", "nested CV AUROC (choose-then-fit procedure)").startswith(f"{nested:.3f}")


def test_cohort_numbers_match_the_run(finished_run, report):
    doc = parse(report)
    labels = finished_run.cohort.labels
    assert doc.value("cohort", "patients") == str(len(finished_run.cohort.features))
    assert doc.value("cohort", "labels") == f"{int(labels.sum())} non_responder / {int((labels == 0).sum())} responder"
    assert doc.value("cohort", "data digest (sha256)") == finished_run.cohort.digest
    cells = int(finished_run.cohort.features["n_cells"].sum())
    assert doc.value("cohort", "cells kept by QC").startswith(str(cells))
    families = {r[0]: int(r[1]) for r in doc.rows["features"] if r and r[0].endswith("__")}
    assert families["prop__"] == sum(c.startswith("prop__") for c in finished_run.cohort.features.columns)
    card = doc.sections["model-card"]["text"]
    for item in (
        "Data source",
        "Outcome",
        "Predictors",
        "Sample size",
        "Missing data",
        "Evaluation",
        "Intended use",
        "Limitations",
    ):
        assert item in card
    assert "simulated" in card
    assert "not a clinical device" in card


def test_log_report_adds_the_artifact(finished_run):
    client = mlflow.MlflowClient()
    bm.tracking.log_report(finished_run.parent_run_id)
    assert "report.html" in {a.path for a in client.list_artifacts(finished_run.parent_run_id)}
    text = mlflow.artifacts.load_text(f"runs:/{finished_run.parent_run_id}/report.html")
    assert set(SECTIONS) <= set(parse(text).sections)


def test_cli_writes_the_same_report(finished_run, report, tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", finished_run.parent_run_id, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == report


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from biomarkers.cli import main; main()", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120, check=False,
    )  # fmt: skip


def test_cli_bad_run_id_is_one_line_exit_2_and_writes_nothing(finished_run, store, tmp_path):
    out = tmp_path / "r.html"
    res = _cli("report", "0123456789abcdef", "-o", str(out), env={"MLFLOW_TRACKING_URI": store})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: Run '0123456789abcdef' not found")
    assert not out.exists()


def test_a_child_run_id_names_its_parent(finished_run):
    name, child = next(iter(finished_run.child_runs.items()))
    with pytest.raises(BiomarkersError, match=f"child run \\({name}\\) of parent run {finished_run.parent_run_id}"):
        bm.tracking.build_report(child)


def test_a_run_with_missing_artifacts_says_not_recorded(finished_run, tmp_path):
    client = mlflow.MlflowClient()
    exp_id = client.get_run(finished_run.parent_run_id).info.experiment_id
    # A bare run (as an older version or another tool might leave), with a hostile string in a tag.
    bare = client.create_run(exp_id, run_name="bare", tags={"data_source": "<script>alert(1)</script>"})
    client.set_terminated(bare.info.run_id)
    html = bm.tracking.build_report(bare.info.run_id)
    doc = parse(html)
    assert set(SECTIONS) <= set(doc.sections)
    assert doc.imgs == []
    for sid in ("cohort", "features", "models", "calibration", "importance", "umap"):
        assert NOT_RECORDED in doc.sections[sid]["text"], sid
    assert "<script>" not in html
    assert "&lt;script&gt;" in html

    # Some artifacts only: the tables that were recorded render, the figures that were not say so.
    partial = client.create_run(exp_id, run_name="partial")
    src = Path(
        mlflow.artifacts.download_artifacts(f"runs:/{finished_run.parent_run_id}/metrics.csv", dst_path=str(tmp_path))
    )
    client.log_artifact(partial.info.run_id, str(src))
    client.log_metric(partial.info.run_id, "nested_cv_auroc", 0.7)
    doc = parse(bm.tracking.build_report(partial.info.run_id))
    names = {r[0] for r in doc.rows["models"]}
    assert set(finished_run.child_runs) <= names
    assert doc.value("models", "nested CV AUROC (choose-then-fit procedure)") == "0.700"
    assert "ROC and PR curves (out-of-fold): " + NOT_RECORDED in doc.sections["models"]["text"]
    assert doc.imgs == []


def _predictions(*, flags: bool) -> pd.DataFrame:
    t = pd.DataFrame(
        {
            "patient_id": ["P1", "<P2>", "P3"],
            "p_non_response": [0.12, 0.55, 0.91],
            "prediction": ["responder", "non_responder", "non_responder"],
            "n_cells": [500, 420, 390],
            "n_samples": [1, 1, 2],
        }
    )
    if flags:
        t["flags"] = ["", "no_stroma;out_of_range:prop__macrophage", ""]
        t["reason"] = ["low AQP9+ macrophages", "high OSM response", "high AQP9+ macrophages"]
        t["top_features"] = ["aqp9_macrophage_fraction", "sig__stroma__OSM_RESPONSE", "aqp9_macrophage_fraction"]
        t["contrib__aqp9_macrophage_fraction"] = [-0.8, 0.2, 1.4]
        t["pctl__aqp9_macrophage_fraction"] = [10.0, 55.0, 95.0]
    return t


@pytest.mark.parametrize("flags", [False, True])
def test_predictions_report(flags):
    info = {
        "name": "anti-tnf-nonresponse",
        "version": "3",
        "threshold": 0.4,
        "uri": "models:/anti-tnf-nonresponse@champion",
    }
    html = bm.tracking.predictions_report(_predictions(flags=flags), model_info=info)
    doc = parse(html)
    assert doc.value("model", "version") == "3"
    assert doc.value("model", "threshold") == "0.400"
    [src] = doc.imgs
    assert base64.b64decode(src.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    header = doc.rows["patients"][0]
    assert header[:5] == ["patient_id", "p_non_response", "prediction", "n_cells", "n_samples"]
    assert ("flags" in header) is flags
    assert ("reason" in header) is flags
    assert [r[0] for r in doc.rows["patients"][1:]] == ["P1", "<P2>", "P3"]
    assert "&lt;P2&gt;" in html
    assert ("explanations" in doc.sections) is flags
    if flags:
        assert doc.row_classes["patients"][1:] == ["", "flagged", ""]
        assert '<span class="flag">no_stroma</span>' in html
        assert "1 of 3 patients flagged" in doc.sections["summary"]["text"]
        assert "contrib__aqp9_macrophage_fraction" in doc.rows["explanations"][0]
    else:
        assert 'class="flag"' not in html


def test_leave_one_cohort_out_table(finished_run, tmp_path):
    client = mlflow.MlflowClient()
    exp_id = client.get_run(finished_run.parent_run_id).info.experiment_id
    run = client.create_run(exp_id, run_name="loco")
    table = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "cohort": ["X", "Y", "X", "Y"],
            "n": [10, 12, 10, 12],
            "auroc": [0.7, float("nan"), 0.6, 0.5],
        }
    ).assign(auroc_ci_low=lambda d: d["auroc"] - 0.2, auroc_ci_high=lambda d: d["auroc"] + 0.2)
    table.to_csv(tmp_path / "cohort_metrics.csv", index=False)
    client.log_artifact(run.info.run_id, str(tmp_path / "cohort_metrics.csv"))
    client.log_param(run.info.run_id, "cv.strategy", "leave_one_cohort_out")
    doc = parse(bm.tracking.build_report(run.info.run_id))
    rows = [r for r in doc.rows["models"] if r and r[0] in {"model", "a", "b"}][-3:]
    assert rows == [
        ["model", "X (n=10)", "Y (n=12)"],
        ["a", "0.700 [0.50-0.90]", "n/a"],
        ["b", "0.600 [0.40-0.80]", "0.500 [0.30-0.70]"],
    ]
    assert "leave-one-cohort-out" in doc.sections["model-card"]["text"]
