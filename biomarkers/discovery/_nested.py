"""Discovery inside cross-validation: a discovered signature is re-discovered on each training fold.

Choosing genes by their association with response on all patients, then cross-validating a model on a score of
those genes, lets the held-out patients' labels pick the features: the CV estimate is optimistic, even on pure
noise (Ambroise & McLachlan 2002 PNAS; Simon et al. 2003 JNCI). Here gene selection is a fitted step of the
model: :class:`NestedDiscoveryFeature` runs differential expression on the training patients only, and
:func:`cv_with_discovery` refits it in every fold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData as AnnDataType
from sklearn.base import BaseEstimator, TransformerMixin, clone

from biomarkers import _keys as k
from biomarkers._errors import DataSchemaError
from biomarkers.discovery._compartments import patient_labels
from biomarkers.discovery._de import Method, rank_genes
from biomarkers.discovery._pseudobulk import FAMILY_PBCOUNT, pseudobulk_table
from biomarkers.stats import DDOF

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from biomarkers.discovery._stream import PseudobulkSums

logger = logging.getLogger("biomarkers")

FAMILY_DISCOVERED = "disc"  # discovered-signature score: disc__<compartment>
_PREFIX = FAMILY_PBCOUNT + k.FEATURE_SEP


def _log_cpm(counts: np.ndarray) -> np.ndarray:
    lib = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log2(1e6 * counts / np.where(lib > 0, lib, np.nan) + 1.0)


class NestedDiscoveryFeature(TransformerMixin, BaseEstimator):
    """Discover up-regulated genes on the training patients, then score them for any patient.

    ``fit`` runs :func:`biomarkers.discovery.rank_genes` per compartment on the training rows only, keeps the
    ``top_n`` genes up in non-responders (``stat > 0``; with ``fdr`` also ``padj < fdr``) and records each
    gene's training mean and SD of log2(CPM + 1). ``transform`` returns, per compartment, the mean z-score of
    those genes (``disc__<compartment>``), so a model in the same Pipeline never sees genes chosen with
    held-out labels.

    Parameters
    ----------
    compartments
        Compartments to discover in; ``None`` = every compartment of the input columns.
    top_n
        Genes per signature.
    fdr
        If set, only genes with ``padj < fdr`` (the signature may then be empty: score 0). ``None`` keeps the
        ``top_n`` largest positive statistics, which always gives a signature.
    method
        DE method (``ttest`` is fast enough to refit in every fold; ``deseq2_fast`` also works, slower, and
        ``deseq2``, PyDESeq2's own inference, much slower).
    min_counts, min_expressed
        Gene filter of :func:`biomarkers.discovery.rank_genes`.
    passthrough
        Keep the input columns that are not pseudobulk counts (e.g. other patient features) after the scores.

    Notes
    -----
    Input is a patients x columns DataFrame whose ``pbcount__<compartment>__<gene>`` columns hold raw pseudobulk
    counts (:func:`biomarkers.discovery.pseudobulk_table`); rows with NaN counts in a compartment (too few cells)
    are left out of that compartment's DE and get a NaN score (impute it in the model).
    """

    def __init__(
        self,
        *,
        compartments: Sequence[str] | None = None,
        top_n: int = 25,
        fdr: float | None = None,
        method: Method = "ttest",
        min_counts: int = 10,
        min_expressed: int = 3,
        passthrough: bool = True,
    ) -> None:
        self.compartments = compartments
        self.top_n = top_n
        self.fdr = fdr
        self.method = method
        self.min_counts = min_counts
        self.min_expressed = min_expressed
        self.passthrough = passthrough

    def _blocks(self, X: pd.DataFrame) -> dict[str, list[str]]:
        blocks: dict[str, list[str]] = {}
        for col in map(str, X.columns):
            if col.startswith(_PREFIX):
                comp = col[len(_PREFIX) :].split(k.FEATURE_SEP, 1)[0]
                blocks.setdefault(comp, []).append(col)
        wanted = list(self.compartments) if self.compartments is not None else list(blocks)
        missing = [c for c in wanted if c not in blocks]
        if missing:
            msg = (
                f"No pseudobulk count columns for compartment(s) {missing} (found: {sorted(blocks)}). "
                "Build the input with pseudobulk_table(adata, compartments=...)."
            )
            raise DataSchemaError(msg)
        return {c: blocks[c] for c in wanted}

    def fit(self, X: pd.DataFrame, y: Any) -> NestedDiscoveryFeature:
        """Discover the signatures on these (training) patients."""
        if not isinstance(X, pd.DataFrame):
            msg = f"NestedDiscoveryFeature needs a DataFrame with pbcount__ columns, got {type(X).__name__}."
            raise DataSchemaError(msg)
        y_arr = np.asarray(y, dtype=int)
        self.blocks_ = self._blocks(X)
        self.genes_: dict[str, list[str]] = {}
        self.center_: dict[str, np.ndarray] = {}
        self.scale_: dict[str, np.ndarray] = {}
        for comp, cols in self.blocks_.items():
            sub = X.loc[:, cols]
            ok = sub.notna().all(axis=1).to_numpy()
            counts = pd.DataFrame(
                sub.to_numpy()[ok], index=X.index[ok], columns=[c.rsplit(k.FEATURE_SEP, 1)[1] for c in cols]
            )
            table = rank_genes(
                counts, y_arr[ok], method=self.method, min_counts=self.min_counts, min_expressed=self.min_expressed
            )
            pick = table[table["stat"] > 0]
            if self.fdr is not None:
                pick = pick[pick["padj"] < self.fdr]
            genes = pick["gene"].head(self.top_n).tolist()
            pos = [counts.columns.get_loc(g) for g in genes]
            lc = _log_cpm(counts.to_numpy(dtype=float))[:, pos]
            # Fitted on the training patients and stored, so transform applies the same centre and scale.
            sd = lc.std(axis=0, ddof=DDOF)  # the package's one ddof (one patient: SD 0, scale 1)
            self.genes_[comp] = genes
            self.center_[comp] = lc.mean(axis=0)
            self.scale_[comp] = np.where(sd > 0, sd, 1.0)
        self.passthrough_ = [c for c in map(str, X.columns) if not c.startswith(_PREFIX)] if self.passthrough else []
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Scores ``disc__<compartment>`` (then passthrough columns) for these patients."""
        out = {}
        for comp, cols in self.blocks_.items():
            genes = self.genes_[comp]
            name = k.FEATURE_SEP.join((FAMILY_DISCOVERED, comp))
            if not genes:
                out[name] = np.zeros(len(X))
                continue
            lc = _log_cpm(X.loc[:, cols].to_numpy(dtype=float))
            pos = [cols.index(k.FEATURE_SEP.join((FAMILY_PBCOUNT, comp, g))) for g in genes]
            out[name] = ((lc[:, pos] - self.center_[comp]) / self.scale_[comp]).mean(axis=1)
        scores = pd.DataFrame(out, index=X.index)
        return pd.concat([scores, X.loc[:, self.passthrough_]], axis=1) if self.passthrough_ else scores

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:  # noqa: ARG002 - sklearn API
        """Output column names."""
        names = [k.FEATURE_SEP.join((FAMILY_DISCOVERED, c)) for c in self.blocks_]
        return np.asarray([*names, *self.passthrough_], dtype=object)


@dataclass
class NestedCVResult:
    """What :func:`cv_with_discovery` found.

    Attributes
    ----------
    oof
        Out-of-fold predictions: ``patient_id, repeat, fold, y_true, p``.
    predictions
        Per patient: ``y_true`` and ``p`` (mean over repeats).
    metrics
        AUROC, AUPRC, balanced accuracy, Brier with bootstrap CIs (:func:`biomarkers.models.evaluate_predictions`).
    selected
        One row per repeat, fold and compartment: ``n_train``, ``n_genes``, ``genes`` (comma-separated).
    seconds
        Wall time.
    """

    oof: pd.DataFrame
    predictions: pd.DataFrame
    metrics: dict[str, float]
    selected: pd.DataFrame
    seconds: float


def _patient_response(
    adata: AnnData | PseudobulkSums, *, label_col: str, positive: str, negative: str | None, patient_col: str
) -> pd.Series:
    from biomarkers.discovery._stream import PseudobulkSums

    sums = adata if isinstance(adata, PseudobulkSums) else None
    columns = sorted(sums.obs_columns) if sums is not None else list(adata.obs.columns)
    if label_col not in columns:
        msg = f"Label column '{label_col}' not in adata.obs (have: {', '.join(map(str, columns[:12]))}). Set label_col."
        raise DataSchemaError(msg)
    if sums is not None:
        first = sums.first(label_col)
    else:
        first = adata.obs[label_col].groupby(adata.obs[patient_col].astype(str), observed=True).first()
    meta = pd.DataFrame({label_col: first})
    return patient_labels(meta, label_col=label_col, positive=positive, negative=negative)


def cv_with_discovery(
    adata: AnnData | PseudobulkSums,
    *,
    compartments: Sequence[str] = ("stroma",),
    labels: pd.Series | None = None,
    folds: list[list[tuple[np.ndarray, np.ndarray]]] | None = None,
    model: Mapping[str, Any] | BaseEstimator | None = None,
    method: Method = "ttest",
    top_n: int = 25,
    fdr: float | None = None,
    extra_features: pd.DataFrame | None = None,
    n_splits: int = 5,
    n_repeats: int = 1,
    n_boot: int = 1000,
    seed: int | None = 0,
    label_col: str = k.RESPONSE,
    positive: str = k.NON_RESPONDER,
    negative: str | None = k.RESPONDER,
    patient_col: str = k.PATIENT,
    min_cells: int = 10,
) -> NestedCVResult:
    """Cross-validate a model on a discovered signature, with discovery redone inside every training fold.

    Parameters
    ----------
    adata
        Annotated cells (``obs['compartment']``) with raw counts in ``layers['counts']``, or their
        :class:`~biomarkers.discovery.PseudobulkSums` (:func:`~biomarkers.discovery.stream_pseudobulk`): the folds'
        DE needs only the patients' pseudobulk counts.
    compartments
        Compartments whose discovered signature becomes a feature (``disc__<compartment>``).
    labels
        0/1 per patient (index = patient id); default: ``label_col`` of ``obs``.
    folds
        ``folds[repeat] = [(train_idx, test_idx), ...]`` positional over the labelled patients (sorted ids), e.g.
        from :func:`biomarkers.models.patient_folds`; default: stratified ``n_splits`` x ``n_repeats``.
    model
        A spec for :func:`biomarkers.models.make_estimator` (default ``{"kind": "logreg"}``) or an sklearn classifier.
    method, top_n, fdr
        Discovery settings of :class:`NestedDiscoveryFeature`.
    extra_features
        Other patient features (index = patient id) passed through next to the discovered scores.
    n_splits, n_repeats
        Folds when ``folds`` is None.
    n_boot
        Bootstrap resamples of the AUROC CI.
    seed
        Seed of the folds, the model and the bootstrap.
    label_col, positive, negative, patient_col
        Label and patient columns of ``obs``.
    min_cells
        Minimum cells of a patient in a compartment.

    Returns
    -------
    A :class:`NestedCVResult`.

    Examples
    --------
    >>> import biomarkers as bm
    >>> from biomarkers import _celltypes as ct
    >>> from biomarkers.discovery import cv_with_discovery
    >>> adata = bm.simulate_cohort(n_patients=20, cells_per_patient=80, n_genes=400, seed=0)
    >>> major = adata.obs["true_cell_type"].map(ct.FINE_TO_MAJOR)
    >>> adata.obs["compartment"] = major.map(ct.COMPARTMENT_OF)
    >>> res = cv_with_discovery(adata, compartments=["stroma"], n_splits=4, n_boot=200, min_cells=3)
    >>> sorted(res.selected.columns)
    ['compartment', 'fold', 'genes', 'n_genes', 'n_train', 'repeat']
    """
    from biomarkers.models import evaluate_predictions, make_estimator, patient_folds, summarize_oof

    t0 = time.perf_counter()
    y = (
        labels
        if labels is not None
        else _patient_response(
            adata, label_col=label_col, positive=positive, negative=negative, patient_col=patient_col
        )
    )
    y = pd.Series(y.to_numpy(dtype=int), index=y.index.astype(str), name=label_col).sort_index()
    if isinstance(adata, AnnDataType):
        X = pseudobulk_table(adata, compartments=compartments, patient_col=patient_col, min_cells=min_cells)
    else:
        X = adata.table(compartments=compartments, min_cells=min_cells)
    missing = y.index.difference(X.index)
    if len(missing):
        msg = f"{len(missing)} labelled patient(s) have no cells (e.g. {missing[:3].tolist()}). Align labels to adata."
        raise DataSchemaError(msg)
    X = X.loc[y.index]
    if extra_features is not None:
        extra = extra_features.set_axis(extra_features.index.astype(str))
        X = X.join(extra.reindex(X.index).astype(float))
    y_arr = y.to_numpy()
    if folds is None:
        folds = patient_folds(y_arr, n_splits=n_splits, n_repeats=n_repeats, seed=seed)
    clf = (
        make_estimator(dict(model or {"kind": "logreg"}), seed=seed)
        if model is None or isinstance(model, Mapping)
        else model
    )
    from sklearn.pipeline import Pipeline

    pipe = Pipeline(
        [
            ("discover", NestedDiscoveryFeature(compartments=list(compartments), top_n=top_n, fdr=fdr, method=method)),
            ("model", clf),
        ]
    )
    parts, chosen = [], []
    for r, rep in enumerate(folds):
        for f, (tr, te) in enumerate(rep):
            est = clone(pipe).fit(X.iloc[tr], y_arr[tr])
            proba = est.predict_proba(X.iloc[te])
            classes = list(est.classes_)
            p = proba[:, classes.index(1)] if 1 in classes else np.zeros(len(te))
            parts.append(pd.DataFrame({k.PATIENT: X.index[te], "repeat": r, "fold": f, "y_true": y_arr[te], "p": p}))
            disc = est.named_steps["discover"]
            chosen += [
                {"repeat": r, "fold": f, "compartment": c, "n_train": len(tr), "n_genes": len(g), "genes": ",".join(g)}
                for c, g in disc.genes_.items()
            ]
    oof = pd.concat(parts, ignore_index=True)
    per_patient = summarize_oof(oof)
    p_repeats = np.vstack([summarize_oof(d).loc[per_patient.index, "p"].to_numpy() for _, d in oof.groupby("repeat")])
    metrics = evaluate_predictions(
        per_patient["y_true"], per_patient["p"], n_boot=n_boot, seed=seed, p_repeats=p_repeats
    )
    seconds = time.perf_counter() - t0
    logger.info(
        "cv_with_discovery: %s, %d folds, AUROC %.3f [%.3f, %.3f] (%.1f s)",
        ",".join(compartments), len(parts), metrics["auroc"], metrics["auroc_ci_low"], metrics["auroc_ci_high"], seconds,
    )  # fmt: skip
    return NestedCVResult(
        oof=oof, predictions=per_patient, metrics=metrics, selected=pd.DataFrame(chosen), seconds=seconds
    )
