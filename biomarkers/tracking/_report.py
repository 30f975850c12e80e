"""Self-contained HTML reports: a ``biomarkers run`` parent run (from MLflow alone) and a batch of predictions.

The run report reads only what the run logged (tags, params, metrics, artifacts, child runs), so it can be
rebuilt at any time, on any store, by anyone who can read the run. Every item the run did not record says
so ("not recorded in this run") instead of failing: older runs, bulk cohorts (no UMAP) and runs without
clinical covariates lack some artifacts. Figures are embedded as base64 PNGs and the CSS is inline, because
the MLflow UI shows ``.html`` artifacts in an iframe with no access to other files or the network.
"""

from __future__ import annotations

import ast
import base64
import html
import io
import logging
import os
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from biomarkers._errors import BiomarkersError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = logging.getLogger("biomarkers")

NOT_RECORDED = "not recorded in this run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("cohort", "features", "models", "calibration", "importance", "umap", "model-card")
REPORT_ARTIFACT = "report.html"
_METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("balanced_accuracy", "balanced acc."), ("brier", "Brier"))

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.selected td{font-weight:bold;background:#fff8e1}tr.flagged td{background:#fdecea}
span.flag{display:inline-block;background:#c62828;color:#fff;border-radius:3px;padding:0 5px;margin:1px;font-size:12px}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:10px 0}figcaption{color:#666;font-size:12px}
span.ci{white-space:nowrap}.nr{color:#8a6d3b;font-style:italic}.muted{color:#666;font-size:12px}code{font-size:12px}
dl.card dt{font-weight:bold;margin-top:8px}dl.card dd{margin:2px 0 0 16px}
"""


class _Raw(str):
    """A string that is already HTML (built here from escaped parts), so table cells do not escape it again."""

    __slots__ = ()


def _e(value: Any) -> str:
    return html.escape(str(value))


def _nr(what: str) -> _Raw:
    return _Raw(f'<span class="nr">{_e(what)}: {NOT_RECORDED}</span>')


def _num(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if v != v else f"{v:.{digits}f}"


def _ci(est: Any, low: Any, high: Any, *, signed: bool = False) -> str | _Raw:
    try:
        e, lo, hi = float(est), float(low), float(high)
    except (TypeError, ValueError):
        return _num(est)
    if e != e:
        return "n/a"
    text = f"{e:+.3f} [{lo:+.2f} to {hi:+.2f}]" if signed else f"{e:.3f} [{lo:.2f}-{hi:.2f}]"
    return _Raw(f'<span class="ci">{_e(text)}</span>')  # an estimate and its interval stay on one line


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, classes: Sequence[str] | None = None) -> str:
    """Return an HTML table; cells are escaped unless they are :class:`_Raw`, and numbers are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = []
        for v in row:
            numeric = isinstance(v, int | float) and not isinstance(v, bool)
            text = v if isinstance(v, _Raw) else _e(_num(v) if isinstance(v, float) else v)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    return _table(["item", "value"], list(rows))


def _img(data: bytes | None, *, alt: str) -> str:
    """Return an embedded PNG, or the "not recorded" line when the run has no such figure (or it is not a PNG)."""
    if not data or not data.startswith(PNG_MAGIC):
        return f"<p>{_nr(alt)}</p>"
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{src}" alt="{_e(alt)}"><figcaption>{_e(alt)}</figcaption></figure>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


class _RunFiles:
    """One run's artifacts, downloaded on demand into a temporary folder; absent or unreadable ones are None."""

    def __init__(self, client: MlflowClient, run_id: str, tmp: Path) -> None:
        self.client, self.run_id, self.tmp = client, run_id, tmp / run_id
        self.paths: set[str] = set()
        for folder in (None, "plots"):
            try:
                self.paths |= {a.path for a in client.list_artifacts(run_id, folder) if not a.is_dir}
            except Exception as e:  # noqa: BLE001 - any store error means "not recorded", never a failed report
                logger.debug("report: cannot list artifacts of %s/%s: %s", run_id, folder or "", e)

    def local(self, path: str) -> Path | None:
        if path not in self.paths:
            return None
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            return Path(self.client.download_artifacts(self.run_id, path, str(self.tmp)))
        except Exception as e:  # noqa: BLE001 - as above: an unreadable artifact is reported as not recorded
            logger.warning(
                "report: artifact %s of run %s not readable (%s); reported as not recorded", path, self.run_id, e
            )
            return None

    def csv(self, path: str, **kwargs: Any) -> pd.DataFrame | None:
        local = self.local(path)
        if local is None:
            return None
        try:
            return pd.read_csv(local, **kwargs)
        except (ValueError, OSError) as e:
            logger.warning("report: %s of run %s is not a readable CSV (%s)", path, self.run_id, e)
            return None

    def png(self, path: str) -> bytes | None:
        local = self.local(path)
        return local.read_bytes() if local is not None else None


class _Ctx:
    """Everything a section reads: the parent run, its files, its child runs (by run name) and their files."""

    def __init__(self, client: MlflowClient, run: Run, tmp: Path) -> None:
        self.run = run
        self.tags: dict[str, str] = dict(run.data.tags)
        self.params: dict[str, str] = dict(run.data.params)
        self.metrics: dict[str, float] = dict(run.data.metrics)
        self.files = _RunFiles(client, run.info.run_id, tmp)
        try:
            found = client.search_runs(
                [run.info.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                max_results=1000,
            )
        except Exception as e:  # noqa: BLE001 - a store that cannot search still gets a report of the parent
            logger.warning("report: child runs of %s not searchable (%s)", run.info.run_id, e)
            found = []
        self.children: dict[str, Run] = {c.info.run_name or c.info.run_id: c for c in found}
        self._client, self._tmp = client, tmp
        self.metrics_table = self.files.csv("metrics.csv", index_col=0)
        self.features = self.files.csv("features.csv", index_col=0)

    def child_files(self, name: str) -> _RunFiles | None:
        child = self.children.get(name)
        return _RunFiles(self._client, child.info.run_id, self._tmp) if child is not None else None

    def param(self, key: str) -> str | None:
        v = self.params.get(key)
        return None if v in (None, "None", "") else v

    def param_list(self, key: str) -> list[str]:
        v = self.param(key)
        if v is None:
            return []
        try:
            out = ast.literal_eval(v)  # flattened config params are Python reprs of lists
        except (ValueError, SyntaxError):
            return [v]
        return [str(x) for x in out] if isinstance(out, list | tuple) else [str(out)]

    @property
    def selected(self) -> str | None:
        return self.tags.get("selected_model") or self.tags.get("best_model")

    def label_counts(self) -> tuple[int, int] | None:
        """(non-responders, responders) from features.csv's label column, else from metrics.csv's n / n_positive."""
        if self.features is not None and "label" in self.features:
            y = self.features["label"].dropna()
            return int((y == 1).sum()), int((y == 0).sum())
        t = self.metrics_table
        if t is not None and {"n", "n_positive"} <= set(t.columns) and len(t):
            n, pos = int(t["n"].iloc[0]), int(t["n_positive"].iloc[0])
            return pos, n - pos
        return None

    def feature_names(self) -> list[str]:
        return [] if self.features is None else [str(c) for c in self.features.columns if c != "label"]


def _families(names: Sequence[str]) -> dict[str, list[str]]:
    """Feature names by family prefix (``prop__``, ``sig__``, ...); a name without ``__`` is its own family."""
    out: dict[str, list[str]] = {}
    for n in names:
        fam = n.split("__", 1)[0] + "__" if "__" in n else "unprefixed"
        out.setdefault(fam, []).append(n)
    return out


def _header(ctx: _Ctx, experiment: str) -> str:
    info = ctx.run.info
    started = (
        datetime.fromtimestamp(info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        if info.start_time
        else "?"
    )
    rows = [
        ("experiment", experiment),
        ("run", f"{info.run_name} ({info.run_id})"),
        ("started", started),
        ("biomarkers version", ctx.tags.get("bm.version", NOT_RECORDED)),
        ("git commit", ctx.tags.get("git_sha", NOT_RECORDED)),
        ("registered model", ctx.tags.get("registered_model", NOT_RECORDED)),
        ("champion decision", ctx.tags.get("champion_decision", NOT_RECORDED)),
    ]
    if info.status != "RUNNING":  # a report logged by the run itself is written while the run is still open
        rows.insert(3, ("status", info.status))
    return (
        f"<h1>Anti-TNF non-response biomarkers: {_e(experiment)}</h1>"
        '<p class="muted">Built only from what this MLflow run recorded; rebuild with '
        f"<code>biomarkers report {_e(info.run_id)}</code>.</p>{_kv(rows)}"
    )


def _cohort(ctx: _Ctx) -> str:
    t = ctx.tags
    n_pat = t.get("n_patients") or (f"{ctx.metrics['n_patients']:.0f}" if "n_patients" in ctx.metrics else None)
    cells = t.get("n_cells_kept")
    if cells is None and ctx.features is not None and "n_cells" in ctx.features:
        cells = f"{int(ctx.features['n_cells'].sum())} (sum of the per-patient n_cells feature)"
    counts = ctx.label_counts()
    pos, neg = ctx.param("data.positive_label") or "non-responders", ctx.param("data.negative_label") or "responders"
    labels = f"{counts[0]} {pos} / {counts[1]} {neg}" if counts else None
    rows = [
        ("data source", t.get("data_source")),
        ("data kind", t.get("data_kind")),
        ("data digest (sha256)", t.get("data_digest")),
        ("patients", n_pat),
        ("samples", t.get("n_samples")),
        ("cells kept by QC", cells),
        ("labels", labels),
    ]
    return _kv((k, _nr(k) if v is None else v) for k, v in rows)


def _features(ctx: _Ctx) -> str:
    names = ctx.feature_names()
    if names:
        fams = _families(names)
        table = _table(
            ["family", "features", "examples"],
            [[f, len(v), ", ".join(v[:4]) + (", ..." if len(v) > 4 else "")] for f, v in fams.items()],
        )
        body = f"<p>{len(names)} features per patient (features.csv).</p>{table}"
    elif "n_features" in ctx.tags:
        body = f"<p>{_e(ctx.tags['n_features'])} features; the per-family breakdown is {NOT_RECORDED} (no features.csv).</p>"
    else:
        body = f"<p>{_nr('feature table')}</p>"
    cov = ctx.files.csv("gene_set_coverage.csv")
    body += "<h3>Gene-set coverage</h3>"
    if cov is None or cov.empty:
        body += f"<p>{_nr('gene-set coverage')}</p>"
    else:
        cols = [c for c in ("set", "n_genes", "n_found", "frac_found", "missing", "aliased") if c in cov.columns]
        rows = [
            ["" if pd.isna(r[c]) else (r[c] if c != "missing" else _short(r[c])) for c in cols]
            for _, r in cov.iterrows()
        ]
        body += _table(cols, rows)
    body += "<h3>Patients x signature features</h3>" + _img(
        ctx.files.png("plots/patient_signature_heatmap.png"), alt="patient signature heatmap"
    )
    return body


def _short(text: Any, n: int = 12) -> str:
    items = str(text).split(",")
    return ",".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _candidates(ctx: _Ctx) -> tuple[list[str], list[list[Any]], list[str]] | None:
    """Header, rows and row classes of the candidates table: metrics.csv, else the child runs' ``cv_*`` metrics."""
    sel = ctx.selected
    header = ["model", "role", *(label for _, label in _METRICS), "child run"]
    rows, classes = [], []
    t = ctx.metrics_table
    if t is not None and "auroc" in t.columns:
        source = [
            (
                str(n),
                r.get("kind", ""),
                {m: (r.get(m), r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high")) for m, _ in _METRICS},
            )
            for n, r in t.iterrows()
        ]
    elif ctx.children:
        source = []
        for n, c in ctx.children.items():
            m = c.data.metrics
            source.append(
                (
                    n,
                    c.data.tags.get("kind", ""),
                    {k: (m.get(f"cv_{k}"), m.get(f"cv_{k}_ci_low"), m.get(f"cv_{k}_ci_high")) for k, _ in _METRICS},
                )
            )
        source.sort(key=lambda s: -(s[2]["auroc"][0] or 0.0))
    else:
        return None
    for name, kind, vals in source:
        child = ctx.children.get(name)
        label = f"{name} (selected)" if name == sel else name
        rows.append([label, kind, *(_ci(*vals[m]) for m, _ in _METRICS), child.info.run_id if child else NOT_RECORDED])
        classes.append("selected" if name == sel else "")
    return header, rows, classes


def _models(ctx: _Ctx) -> str:
    cand = _candidates(ctx)
    body = _nr("candidate metrics").join(("<p>", "</p>")) if cand is None else _table(cand[0], cand[1], classes=cand[2])
    m = ctx.metrics
    sel = ctx.selected
    ci = ctx.param("evaluation.ci")
    ci_text = f"{float(ci) * 100:g}% bootstrap CIs over patients" if ci else "bootstrap CIs"
    body += f'<p class="muted">Out-of-fold metrics with {_e(ci_text)}; the selected model is bold. Its CV AUROC is optimistic (the best of the candidates): the nested CV AUROC below is the honest estimate.</p>'

    def metric_ci(key: str, *, signed: bool = False) -> Any:
        if key not in m:
            return _nr(key)
        return _ci(m[key], m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high"), signed=signed)

    p_val = _nr("selection p-value")
    if "selection_p_value" in m:
        n_perm = m.get("selection_permutations")
        p_val = f"{m['selection_p_value']:.3g}" + (f" ({n_perm:.0f} permutations)" if n_perm else "")
    choices = ctx.files.csv("nested_cv_choices.csv")
    chose = _nr("outer-fold choices")
    if choices is not None and "candidate" in choices:
        chose = ", ".join(f"{k} {v}" for k, v in choices["candidate"].value_counts().items())
    rows = [
        ("selected model", f"{sel} ({ctx.tags.get('selected_role', '?')})" if sel else _nr("selected model")),
        ("nested CV AUROC (choose-then-fit procedure)", metric_ci("nested_cv_auroc")),
        ("outer folds chose", chose),
        ("selection-aware permutation p-value", p_val),
        ("ΔAUROC vs best baseline", metric_ci("delta_auroc_vs_best_baseline", signed=True)),
        ("ΔAUROC vs clinical-only model", metric_ci("delta_auroc_vs_clinical", signed=True)),
        (
            "biomarkers beyond clinical covariates (ΔAUROC)",
            metric_ci("incremental_auroc_biomarkers_over_clinical", signed=True),
        ),
    ]
    body += "<h3>Selection</h3>" + _kv(rows)
    body += "<h3>ROC and precision-recall curves</h3>" + _img(
        ctx.files.png("plots/roc_pr.png"), alt="ROC and PR curves (out-of-fold)"
    )
    cohorts = ctx.files.csv("cohort_metrics.csv")
    if cohorts is not None and {"model", "cohort", "auroc"} <= set(cohorts.columns):
        names = sorted(cohorts["cohort"].astype(str).unique())
        rows = []
        for model, g in cohorts.groupby("model", sort=False):
            by = g.assign(cohort=g["cohort"].astype(str)).set_index("cohort")
            rows.append(
                [
                    model,
                    *(
                        _ci(by.loc[c, "auroc"], by.loc[c].get("auroc_ci_low"), by.loc[c].get("auroc_ci_high"))
                        if c in by.index
                        else "n/a"
                        for c in names
                    ),
                ]
            )
        sizes = (
            cohorts.assign(cohort=cohorts["cohort"].astype(str)).groupby("cohort")["n"].first()
            if "n" in cohorts
            else {}
        )
        header = [f"{c} (n={int(sizes[c])})" if c in sizes else c for c in names]
        body += "<h3>Leave-one-cohort-out: AUROC on each held-out cohort</h3>" + _table(["model", *header], rows)
    return body


def _threshold_rule(ctx: _Ctx) -> str:
    target = ctx.param("evaluation.threshold.target_sensitivity")
    if target is not None:
        return f"sensitivity >= {target}, chosen inside each training fold"
    rule = ctx.param("evaluation.threshold")
    return f"{rule}, chosen inside each training fold" if rule else NOT_RECORDED


def _calibration(ctx: _Ctx) -> str:
    m = ctx.metrics

    def val(key: str, fmt: str = "{:.3f}") -> Any:
        return fmt.format(m[key]) if key in m else _nr(key)

    rows = [
        ("calibration slope (ideal 1; nested, out-of-fold)", val("calibration_slope", "{:.2f}")),
        ("calibration intercept (ideal 0)", val("calibration_intercept", "{:+.2f}")),
        ("threshold on P(non-response)", val("threshold")),
        ("threshold rule", _threshold_rule(ctx)),
        ("out-of-fold sensitivity at the threshold", val("oof_sensitivity", "{:.2f}")),
        ("out-of-fold specificity at the threshold", val("oof_specificity", "{:.2f}")),
    ]
    body = _kv(rows)
    dc = ctx.files.csv("decision_curve.csv")
    if dc is not None and {"threshold", "net_benefit_model", "net_benefit_treat_all"} <= set(dc.columns):
        better = dc[(dc["net_benefit_model"] > dc["net_benefit_treat_all"]) & (dc["net_benefit_model"] > 0)]
        where = (
            f"at threshold probabilities {better['threshold'].min():.2f}-{better['threshold'].max():.2f} ({len(better)} of {len(dc)} grid points)"
            if len(better)
            else "at none of the threshold probabilities evaluated"
        )
        body += f"<p>Net benefit of the model exceeds treating all and treating none {_e(where)}.</p>"
    body += "<h3>Reliability</h3>" + _img(ctx.files.png("plots/calibration.png"), alt="calibration (reliability) plot")
    body += "<h3>Decision curve</h3>" + _img(ctx.files.png("plots/decision_curve.png"), alt="decision curve")
    return body


def _importance(ctx: _Ctx) -> str:
    sel = ctx.selected
    files = ctx.child_files(sel) if sel else None
    if files is None:
        return f"<p>{_nr('the selected model child run')}</p>"
    body = f"<p>Final model of <b>{_e(sel)}</b>, refitted on every patient (child run {_e(files.run_id)}).</p>"
    body += _img(files.png("plots/feature_importance.png"), alt=f"feature importance of {sel}")
    imp = files.csv("feature_importance.csv")
    if imp is None or imp.shape[1] < 2:
        return body + f"<p>{_nr('feature importance table')}</p>"
    feat, val = imp.columns[0], imp.columns[1]
    top = imp.reindex(imp[val].abs().sort_values(ascending=False).index).head(10)
    return (
        body
        + "<h3>Top 10 features</h3>"
        + _table(["feature", "importance"], [[r[feat], float(r[val])] for _, r in top.iterrows()])
    )


def _umap(ctx: _Ctx) -> str:
    return _img(
        ctx.files.png("plots/umap_cell_type_aqp9.png"), alt="UMAP of cells by cell type and AQP9+ macrophage call"
    )


def _model_card(ctx: _Ctx) -> str:
    t, m = ctx.tags, ctx.metrics
    source = t.get("data_source")
    names = ctx.feature_names()
    fams = _families(names)
    clinical = ctx.param_list("features.clinical")
    counts = ctx.label_counts()
    n_pat = t.get("n_patients") or (f"{m['n_patients']:.0f}" if "n_patients" in m else None)
    n_feat = len(names) or (int(t["n_features"]) if t.get("n_features", "").isdigit() else None)
    label_col, pos = ctx.param("data.label_col"), ctx.param("data.positive_label")
    neg = ctx.param("data.negative_label")

    size = f"{n_pat} patients" if n_pat else NOT_RECORDED
    if counts:
        size += f"; {counts[0]} events (non-responders), {counts[1]} responders"
        if n_feat:
            size += f"; {counts[0] / n_feat:.2f} events per candidate feature ({n_feat} features)"
    predictors = ", ".join(f"{f} ({len(v)})" for f, v in fams.items()) if fams else NOT_RECORDED
    predictors += "; clinical covariates: " + (", ".join(clinical) if clinical else "none")
    if clinical:
        predictors += " (read only by the clinical candidates; biomarker models never see them)"
    cov = ctx.files.csv("gene_set_coverage.csv")
    coverage = NOT_RECORDED
    if cov is not None and "frac_found" in cov and len(cov):
        low = cov.loc[cov["frac_found"] < 1, "set"].astype(str).tolist() if "set" in cov else []
        coverage = f"lowest gene-set coverage {cov['frac_found'].min():.0%}" + (
            f" (incomplete: {', '.join(low)})" if low else " (every gene found)"
        )
    cv = f"{ctx.param('cv.n_repeats') or '?'}x{ctx.param('cv.n_splits') or '?'}-fold"
    if ctx.param("cv.strategy") == "leave_one_cohort_out":
        cv = f"leave-one-cohort-out over {ctx.param('data.cohort_col') or 'cohorts'}"
    evaluation = [f"{cv} cross-validation, grouped by patient (a patient is never in training and test folds)"]
    if "nested_cv_auroc" in m:
        evaluation.append("nested CV of the whole choose-then-fit procedure")
    if "selection_p_value" in m:
        evaluation.append(
            f"selection-aware permutation test ({m.get('selection_permutations', 0):.0f} label permutations)"
        )
    if ctx.param("evaluation.n_boot"):
        evaluation.append(f"bootstrap CIs over patients ({ctx.param('evaluation.n_boot')} resamples)")
    evaluation.append(f"threshold: {_threshold_rule(ctx)}")

    items = [
        ("Data source", f"{source or NOT_RECORDED}; kind {t.get('data_kind', '?')}; sha256 {t.get('data_digest', '?')[:16]}"),
        ("Outcome", f"{label_col} = {pos} (anti-TNF non-response, positive class) vs {neg or 'the other labels'}, one label per patient" if label_col and pos else NOT_RECORDED),
        ("Predictors", predictors),
        ("Sample size", size),
        ("Missing data", f"median imputation fitted inside each training fold, so held-out patients never inform it; {coverage}"),
        ("Evaluation", "; ".join(evaluation)),
        ("Intended use", "research use only: prediction of anti-TNF non-response in Crohn's disease from pre-treatment "
         "intestinal biopsies, to generate and test biomarker hypotheses; not a clinical device and not for treatment decisions"),
        ("Limitations", _Raw("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in _limitations(ctx, n_pat, counts)) + "</ul>")),
    ]  # fmt: skip
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{v if isinstance(v, _Raw) else _e(v)}</dd>" for k, v in items)
    return f'<p class="muted">TRIPOD+AI items that apply to a development study with internal validation.</p><dl class="card">{dl}</dl>'


def _limitations(ctx: _Ctx, n_pat: str | None, counts: tuple[int, int] | None) -> list[str]:
    m, out = ctx.metrics, []
    if (ctx.tags.get("data_source") or "").startswith("simulate_cohort"):
        out.append(
            "the cohort is simulated with planted effects: the figures show that the pipeline recovers them, not clinical performance"
        )
    if n_pat and n_pat.isdigit() and int(n_pat) < 200:
        events = f" ({counts[0]} events)" if counts else ""
        out.append(
            f"small sample: {n_pat} patients{events}; estimates are unstable and no external validation is included"
        )
    if "nested_cv_auroc_ci_low" in m and "nested_cv_auroc_ci_high" in m:
        width = m["nested_cv_auroc_ci_high"] - m["nested_cv_auroc_ci_low"]
        out.append(
            f"the nested CV AUROC CI is {width:.2f} wide ({m['nested_cv_auroc_ci_low']:.2f}-{m['nested_cv_auroc_ci_high']:.2f})"
        )
    if "calibration_slope" in m:
        slope = m["calibration_slope"]
        verdict = (
            "overfitted (too extreme) probabilities"
            if slope < 0.8
            else "too moderate probabilities"
            if slope > 1.2
            else "acceptable"
        )
        out.append(f"calibration slope {slope:.2f}: {verdict}; recalibrate before using probabilities at face value")
    if ctx.param("cv.strategy") != "leave_one_cohort_out":
        out.append(
            "case mix: one source cohort; performance in other centres, tissues or sorting protocols is untested"
        )
    return out or [f"limitations: {NOT_RECORDED}"]


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """Turn off MLflow's per-artifact download progress bars (a report downloads a dozen small files).

    MLflow reads ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` at each download; a value the user set is kept.
    """
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _client(client: MlflowClient | None) -> MlflowClient:
    if client is not None:
        return client
    import mlflow

    from biomarkers.tracking._store import setup_mlflow

    setup_mlflow()
    return mlflow.MlflowClient()


def _parent_run(client: MlflowClient, run_id: str) -> Run:
    """Return the run, or raise one clear error for an unknown id or a child run (naming its parent)."""
    from mlflow.exceptions import MlflowException

    from biomarkers.tracking._store import tracking_uri

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        msg = (
            f"Run {run_id!r} not found in the MLflow store {tracking_uri()} ({e.error_code}). "
            "List run ids with: biomarkers compare, or set MLFLOW_TRACKING_URI to the store that holds the run."
        )
        raise BiomarkersError(msg) from None
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        msg = (
            f"Run {run_id} is a child run ({run.info.run_name}) of parent run {parent}; the report covers the "
            f"whole experiment run: biomarkers report {parent}"
        )
        raise BiomarkersError(msg)
    return run


def build_report(run_id: str, *, client: MlflowClient | None = None) -> str:
    """Return a self-contained HTML report of a ``biomarkers run`` parent run, built from MLflow alone.

    Sections (each ``<section id=...>``): ``cohort``, ``features``, ``models``, ``calibration``,
    ``importance``, ``umap`` and ``model-card`` (the TRIPOD+AI items that apply). Figures are the run's
    logged PNGs, embedded as base64 data URIs; nothing refers to other files or the network. An item the
    run did not record (an older run, a bulk cohort without UMAP) reads "not recorded in this run".

    Parameters
    ----------
    run_id
        The parent run of ``biomarkers run`` (printed in its summary, or the ``run_id`` column of
        ``biomarkers compare``).
    client
        The MLflow client to read through; None: the project's store (``MLFLOW_TRACKING_URI``).

    Returns
    -------
    The HTML document.

    Raises
    ------
    BiomarkersError
        The run does not exist in the store, or is a child run (the message names its parent).

    Examples
    --------
    >>> import biomarkers as bm
    >>> html = bm.tracking.build_report(run_id)  # doctest: +SKIP
    """
    client = _client(client)
    run = _parent_run(client, run_id)
    try:
        experiment = client.get_experiment(run.info.experiment_id).name
    except Exception:  # noqa: BLE001 - the experiment name is decoration; its id stands in
        experiment = run.info.experiment_id
    with tempfile.TemporaryDirectory(prefix="bm-report-") as tmp, _quiet_downloads():
        ctx = _Ctx(client, run, Path(tmp))
        parts = [
            ("cohort", "Cohort", _cohort),
            ("features", "Features", _features),
            ("models", "Models and baselines", _models),
            ("calibration", "Calibration, threshold and decision curve", _calibration),
            ("importance", "Feature importance of the selected model", _importance),
            ("umap", "UMAP of the cells", _umap),
            ("model-card", "Model card (TRIPOD+AI)", _model_card),
        ]
        body = _header(ctx, experiment) + "".join(_section(sid, title, build(ctx)) for sid, title, build in parts)
    versions = ctx.tags.get("package_versions")
    body += f'<p class="muted">Package versions: {_e(versions) if versions else NOT_RECORDED}.</p>'
    logger.info("build_report: run %s -> %d sections, %.0f kB of HTML", run_id, len(parts), len(body) / 1024)
    return _page(f"Report: {experiment} {run.info.run_name}", body)


def log_report(run_id: str, *, client: MlflowClient | None = None) -> None:
    """Build the report of ``run_id`` (:func:`build_report`) and log it as the run's ``report.html`` artifact.

    Parameters
    ----------
    run_id
        The parent run of ``biomarkers run``.
    client
        The MLflow client; None: the project's store.

    Examples
    --------
    >>> import biomarkers as bm
    >>> bm.tracking.log_report(run_id)  # doctest: +SKIP
    """
    client = _client(client)
    client.log_text(run_id, build_report(run_id, client=client), REPORT_ARTIFACT)
    logger.info("log_report: run %s -> artifact %s", run_id, REPORT_ARTIFACT)


_PATIENT_COLS = (
    "patient_id",
    "p_non_response",
    "prediction",
    "n_cells",
    "n_samples",
    "flags",
    "reason",
    "top_features",
)


def _histogram(p: pd.Series, threshold: float | None) -> bytes:
    import numpy as np

    from biomarkers.tracking._plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(p.dropna().to_numpy(dtype=float), bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#c62828", linestyle="--", label=f"threshold {threshold:.3f}")
        ax.legend(fontsize=8)
    ax.set(xlabel="P(non-response)", ylabel="patients", xlim=(0, 1), title="Predicted probabilities")
    fig.tight_layout()
    return _fig_png(fig)


def _flags_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        return ""
    return _Raw("".join(f'<span class="flag">{_e(code)}</span>' for code in str(value).split(";") if code.strip()))


def predictions_report(table: pd.DataFrame, *, model_info: dict[str, Any]) -> str:
    """Return a self-contained HTML report of ``predict`` output for a batch of new patients.

    It shows the model (``model_info``'s name, version, URI and threshold, and any other scalar entries),
    a histogram of the probabilities with the threshold, a table of patients (probability, call, flags
    highlighted, reason, top features) and, when present, the per-feature contributions (``contrib__*``)
    and training-cohort percentiles (``pctl__*``). Columns absent from ``table`` are not shown.

    Parameters
    ----------
    table
        :func:`biomarkers.predict` output: ``patient_id, p_non_response, prediction, n_cells, n_samples``,
        optionally ``flags``, ``reason``, ``top_features``, ``contrib__<feature>``, ``pctl__<feature>``.
    model_info
        What identifies the model: e.g. ``{"name": ..., "version": ..., "uri": ..., "threshold": ...}``.

    Returns
    -------
    The HTML document.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"patient_id": ["P1", "P2"], "p_non_response": [0.2, 0.8], "prediction": ["responder", "non_responder"]})
    >>> "<table>" in predictions_report(t, model_info={"name": "anti-tnf-nonresponse", "version": "3", "threshold": 0.5})
    True
    """
    df = table.reset_index() if "patient_id" not in table.columns and table.index.name == "patient_id" else table
    threshold = model_info.get("threshold")
    threshold = float(threshold) if threshold is not None else None
    info = [(str(k), v) for k, v in model_info.items() if isinstance(v, str | int | float | bool) or v is None]
    body = f"<h1>Anti-TNF non-response predictions: {len(df)} patients</h1>"
    body += _section("model", "Model", _kv(info) if info else f"<p>{_nr('model information')}</p>")
    summary = ""
    if "prediction" in df:
        summary = "<p>Calls: " + _e(", ".join(f"{v} {k}" for k, v in df["prediction"].value_counts().items())) + "</p>"
    if "flags" in df:
        n_flag = int(df["flags"].fillna("").astype(str).str.strip().ne("").sum())
        summary += f"<p>{n_flag} of {len(df)} patients flagged: their samples differ from the training cohort; read their probabilities with care.</p>"
    if "p_non_response" in df and len(df):
        summary += _img(
            _histogram(df["p_non_response"], threshold), alt="histogram of P(non-response) with the threshold"
        )
    body += _section("summary", "Summary", summary or f"<p>{_nr('probabilities')}</p>")
    cols = [c for c in _PATIENT_COLS if c in df.columns]
    flagged = (
        df["flags"].fillna("").astype(str).str.strip().ne("")
        if "flags" in df
        else pd.Series(data=False, index=df.index)
    )
    rows = [[_flags_cell(r[c]) if c == "flags" else _cellvalue(r[c]) for c in cols] for _, r in df.iterrows()]
    body += _section("patients", "Patients", _table(cols, rows, classes=["flagged" if f else "" for f in flagged]))
    expl = [c for c in df.columns if str(c).startswith(("contrib__", "pctl__"))]
    if expl:
        key = [c for c in ("patient_id",) if c in df.columns]
        rows = [[_cellvalue(r[c]) for c in key + expl] for _, r in df.iterrows()]
        note = '<p class="muted">contrib__: signed contribution in log-odds; pctl__: percentile in the training cohort.</p>'
        body += _section("explanations", "Explanations", note + _table(key + expl, rows))
    return _page("Anti-TNF non-response predictions", body)


def _cellvalue(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if hasattr(v, "item"):  # numpy scalars: plain Python numbers format and align like floats
        v = v.item()
    return v
