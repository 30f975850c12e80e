"""A faster PyDESeq2 inference back-end: dispersions by a grid search vectorised over genes.

PyDESeq2 fits each gene's dispersion with its own scipy L-BFGS-B call (its whole fit takes ~2 ms per gene on one
core in ``benchmarks/deseq2_inference.py``, more under load; L-BFGS-B is slower and less stable since the
scipy >= 1.15 rewrite, scverse/PyDESeq2#391, scipy/scipy#23161). Its
documented fallback for genes where L-BFGS-B fails is a 1-D grid search on log(alpha): a coarse grid over
``[min_disp, max_disp]`` then a fine grid around the best point (``pydeseq2.grid_search.grid_fit_alpha``). Here that
same grid search, with the same loss (negative binomial likelihood + Cox-Reid adjustment + the optional log-normal
prior of the MAP step), is run for every gene at once with numpy; IRLS and the Wald test are vectorised over genes
too. The fine grid resolves log(alpha) to ~0.005, far below the estimate's standard error with tens of samples.
Everything else (size factors, trend, prior, Cook's distances, independent filtering) is PyDESeq2's own.

Opt-in: DE method ``deseq2_fast`` (config ``discovery.method: deseq2_fast``); the default ``deseq2`` uses PyDESeq2's
``DefaultInference``. The whole fit of one compartment of the default simulated cohort (40 patients x 2,000 genes)
is 6-10x faster (``benchmarks/deseq2_inference.py``). It overrides ``DefaultInference`` methods, so the ``discover``
extra pins pydeseq2 to the tested 0.5 line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import gammaln

COARSE_GRID = 30
FINE_GRID = 15
_GENE_CHUNK = 256


def _loss(
    log_alpha: np.ndarray,
    *,
    counts: np.ndarray,
    mu: np.ndarray,
    design: np.ndarray,
    log_alpha_hat: np.ndarray,
    prior_disp_var: float | None,
    cr_reg: bool,
) -> np.ndarray:
    """Loss per gene and grid point; ``log_alpha`` is genes x grid, ``counts``/``mu`` samples x genes."""
    alpha = np.exp(log_alpha)[None, :, :]  # 1 x G x K
    y = counts[:, :, None]
    m = mu[:, :, None]
    inv = 1.0 / alpha
    # gammaln(y + 1) and y * log(mu) do not depend on alpha, so they are left out of the minimised loss.
    nll = (inv * np.log(alpha) - gammaln(y + inv) + gammaln(inv) + (y + inv) * np.log(m + inv)).sum(axis=0)  # G x K
    if cr_reg:
        w = m / (1.0 + m * alpha)  # n x G x K
        n, p = design.shape
        outer = (design[:, :, None] * design[:, None, :]).reshape(n, p * p)
        info = (w.reshape(n, -1).T @ outer).reshape(*w.shape[1:], p, p)  # one BLAS call for every X'WX
        nll = nll + 0.5 * np.linalg.slogdet(info)[1]
    if prior_disp_var is not None:
        nll = nll + (log_alpha - log_alpha_hat[:, None]) ** 2 / (2.0 * prior_disp_var)
    return nll


def grid_alpha_mle(
    counts: np.ndarray,
    *,
    design_matrix: np.ndarray,
    mu: np.ndarray,
    alpha_hat: np.ndarray,
    min_disp: float,
    max_disp: float,
    prior_disp_var: float | None = None,
    cr_reg: bool = True,
    prior_reg: bool = False,
    coarse: int = COARSE_GRID,
    fine: int = FINE_GRID,
) -> np.ndarray:
    """Dispersion per gene by PyDESeq2's coarse-then-fine grid search on log(alpha), vectorised over genes.

    A final parabola through the best fine-grid point and its neighbours refines the minimum.

    Parameters
    ----------
    counts
        Samples x genes raw counts.
    design_matrix
        Samples x coefficients.
    mu
        Samples x genes fitted means.
    alpha_hat
        Per-gene centre of the prior (MAP step only).
    min_disp, max_disp
        Bounds of the dispersion.
    prior_disp_var
        Variance of the log-normal prior (MAP step only).
    cr_reg
        Add the Cox-Reid adjustment.
    prior_reg
        Add the prior (MAP step).
    coarse, fine
        Points of the coarse grid over the bounds and of the fine grid around its best point.

    Returns
    -------
    Dispersion per gene.
    """
    counts = np.asarray(counts, dtype=float)
    mu = np.asarray(mu, dtype=float)
    design = np.asarray(design_matrix, dtype=float)
    log_hat = np.log(np.asarray(alpha_hat, dtype=float))
    var = prior_disp_var if prior_reg else None
    lo, hi = np.log(min_disp), np.log(max_disp)
    grid = np.linspace(lo, hi, coarse)
    delta = grid[1] - grid[0]
    offsets = np.linspace(-delta, delta, fine)
    step = offsets[1] - offsets[0]
    out = np.empty(counts.shape[1])
    for start in range(0, counts.shape[1], _GENE_CHUNK):
        sl = slice(start, start + _GENE_CHUNK)
        kw: dict[str, Any] = {
            "counts": counts[:, sl], "mu": mu[:, sl], "design": design, "log_alpha_hat": log_hat[sl],
            "prior_disp_var": var, "cr_reg": cr_reg,
        }  # fmt: skip
        rows = np.arange(counts[:, sl].shape[1])
        coarse_grid = np.broadcast_to(grid, (rows.size, coarse))
        best = coarse_grid[rows, np.argmin(_loss(coarse_grid, **kw), axis=1)]
        fine_grid = best[:, None] + offsets[None, :]
        fine_loss = _loss(fine_grid, **kw)
        i = np.clip(np.argmin(fine_loss, axis=1), 1, fine - 2)
        f0, f1, f2 = fine_loss[rows, i - 1], fine_loss[rows, i], fine_loss[rows, i + 1]
        curv = f0 - 2 * f1 + f2
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(curv > 0, 0.5 * step * (f0 - f2) / curv, 0.0)
        out[sl] = np.clip(fine_grid[rows, i] + np.clip(shift, -step, step), lo, hi)
    return np.exp(out)


def _nb_nll(counts: np.ndarray, mu: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """PyDESeq2's ``nb_nll`` per gene (columns), vectorised."""
    inv = 1.0 / disp[None, :]
    logbinom = gammaln(counts + inv) - gammaln(counts + 1.0) - gammaln(inv)
    n = counts.shape[0]
    return n * inv[0] * np.log(disp) + (-logbinom + (counts + inv) * np.log(inv + mu) - counts * np.log(mu)).sum(axis=0)


def batch_irls(
    counts: np.ndarray,
    *,
    size_factors: np.ndarray,
    design_matrix: np.ndarray,
    disp: np.ndarray,
    min_mu: float,
    beta_tol: float,
    max_beta: float = 30,
    maxiter: int = 250,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyDESeq2's IRLS (``utils.irls_solver``) run for all genes at once.

    Same start (least squares on log counts), updates, ridge and stopping rule; each gene stops at its own
    iteration. Genes that PyDESeq2 would hand to its L-BFGS-B fallback (a coefficient beyond ``max_beta`` or
    ``maxiter`` reached) are flagged so the caller can fit them with PyDESeq2's solver.

    Returns
    -------
    ``beta`` (genes x coefficients), ``mu`` (samples x genes, unthresholded), hat diagonals (samples x genes),
    ``converged`` and ``fallback`` (genes).
    """
    X = np.asarray(design_matrix, dtype=float)
    y = np.asarray(counts, dtype=float)
    sf = np.asarray(size_factors, dtype=float)[:, None]
    n_genes, p = y.shape[1], X.shape[1]
    ridge = 1e-6 * np.eye(p)
    if np.linalg.matrix_rank(X) == p:
        q, r = np.linalg.qr(X)
        beta = np.linalg.solve(r, q.T @ np.log(y / sf + 0.1)).T
    else:
        beta = np.zeros((n_genes, p))
        beta[:, 0] = np.log(y / sf).mean(axis=0)
    mu = np.maximum(sf * np.exp(X @ beta.T), min_mu)
    dev = np.full(n_genes, 1000.0)
    active = np.ones(n_genes, dtype=bool)
    fallback = np.zeros(n_genes, dtype=bool)
    it = 0
    while active.any():
        a = np.flatnonzero(active)
        w = mu[:, a] / (1.0 + mu[:, a] * disp[a])
        z = np.log(mu[:, a] / sf) + (y[:, a] - mu[:, a]) / mu[:, a]
        h = np.einsum("ip,ig,iq->gpq", X, w, X) + ridge
        beta_hat = np.linalg.solve(h, np.einsum("ip,ig->gp", X, w * z)[:, :, None])[:, :, 0]
        it += 1
        bad = (np.abs(beta_hat) > max_beta).any(axis=1) | (it >= maxiter)
        fallback[a[bad]] = True
        ok = a[~bad]
        beta[ok] = beta_hat[~bad]
        mu[:, ok] = np.maximum(sf * np.exp(X @ beta[ok].T), min_mu)
        new_dev = -2.0 * _nb_nll(y[:, ok], mu[:, ok], disp[ok])
        ratio = np.abs(new_dev - dev[ok]) / (np.abs(new_dev) + 0.1)
        dev[ok] = new_dev
        active[a[bad]] = False
        active[ok[ratio <= beta_tol]] = False
    w = mu / (1.0 + mu * disp[None, :])
    inv = np.linalg.inv(np.einsum("ip,ig,iq->gpq", X, w, X) + ridge)
    hat = w * np.einsum("ip,gpq,iq->ig", X, inv, X)
    return beta, sf * np.exp(X @ beta.T), hat, ~fallback, fallback


def batch_wald(
    design_matrix: np.ndarray,
    *,
    disp: np.ndarray,
    lfc: np.ndarray,
    mu: np.ndarray,
    ridge_factor: np.ndarray,
    contrast: np.ndarray,
    lfc_null: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyDESeq2's two-sided Wald test (``utils.wald_test``) for all genes at once; returns p-values, stats, SEs."""
    from scipy.stats import norm

    X = np.asarray(design_matrix, dtype=float)
    w = mu / (1.0 + mu * np.asarray(disp, dtype=float)[None, :])
    m = np.einsum("ip,ig,iq->gpq", X, w, X)
    hc = np.linalg.inv(m + ridge_factor) @ np.asarray(contrast, dtype=float)
    se = np.sqrt(np.einsum("gp,gpq,gq->g", hc, m, hc))
    stat = ((np.asarray(lfc, dtype=float) - lfc_null) @ contrast) / se
    return 2 * norm.sf(np.abs(stat)), stat, se


def fast_inference(n_cpus: int = 1) -> Any:
    """Build a ``pydeseq2`` ``DefaultInference`` whose dispersion, IRLS and Wald steps run vectorised over genes.

    Parameters
    ----------
    n_cpus
        Processes for the remaining per-gene steps (IRLS, Wald tests); 1 avoids process start-up costs.

    Returns
    -------
    An inference object for ``DeseqDataSet(inference=...)`` and ``DeseqStats(inference=...)``.
    """
    from biomarkers._optional import require

    require("pydeseq2", "discover", purpose="fast_inference (DESeq2)")
    from pydeseq2.default_inference import DefaultInference

    class _GridInference(DefaultInference):
        def alpha_mle(
            self,
            counts: np.ndarray,
            design_matrix: np.ndarray,
            mu: np.ndarray,
            alpha_hat: np.ndarray,
            min_disp: float,
            max_disp: float,
            prior_disp_var: float | None = None,
            cr_reg: bool = True,  # noqa: FBT001, FBT002 - PyDESeq2's signature
            prior_reg: bool = False,  # noqa: FBT001, FBT002
            optimizer: str = "L-BFGS-B",  # noqa: ARG002
        ) -> tuple[np.ndarray, np.ndarray]:
            disp = grid_alpha_mle(
                counts, design_matrix=design_matrix, mu=mu, alpha_hat=alpha_hat, min_disp=min_disp,
                max_disp=max_disp, prior_disp_var=prior_disp_var, cr_reg=cr_reg, prior_reg=prior_reg,
            )  # fmt: skip
            return disp, np.ones(disp.shape, dtype=bool)

        def irls(
            self,
            counts: np.ndarray,
            size_factors: np.ndarray,
            design_matrix: np.ndarray,
            disp: np.ndarray,
            min_mu: float,
            beta_tol: float,
            min_beta: float = -30,
            max_beta: float = 30,
            optimizer: str = "L-BFGS-B",
            maxiter: int = 250,
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            from pydeseq2.utils import irls_solver

            beta, mu, hat, converged, fallback = batch_irls(
                counts, size_factors=size_factors, design_matrix=design_matrix, disp=np.asarray(disp, dtype=float),
                min_mu=min_mu, beta_tol=beta_tol, max_beta=max_beta, maxiter=maxiter,
            )  # fmt: skip
            for g in np.flatnonzero(fallback):  # rare: PyDESeq2's own solver with its L-BFGS-B / grid fallback
                b, m, h, c = irls_solver(
                    counts=counts[:, g], size_factors=size_factors, design_matrix=design_matrix, disp=disp[g],
                    min_mu=min_mu, beta_tol=beta_tol, min_beta=min_beta, max_beta=max_beta, optimizer=optimizer,
                    maxiter=maxiter,
                )  # fmt: skip
                beta[g], mu[:, g], hat[:, g], converged[g] = b, m, h, c
            return beta, mu, hat, converged

        def wald_test(
            self,
            design_matrix: np.ndarray,
            disp: np.ndarray,
            lfc: np.ndarray,
            mu: np.ndarray,
            ridge_factor: np.ndarray,
            contrast: np.ndarray,
            lfc_null: np.ndarray,
            alt_hypothesis: str | None = None,
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if alt_hypothesis is not None:
                return super().wald_test(design_matrix, disp, lfc, mu, ridge_factor, contrast, lfc_null, alt_hypothesis)
            return batch_wald(
                design_matrix,
                disp=disp,
                lfc=lfc,
                mu=mu,
                ridge_factor=ridge_factor,
                contrast=contrast,
                lfc_null=lfc_null,
            )

    return _GridInference(n_cpus=n_cpus)
