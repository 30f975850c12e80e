"""Gene sets: the package's published sets (with citations) and user files (TSV or GMT)."""

from __future__ import annotations

import csv
import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from biomarkers._errors import ConfigError, DataSchemaError

if TYPE_CHECKING:
    from os import PathLike
    from typing import TypeAlias

    #: What the ``gene_sets`` argument accepts: set names, ``{name: GeneSet}``, ``{name: [genes]}`` or GeneSets.
    GeneSetsLike: TypeAlias = (
        "Mapping[str, GeneSet | Iterable[str]] | Sequence[str] | Iterable[GeneSet] | GeneSet | str"
    )

logger = logging.getLogger("biomarkers")

PACKAGE_GENE_SETS = "gene_sets.tsv"
MANIFEST = "manifest.tsv"
TSV_COLUMNS = ("set", "gene", "role", "source")
USER_ROLE = "user"
# Set names become obs keys and feature-name segments (`sig__<set>`): LightGBM and h5ad restrict characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class GeneSet:
    """A named gene set with its role and citation.

    Parameters
    ----------
    name
        Set name; used as ``obs`` key suffix (``sig__<name>``), so only ``[A-Za-z0-9_.-]``.
    genes
        HGNC symbols, in the order of the source, without duplicates.
    role
        What the set is for (e.g. ``"primary: ..."``, ``"comparator: ..."``).
    source
        Citation (paper, database and version) the gene list comes from.

    Examples
    --------
    >>> from biomarkers.signatures import GeneSet
    >>> gs = GeneSet("MY_SET", ("AQP9", "IL1B"), role="user", source="my screen")
    >>> gs.genes
    ('AQP9', 'IL1B')
    """

    name: str
    genes: tuple[str, ...] = field(default_factory=tuple)
    role: str = field(default="", kw_only=True)
    source: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            msg = (
                f"Gene set name {self.name!r} is not allowed: it becomes an obs key and a feature name, so use only "
                "letters, digits and _ . - (e.g. MY_SIGNATURE)."
            )
            raise ConfigError(msg)
        # Tuple, stripped, de-duplicated (order kept): frozen, so set through object.__setattr__.
        genes = tuple(dict.fromkeys(g.strip() for g in self.genes if isinstance(g, str) and g.strip()))
        object.__setattr__(self, "genes", genes)

    def __len__(self) -> int:
        return len(self.genes)


def _data_dir() -> Path:
    return Path(str(files("biomarkers.signatures").joinpath("data")))


@functools.cache
def _manifest() -> dict[str, dict[str, str]]:
    """Rows of ``data/manifest.tsv``: file -> {sha256, origin, description}."""
    table = pd.read_csv(_data_dir() / MANIFEST, sep="\t", dtype=str, keep_default_na=False)
    return {row["file"]: row for row in table.to_dict(orient="records")}


def data_version() -> dict[str, str]:
    """sha256 of each data file of the package (``file -> sha256``), as recorded in ``data/manifest.tsv``."""
    return {name: row["sha256"] for name, row in _manifest().items()}


def _read_tsv(path: Path, *, default_source: str) -> dict[str, GeneSet]:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in ("set", "gene") if c not in table.columns]
    if missing:
        msg = (
            f"Gene-set file {path} lacks column(s) {', '.join(missing)} (have: {', '.join(table.columns)}). "
            f"Use a TSV with header {chr(9).join(TSV_COLUMNS)}, or a .gmt file."
        )
        raise DataSchemaError(msg)
    out: dict[str, GeneSet] = {}
    for name, rows in table.groupby("set", sort=False):
        role = _first_nonempty(rows, "role") or USER_ROLE
        source = _first_nonempty(rows, "source") or default_source
        out[str(name).strip()] = GeneSet(str(name).strip(), tuple(rows["gene"]), role=role, source=source)
    return out


def _first_nonempty(rows: pd.DataFrame, col: str) -> str:
    if col not in rows.columns:
        return ""
    values = [v.strip() for v in rows[col] if v.strip()]
    return values[0] if values else ""


def _read_gmt(path: Path, *, default_source: str) -> dict[str, GeneSet]:
    out: dict[str, GeneSet] = {}
    with path.open(newline="") as fh:
        for lineno, fields in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not fields or not fields[0].strip() or fields[0].startswith("#"):
                continue
            if len(fields) < 3:
                msg = (
                    f"GMT file {path}, line {lineno}: {len(fields)} field(s) found, need "
                    "name<TAB>description<TAB>gene... Fix the line or remove it."
                )
                raise DataSchemaError(msg)
            name, description, genes = fields[0].strip(), fields[1].strip(), fields[2:]
            source = description if description and description.lower() != "na" else default_source
            out[name] = GeneSet(name, tuple(genes), role=USER_ROLE, source=source)
    return out


def read_gene_set_file(path: str | PathLike[str]) -> dict[str, GeneSet]:
    """Read one gene-set file: TSV (``set, gene[, role, source]``) or GMT (``.gmt``).

    Parameters
    ----------
    path
        File to read. ``.gmt`` files are read as GMT (``name<TAB>description<TAB>gene1<TAB>...``; the description
        becomes the source); anything else as TSV with a header.

    Returns
    -------
    Sets by name, in file order.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Gene-set file {path} not found. Check the path (relative paths are resolved from {Path.cwd()})."
        raise ConfigError(msg)
    default_source = path.name
    sets = (
        _read_gmt(path, default_source=default_source)
        if path.suffix.lower() == ".gmt"
        else _read_tsv(path, default_source=default_source)
    )
    if not sets:
        msg = f"Gene-set file {path} contains no gene sets. Add rows (TSV) or lines (GMT)."
        raise DataSchemaError(msg)
    return sets


@functools.cache
def _package_sets() -> dict[str, GeneSet]:
    path = _data_dir() / PACKAGE_GENE_SETS
    return _read_tsv(path, default_source=PACKAGE_GENE_SETS)


def _catalogue(path: str | PathLike[str] | Sequence[str | PathLike[str]] | None) -> dict[str, GeneSet]:
    sets = dict(_package_sets())
    if path is None:
        return sets
    paths = [path] if isinstance(path, str | Path) or not isinstance(path, Sequence) else list(path)
    for p in paths:
        for name, gs in read_gene_set_file(p).items():
            if name in sets and sets[name] != gs:
                msg = (
                    f"Gene set {name!r} in {p} clashes with a set of the same name (package or earlier file) with "
                    "different content. Rename it in your file (e.g. prefix it with the experiment name)."
                )
                raise ConfigError(msg)
            sets[name] = gs
    return sets


def load_gene_sets(
    names: Sequence[str] | None = None, *, path: str | PathLike[str] | Sequence[str | PathLike[str]] | None = None
) -> dict[str, GeneSet]:
    """Load gene sets by name: the package's published sets plus any user files.

    Parameters
    ----------
    names
        Set names to return, in this order. `None` returns every set of the catalogue.
    path
        One or more user gene-set files (TSV ``set, gene, role, source`` or GMT) added to the package's sets,
        e.g. a signature discovered by an experiment. A user set may not reuse a package set's name with other genes.

    Returns
    -------
    ``{name: GeneSet}``.

    Raises
    ------
    ConfigError
        A requested name is not in the catalogue (the message lists the available names).

    Examples
    --------
    >>> from biomarkers.signatures import load_gene_sets
    >>> gs = load_gene_sets(["AQP9_INFLAMMATORY_MACROPHAGE"])
    >>> gs["AQP9_INFLAMMATORY_MACROPHAGE"].source.startswith("Martin et al. 2019")
    True
    """
    catalogue = _catalogue(path)
    if names is None:
        return catalogue
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        msg = (
            f"Unknown gene set(s): {', '.join(unknown)}. Available: {', '.join(catalogue)}. "
            "Fix the name, or add a gene-set file with path=..."
        )
        raise ConfigError(msg)
    return {n: catalogue[n] for n in names}


def list_gene_sets(*, path: str | PathLike[str] | Sequence[str | PathLike[str]] | None = None) -> pd.DataFrame:
    """Table of the available gene sets.

    Parameters
    ----------
    path
        Optional user gene-set file(s), as in :func:`load_gene_sets`.

    Returns
    -------
    One row per set with columns ``set, n_genes, role, source``.

    Examples
    --------
    >>> from biomarkers.signatures import list_gene_sets
    >>> list(list_gene_sets().columns)
    ['set', 'n_genes', 'role', 'source']
    """
    rows = [
        {"set": gs.name, "n_genes": len(gs.genes), "role": gs.role, "source": gs.source}
        for gs in _catalogue(path).values()
    ]
    return pd.DataFrame(rows, columns=["set", "n_genes", "role", "source"])


def write_gene_sets(path: str | PathLike[str], *, gene_sets: Mapping[str, GeneSet] | Iterable[GeneSet]) -> Path:
    """Write gene sets to a TSV (``set, gene, role, source``) or, for a ``.gmt`` path, a GMT file.

    Parameters
    ----------
    path
        Output file; the format follows the suffix.
    gene_sets
        Sets to write (e.g. a discovered signature), readable again with ``load_gene_sets(path=...)``.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    sets = list(gene_sets.values()) if isinstance(gene_sets, Mapping) else list(gene_sets)
    if path.suffix.lower() == ".gmt":
        lines = ["\t".join([gs.name, gs.source or "NA", *gs.genes]) for gs in sets]
        path.write_text("\n".join(lines) + "\n")
    else:
        rows = [(gs.name, g, gs.role, gs.source) for gs in sets for g in gs.genes]
        pd.DataFrame(rows, columns=list(TSV_COLUMNS)).to_csv(path, sep="\t", index=False)
    return path


def as_gene_sets(gene_sets: GeneSetsLike) -> dict[str, GeneSet]:
    """Normalise the ``gene_sets`` argument of the scoring functions to ``{name: GeneSet}``.

    Accepts a mapping ``name -> GeneSet | list of genes``, a list of set names (loaded from the package), a single
    set name, a single :class:`GeneSet`, or a list of :class:`GeneSet`.
    """
    if isinstance(gene_sets, GeneSet):
        return {gene_sets.name: gene_sets}
    if isinstance(gene_sets, str):
        return load_gene_sets([gene_sets])
    if isinstance(gene_sets, Mapping):
        out: dict[str, GeneSet] = {}
        for name, value in gene_sets.items():
            if isinstance(value, GeneSet):
                out[str(name)] = (
                    value
                    if value.name == name
                    else GeneSet(str(name), value.genes, role=value.role, source=value.source)
                )
            elif isinstance(value, str):
                msg = f"Gene set {name!r} is a string ({value!r}), not a list of genes. Pass {{{name!r}: [{value!r}]}}."
                raise ConfigError(msg)
            else:
                out[str(name)] = GeneSet(str(name), tuple(value), role=USER_ROLE, source=USER_ROLE)
        return out
    if isinstance(gene_sets, Iterable):
        items = list(gene_sets)
        if all(isinstance(x, GeneSet) for x in items):
            return {gs.name: gs for gs in items}
        if all(isinstance(x, str) for x in items):
            return load_gene_sets(items)
    msg = (
        f"gene_sets has an unsupported type ({type(gene_sets).__name__}). Pass set names (list of str), "
        "{name: [genes]} or the dict returned by load_gene_sets()."
    )
    raise ConfigError(msg)
