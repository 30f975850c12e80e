"""Gamma-Poisson (negative binomial) UMI counts for a block of cells that share one mean profile.

Genes whose expected count is high enough for overdispersion to matter are drawn densely as Poisson(mu * G),
G ~ Gamma(1/phi, phi) (so counts are NB with mean mu and variance mu + phi mu^2), a chunk of cells at a time.
Below HIGH_MIN expected UMIs the NB is within a few percent of a Poisson, so those genes are drawn as Poisson:
each cell's total over them, then a multinomial allocation over the genes. Cost grows with cells x expressed
genes plus UMIs, not cells x panel size, which keeps 20,000-gene panels fast.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

# Gene-wise NB dispersion classes (phi) and how often each occurs; a few classes let every draw use a scalar
# gamma shape, which numpy samples several times faster than an array of shapes.
DISPERSIONS: tuple[float, ...] = (0.05, 0.15, 0.4, 1.0)
DISPERSION_WEIGHTS: tuple[float, ...] = (0.25, 0.35, 0.3, 0.1)
HIGH_MIN = 0.1  # expected UMIs per cell (at the block's median depth) above which a gene is drawn as NB
CHUNK_ENTRIES = 2_000_000  # cells x genes per dense chunk


def _sample_group(
    rng: np.random.Generator,
    prob: np.ndarray,
    cols: np.ndarray,
    disp: np.ndarray,
    scale: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Draw counts of one gene group (mean = scale[c] * prob[g]); return COO row, column and value parts."""
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    vals_out: list[np.ndarray] = []
    n = scale.shape[0]
    high = prob * np.median(scale) >= HIGH_MIN
    for k, phi in enumerate(DISPERSIONS):
        sel = high & (disp == k)
        if not sel.any():
            continue
        p_k, c_k = prob[sel], cols[sel]
        step = max(1, CHUNK_ENTRIES // p_k.size)
        for start in range(0, n, step):
            stop = min(n, start + step)
            mu = scale[start:stop, None] * p_k[None, :]
            gamma = rng.standard_gamma(1.0 / phi, size=mu.shape, dtype=np.float32)
            counts = rng.poisson(mu * (gamma * phi))
            r, c = np.nonzero(counts)
            rows_out.append(r + start)
            cols_out.append(c_k[c])
            vals_out.append(counts[r, c])
    low = ~high
    total = prob[low].sum()
    if total > 0:
        per_cell = rng.poisson(scale * total)
        n_umis = int(per_cell.sum())
        if n_umis:
            genes = rng.choice(cols[low], size=n_umis, p=prob[low] / total)
            rows_out.append(np.repeat(np.arange(n), per_cell))
            cols_out.append(genes)
            vals_out.append(np.ones(n_umis, dtype=np.int64))
    return rows_out, cols_out, vals_out


def sample_block(
    rng: np.random.Generator,
    *,
    nonmt: np.ndarray,
    mt: np.ndarray,
    is_mt: np.ndarray,
    disp: np.ndarray,
    depth_nonmt: np.ndarray,
    depth_mt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the NB counts of a block of cells as COO triplets.

    Parameters
    ----------
    rng
        Random generator.
    nonmt
        Relative expression over the non-MT genes (sums to 1).
    mt
        Relative expression over the MT genes (sums to 1).
    is_mt
        MT mask over the panel.
    disp
        Dispersion class (index into `DISPERSIONS`) of every panel gene.
    depth_nonmt, depth_mt
        Expected non-MT and MT UMIs of every cell.

    Returns
    -------
    Row (cell within the block), column (panel gene) and count arrays; a (row, column) pair may repeat, and
    repeated counts add up (as in a COO matrix).
    """
    genes = np.arange(is_mt.size)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for prob, mask, depth in ((nonmt, ~is_mt, depth_nonmt), (mt, is_mt, depth_mt)):
        r, c, v = _sample_group(rng, prob, genes[mask], disp[mask], depth)
        rows += r
        cols += c
        vals += v
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


class RowStack:
    """Row-wise CSR stacking into growable buffers.

    Buffers grow in place (realloc, which large allocations do by remapping pages), so the cohort never holds the
    per-sample blocks and the stacked matrix at the same time.
    """

    def __init__(self, n_genes: int) -> None:
        self.n_genes = n_genes
        self.data = np.empty(1 << 20, dtype=np.float32)
        self.indices = np.empty(1 << 20, dtype=np.int32)  # column indices; upcast only if nnz needs int64
        self.indptr: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0

    def append(self, block: sparse.csr_matrix) -> None:
        need = self.nnz + block.nnz
        if need > self.data.size:
            size = max(need, int(self.data.size * 1.5))
            self.data.resize(size, refcheck=False)
            self.indices.resize(size, refcheck=False)
        self.data[self.nnz : need] = block.data
        self.indices[self.nnz : need] = block.indices
        self.indptr.append(block.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz = need

    def finish(self) -> sparse.csr_matrix:
        self.data.resize(self.nnz, refcheck=False)
        self.indices.resize(self.nnz, refcheck=False)
        indptr = np.concatenate(self.indptr)
        indices = self.indices
        if self.nnz <= np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        else:
            indices = indices.astype(np.int64)
        shape = (indptr.size - 1, self.n_genes)
        return sparse.csr_matrix((self.data, indices, indptr), shape=shape, copy=False)
