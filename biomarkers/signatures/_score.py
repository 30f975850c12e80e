"""Per-cell signature scores: the Seurat/scanpy control-gene algorithm, vectorised over sets (X @ W)."""

from __future__ import annotations

import logging
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from biomarkers import _keys
from biomarkers._errors import DataSchemaError
from biomarkers.signatures._aliases import coverage_report, resolver_for
from biomarkers.signatures._gene_sets import _manifest, as_gene_sets

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from anndata import AnnData
    from numpy.typing import ArrayLike, NDArray

    from biomarkers.signatures._gene_sets import GeneSetsLike

logger = logging.getLogger("biomarkers")

# uns["bm"][STEP]: provenance of this step. TODO(lead): move to biomarkers/_keys.py as SIGNATURES_STEP.
STEP = "signatures"
# About 16M stored values per chunk: bounds the float64 copy that a float32 matrix needs for the product.
_CHUNK_VALUES = 1 << 24


def _matrix(adata: AnnData, layer: str | None) -> np.ndarray | sp.csr_matrix | sp.csr_array:
    if layer is not None and layer not in adata.layers:
        msg = (
            f"Layer {layer!r} not in adata.layers (have: {', '.join(adata.layers) or 'none'}). "
            "Pass layer=None to use adata.X, or normalise first (log1p of normalised counts)."
        )
        raise DataSchemaError(msg)
    x = adata.X if layer is None else adata.layers[layer]
    if x is None:
        msg = "adata.X is None. Pass layer=<name of a log-normalised layer>."
        raise DataSchemaError(msg)
    if sp.issparse(x):
        if x.format != "csr":
            logger.info("score_signatures: converting %s matrix to CSR", x.format)
            x = x.tocsr()
        return x
    if isinstance(x, np.ndarray):
        return x
    msg = (
        f"score_signatures needs an in-memory numpy or scipy.sparse matrix, found {type(x).__name__}. "
        "Load the data into memory first (adata.to_memory(), or .compute() a dask array)."
    )
    raise DataSchemaError(msg)


def _row_chunks(x: np.ndarray | sp.csr_matrix | sp.csr_array, rows: NDArray[np.intp] | None) -> Iterator[object]:
    """Yield row blocks of ``x`` (all rows, or ``rows``), in order, each holding at most ~_CHUNK_VALUES values."""
    n_rows = x.shape[0] if rows is None else len(rows)
    if n_rows == 0:
        return
    per_row = (x.nnz / max(x.shape[0], 1)) if sp.issparse(x) else x.shape[1]
    step = max(1, int(_CHUNK_VALUES / max(per_row, 1.0)))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        if rows is not None:
            yield x[rows[start:stop]]
        elif sp.issparse(x):
            # Zero-copy view of contiguous rows: slicing (or the constructor's format check) would copy data and
            # indices, so the view's arrays are set as attributes.
            lo, hi = x.indptr[start], x.indptr[stop]
            view = sp.csr_matrix((stop - start, x.shape[1]), dtype=x.dtype)
            view.data, view.indices, view.indptr = x.data[lo:hi], x.indices[lo:hi], x.indptr[start : stop + 1] - lo
            yield view
        else:
            yield x[start:stop]


def _gene_means(x: np.ndarray | sp.csr_matrix | sp.csr_array, rows: NDArray[np.intp] | None) -> NDArray[np.float64]:
    n_genes = x.shape[1]
    sums = np.zeros(n_genes, dtype=np.float64)
    n = 0
    for chunk in _row_chunks(x, rows):
        values = chunk.data if sp.issparse(chunk) else chunk
        if not np.all(np.isfinite(values)):
            msg = (
                "The expression matrix has NaN or infinite values. Scores need finite log-normalised expression: "
                "fill or drop them (e.g. np.nan_to_num) before scoring."
            )
            raise DataSchemaError(msg)
        if sp.issparse(chunk):
            # Accumulates in float64 (sum(axis=0, dtype=float64) accumulates in the matrix's float32).
            sums += chunk.T @ np.ones(chunk.shape[0])
        else:
            sums += chunk.sum(axis=0, dtype=np.float64)
        n += chunk.shape[0]
    return sums / n


def _warn_if_counts(x: np.ndarray | sp.csr_matrix | sp.csr_array, layer: str | None) -> None:
    sample = (x.data if sp.issparse(x) else np.ravel(x))[:100_000]
    if sample.size and np.all(np.mod(sample, 1) == 0) and sample.max() > 20:
        logger.warning(
            "score_signatures: %s looks like raw counts (integers up to %g); scores are meant for log-normalised "
            "data: normalise + log1p first, or pass layer='%s'",
            f"layer {layer!r}" if layer else "adata.X",
            float(sample.max()),
            _keys.LOG1P,
        )


def _expression_bins(means: NDArray[np.float64], n_bins: int) -> NDArray[np.int64]:
    """Bin genes by average expression exactly as scanpy does: ``rank(method="min") // round(n / (n_bins - 1))``."""
    # Rounded to 1e-10 before ranking: means summed in another cell order differ in the last bits of a float64,
    # which must not reorder genes (scores are invariant to cell order).
    ranks = rankdata(np.round(means, 10), method="min")
    n_items = max(1, round(len(means) / (n_bins - 1)))
    return (ranks // n_items).astype(np.int64)


def _genes_by_bin(cuts: NDArray[np.int64], var_names: NDArray[np.str_]) -> dict[int, NDArray[np.intp]]:
    """Gene indices of each bin, ordered by gene name so that the draws do not depend on the gene order."""
    order = np.lexsort((var_names, cuts))
    sorted_cuts = cuts[order]
    bounds = np.flatnonzero(np.diff(sorted_cuts)) + 1
    return {
        int(chunk_cuts[0]): idx
        for idx, chunk_cuts in zip(np.split(order, bounds), np.split(sorted_cuts, bounds), strict=True)
    }


def _control_genes(
    set_idx: NDArray[np.intp],
    cuts: NDArray[np.int64],
    by_bin: dict[int, NDArray[np.intp]],
    *,
    ctrl_size: int,
    seed: int | None,
) -> NDArray[np.intp]:
    """Apply scanpy's ``ctrl_as_ref=True`` rule: draw ``ctrl_size`` genes per bin of the set, drop the set's genes.

    The draws reproduce scanpy's: it reseeds numpy's legacy generator with ``random_state`` for every set and lets
    pandas ``sample`` call ``choice(n, ctrl_size, replace=False)`` once per bin, in bin order. We use a local
    ``RandomState(seed)`` (never the global one) the same way, over the bin's genes sorted by name, so controls are
    identical to scanpy's on a name-sorted matrix and do not depend on the gene order (scanpy's do).
    """
    rs = np.random.RandomState(seed)  # scanpy's draws; a local instance, not global seeding
    picked = []
    for cut in np.unique(cuts[set_idx]):
        candidates = by_bin[int(cut)]
        if ctrl_size < len(candidates):
            candidates = candidates[rs.choice(len(candidates), size=ctrl_size, replace=False)]
        picked.append(candidates)
    ctrl = np.unique(np.concatenate(picked)) if picked else np.array([], dtype=np.intp)
    return np.setdiff1d(ctrl, set_idx, assume_unique=True)


def control_genes(
    means: NDArray[np.float64],
    var_names: NDArray[np.str_],
    sets: Mapping[str, NDArray[np.intp]],
    *,
    ctrl_size: int = 50,
    n_bins: int = 25,
    seed: int | None = 0,
) -> dict[str, NDArray[np.intp]]:
    """Expression-matched control genes of each set, from the genes' mean expression over a reference of cells.

    This is the label-free step of :func:`score_signatures` (scanpy's ``score_genes`` binning and draws), split
    out so that it can be fitted once on a training cohort and frozen (see
    :class:`biomarkers.features.ScoringReference`).

    Parameters
    ----------
    means
        Mean log-normalised expression of every gene over the reference cells.
    var_names
        Gene names, aligned with `means`.
    sets
        Set name -> indices of its genes in `var_names`.
    ctrl_size, n_bins, seed
        As in :func:`score_signatures`.

    Returns
    -------
    Set name -> indices of its control genes (the set's own genes excluded).

    Raises
    ------
    DataSchemaError
        A set has no control gene left in its bins (too few genes in the data).
    """
    cuts = _expression_bins(means, n_bins)
    by_bin = _genes_by_bin(cuts, np.asarray(var_names))
    out: dict[str, NDArray[np.intp]] = {}
    for name, set_idx in sets.items():
        ctrl = _control_genes(set_idx, cuts, by_bin, ctrl_size=ctrl_size, seed=seed)
        if ctrl.size == 0:
            msg = (
                f"Gene set {name!r}: no control genes left in its expression bins ({len(var_names)} genes in the "
                "data). Score on more genes, or lower n_bins."
            )
            raise DataSchemaError(msg)
        out[name] = ctrl
    return out


def _mask_rows(adata: AnnData, mask: ArrayLike | str | None) -> tuple[NDArray[np.intp] | None, str]:
    if mask is None:
        return None, "all"
    if isinstance(mask, str):
        if mask not in adata.obs.columns:
            have = ", ".join(map(str, adata.obs.columns))
            msg = f"mask={mask!r} is not an obs column (have: {have}). Pass a boolean array or a boolean obs column."
            raise DataSchemaError(msg)
        values, label = adata.obs[mask].to_numpy(), mask
    else:
        values, label = np.asarray(mask), "array"
    if values.shape != (adata.n_obs,) or values.dtype != bool:
        msg = (
            f"mask must be a boolean array with one value per cell ({adata.n_obs}); found dtype {values.dtype}, "
            f"shape {values.shape}. Pass e.g. adata.obs['compartment'].eq('MNP').to_numpy()."
        )
        raise DataSchemaError(msg)
    rows = np.flatnonzero(values)
    if rows.size == 0:
        msg = f"mask selects 0 of {adata.n_obs} cells; nothing to score. Check the mask (e.g. the compartment name)."
        raise DataSchemaError(msg)
    return (None if rows.size == adata.n_obs else rows), label


def _package_version() -> str:
    try:
        return version("biomarkers")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


def score_signatures(
    adata: AnnData,
    *,
    gene_sets: GeneSetsLike,
    layer: str | None = None,
    ctrl_size: int = 50,
    n_bins: int = 25,
    seed: int | None = 0,
    mask: ArrayLike | str | None = None,
    key_added: str = _keys.SIG_SCORES,
    min_genes: int = 1,
    on_missing: Literal["raise", "warn"] = "raise",
    copy: bool = False,
) -> AnnData | None:
    """Score gene sets in each cell: mean expression of the set minus that of expression-matched control genes.

    This is the algorithm of Seurat's ``AddModuleScore`` (Tirosh et al. 2016 Science; Satija et al. 2015) as
    implemented by :func:`scanpy.tl.score_genes` (``ctrl_as_ref=True``): genes are split into ``n_bins`` bins by
    average expression (``rank(method="min") // round(n_genes / (n_bins - 1))``); for each bin that holds a set
    gene, ``ctrl_size`` genes of that bin are drawn, the set's own genes are removed, and the score is the mean of
    the set's genes minus the mean of the union of control genes. All sets are scored at once as one product
    ``X @ W`` with ``W`` a genes x sets weight matrix (``+1/n_set`` on set genes, ``-1/n_ctrl`` on controls), in row
    chunks that never densify a sparse ``X``. Control genes are drawn as scanpy draws them (a fresh
    ``RandomState(seed)`` per set) but from each bin's genes sorted by name: scores equal scanpy's (to float
    precision) when ``var_names`` are sorted, and in any gene order they agree with scanpy as closely as scanpy agrees
    with itself under another seed. Unlike scanpy's, they do not depend on the order of genes, cells or sets.

    With ``mask``, only the selected cells are scored and the expression bins are computed within them, exactly as
    scoring the subset ``adata[mask]`` with scanpy; other cells get NaN. Score a program in the cells it describes
    (e.g. ``AQP9_INFLAMMATORY_MACROPHAGE`` within mononuclear phagocytes: AQP9 is also a neutrophil gene).

    Parameters
    ----------
    adata
        Cells x genes; ``var_names`` are gene symbols (aliases are resolved, see :func:`resolve_genes`).
    gene_sets
        Set names (from :func:`list_gene_sets`), ``{name: GeneSet}`` from :func:`load_gene_sets`, or
        ``{name: [genes]}``.
    layer
        Layer with log-normalised expression; `None` uses ``adata.X``.
    ctrl_size
        Control genes drawn per expression bin.
    n_bins
        Number of expression bins.
    seed
        Seed of the control-gene draws (`None`: not reproducible).
    mask
        Boolean per cell (or the name of a boolean obs column): cells to score; the others get NaN.
    key_added
        ``adata.obsm`` key of the cells x sets score table; new sets are added to an existing table.
    min_genes
        Minimum number of a set's genes present in the data for it to be scored.
    on_missing
        A set with fewer than ``min_genes`` genes present: ``"raise"`` a :class:`DataSchemaError`, or ``"warn"``
        and skip it.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    `None`, or the copy if ``copy=True``. Sets ``adata.obs['sig__<set>']`` (float; NaN outside ``mask``),
    ``adata.obsm[key_added]`` (cells x sets DataFrame) and ``adata.uns['bm']['signatures']`` = ``{"params",
    "coverage", "version"}`` (coverage per set: genes found/missing/aliased, number of control genes and of cells).

    Examples
    --------
    >>> import numpy as np, anndata as ad, scipy.sparse as sp
    >>> from biomarkers.signatures import score_signatures
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(sp.csr_matrix(np.log1p(rng.poisson(1.0, (40, 200)).astype("float32"))))
    >>> adata.var_names = [f"G{i}" for i in range(200)]
    >>> score_signatures(adata, gene_sets={"MY_SET": ["G1", "G2", "G3"]}, ctrl_size=20)
    >>> adata.obsm["sig_scores"].shape
    (40, 1)
    """
    start = time.perf_counter()
    if on_missing not in ("raise", "warn"):
        msg = f"on_missing={on_missing!r} is not allowed; use 'raise' or 'warn'."
        raise DataSchemaError(msg)
    if ctrl_size < 1 or n_bins < 2 or min_genes < 1:
        msg = f"Need ctrl_size >= 1, n_bins >= 2, min_genes >= 1; found {ctrl_size}, {n_bins}, {min_genes}."
        raise DataSchemaError(msg)
    adata = adata.copy() if copy else adata
    sets = as_gene_sets(gene_sets)
    x = _matrix(adata, layer)
    var_names = np.asarray(adata.var_names.astype(str))
    if not adata.var_names.is_unique:
        msg = "adata.var_names are not unique; signature genes would be ambiguous. Call adata.var_names_make_unique()."
        raise DataSchemaError(msg)
    rows, mask_label = _mask_rows(adata, mask)
    _warn_if_counts(x, layer)

    coverage = coverage_report(sets, var_names).set_index("set")
    resolver = resolver_for(var_names)
    index = pd.Index(var_names)
    to_score: dict[str, NDArray[np.intp]] = {}
    for name, gs in sets.items():
        mapping, _ = resolver.resolve(gs.genes)
        if len(mapping) >= min_genes:
            to_score[name] = np.unique(index.get_indexer(list(mapping.values())))
            continue
        example = ", ".join(map(str, var_names[:3]))
        hint = (
            "Were genes named with Ensembl IDs? Map var_names to HGNC symbols"
            if len(mapping) == 0
            else f"Lower min_genes (now {min_genes})"
        )
        msg = (
            f"Gene set {name!r}: {len(mapping)}/{len(gs.genes)} genes found in var_names (e.g. {example}). "
            f"{hint}, or pass on_missing='warn' to skip the set."
        )
        if on_missing == "raise":
            raise DataSchemaError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    if not to_score:
        msg = f"None of the {len(sets)} gene set(s) could be scored (see warnings). Check var_names are HGNC symbols."
        raise DataSchemaError(msg)

    means = _gene_means(x, rows)
    controls = control_genes(means, var_names, to_score, ctrl_size=ctrl_size, n_bins=n_bins, seed=seed)
    weights = np.zeros((len(var_names), len(to_score)), dtype=np.float64)
    n_ctrl: dict[str, int] = {}
    for j, (name, set_idx) in enumerate(to_score.items()):
        ctrl = controls[name]
        weights[set_idx, j] += 1.0 / set_idx.size
        weights[ctrl, j] -= 1.0 / ctrl.size
        n_ctrl[name] = int(ctrl.size)

    used = np.flatnonzero(np.any(weights != 0, axis=1))
    blocks = [
        (chunk @ weights) if sp.issparse(chunk) else chunk[:, used].astype(np.float64) @ weights[used]
        for chunk in _row_chunks(x, rows)
    ]
    values = np.full((adata.n_obs, len(to_score)), np.nan)
    values[slice(None) if rows is None else rows] = np.vstack(blocks)
    n_cells = adata.n_obs if rows is None else rows.size
    _write(adata, values, list(to_score), key_added=key_added)
    coverage["n_ctrl"] = pd.Series(n_ctrl, dtype="float64")
    coverage["n_cells"] = np.where(coverage.index.isin(list(to_score)), n_cells, 0)
    coverage["scored"] = coverage.index.isin(list(to_score))
    params = {
        "gene_sets": list(sets),
        "layer": layer if layer is not None else "X",
        "ctrl_size": ctrl_size,
        "n_bins": n_bins,
        "seed": -1 if seed is None else seed,
        "mask": mask_label,
        "n_cells_scored": n_cells,
        "key_added": key_added,
        "min_genes": min_genes,
        "on_missing": on_missing,
        "method": "scanpy.tl.score_genes algorithm (ctrl_as_ref=True), vectorised X @ W",
    }
    _record(adata, params=params, coverage=coverage.reset_index())
    for name, row in coverage.iterrows():
        if row["aliased"]:
            logger.info("score_signatures: %s matched by alias/case: %s", name, row["aliased"])
    logger.info(
        "score_signatures: %d sets scored in %d cells -> adata.obs['%s*'], adata.obsm['%s'] (%.1f s)",
        len(to_score),
        n_cells,
        _keys.SIG_PREFIX,
        key_added,
        time.perf_counter() - start,
    )
    return adata if copy else None


def _write(adata: AnnData, values: NDArray[np.float64], names: list[str], *, key_added: str) -> None:
    table = pd.DataFrame(values, index=adata.obs_names, columns=names)
    for name in names:
        adata.obs[_keys.SIG_PREFIX + name] = table[name].to_numpy()
    old = adata.obsm.get(key_added)
    if isinstance(old, pd.DataFrame) and old.index.equals(adata.obs_names):
        # Keep the sets scored by earlier calls (e.g. another compartment's mask); re-scored sets are replaced.
        table = pd.concat([old.drop(columns=[c for c in names if c in old.columns]), table], axis=1)
    adata.obsm[key_added] = table


def _record(adata: AnnData, *, params: dict[str, object], coverage: pd.DataFrame) -> None:
    bm = adata.uns.setdefault(_keys.BM, {})
    old = bm.get(STEP, {}).get("coverage")
    if isinstance(old, pd.DataFrame) and "set" in old.columns:
        coverage = pd.concat([old[~old["set"].isin(coverage["set"])], coverage], ignore_index=True)
    versions = {"biomarkers": _package_version()}
    versions.update({name: row["sha256"] for name, row in _manifest().items()})
    bm[STEP] = {"params": params, "coverage": coverage, "version": versions}
