"""Derive the simulator's shipped reference table once (not used at run time).

Run from the repository root, with the shared data next to the checkout::

    python -m biomarkers.datasets._derive ../shared/data/reference/taurus_pretreatment_inflamed_states_logcpm.csv

It keeps genes with HGNC-style symbols (drops GENCODE clone names such as ``AC000032.1``, Ensembl ids and Cell
Ranger de-duplication suffixes such as ``RGS5-1``), rounds log2(CPM + 1) to 0.1, adds the gene-set genes absent
from the atlas (``CCL3L3``, taken as its paralog CCL3 minus 1), flags every gene the simulator must always
include (gene sets, markers, lineage programs, MT genes) and orders the rest by their highest level.
"""

from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

import pandas as pd

from biomarkers.datasets._genes import REF_STATES, REQUIRED_COL, TABLE_NAME, lineage_genes

GENE_SETS = Path(__file__).parents[1] / "signatures" / "data" / "gene_sets.tsv"
OUT = Path(__file__).parent / "data" / TABLE_NAME
# Genes of the gene sets that the atlas lacks: gene -> (paralog in the atlas, log2 offset).
PARALOGS: dict[str, tuple[str, float]] = {"CCL3L3": ("CCL3", -1.0)}
_CLONE = re.compile(r"\.|^ENSG")


def derive(reference_csv: Path, *, out: Path = OUT) -> pd.DataFrame:
    """Write the compact reference table and return it.

    Parameters
    ----------
    reference_csv
        TAURUS pseudobulk log2(CPM + 1) table, genes x the five reference states.
    out
        Output ``.tsv.gz`` path.

    Returns
    -------
    The table written: genes x (reference states, ``required``).
    """
    ref = pd.read_csv(reference_csv, index_col=0)[list(REF_STATES)]
    names = pd.Series(ref.index, index=ref.index)
    dedup_suffix = names.str.extract(r"^(.+)-\d+$")[0].isin(set(ref.index)) & ~names.str.startswith("MT-")
    keep = ~names.str.contains(_CLONE) & ~dedup_suffix
    table = ref.loc[keep.to_numpy()].copy()
    for gene, (paralog, offset) in PARALOGS.items():
        if gene not in table.index:
            table.loc[gene] = (table.loc[paralog] + offset).clip(lower=0.0)
    gene_sets = pd.read_csv(GENE_SETS, sep="\t")
    required = set(gene_sets["gene"]) | lineage_genes()
    missing = sorted(required - set(table.index))
    if missing:
        msg = f"Reference lacks required genes {missing}; add them to PARALOGS in _derive.py."
        raise SystemExit(msg)
    table = table.round(1)
    table[REQUIRED_COL] = table.index.isin(sorted(required)).astype(int)
    order = table.assign(_max=table[list(REF_STATES)].max(axis=1), _gene=table.index)
    order = order.sort_values([REQUIRED_COL, "_max", "_gene"], ascending=[False, False, True])
    table = table.loc[order.index]
    text = table.to_csv(sep="\t", float_format="%.1f", index_label="gene")
    with out.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(text.encode())
    return table


if __name__ == "__main__":
    derive(Path(sys.argv[1]))
