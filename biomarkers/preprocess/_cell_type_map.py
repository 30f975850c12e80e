"""Author cell-type labels -> our major types: the shipped table, user extensions, and the agreement report.

``data/cell_type_map.tsv`` maps Cell Ontology names (CELLxGENE's ``cell_type``) and common gut-atlas author
labels onto the major types of :mod:`biomarkers._celltypes`. A target is a major type (``macrophage``), a
compartment (``plasma``: the author fixed the compartment, the type within it comes from the markers, e.g. IgA vs
IgG for an isotype-free ``plasma cell``), or ``unassigned`` (a real cell of a type we do not model, such as mast
cells, or no type at all). Labels match case- and whitespace-insensitively (``_`` counts as a space), with a
trailing plural ``s`` dropped when the exact label is not in the table. A label that matches nothing is never
guessed: its cells are left unassigned and reported.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomarkers import _celltypes as CT
from biomarkers._errors import ConfigError

if TYPE_CHECKING:
    from os import PathLike

CELL_TYPE_MAP = "cell_type_map.tsv"
MAP_COLUMNS = ("label", "cell_type")
MISSING_LABEL = "(missing)"  # how a cell without an author label is reported
TARGETS: tuple[str, ...] = (*CT.MAJOR_TYPES, *CT.COMPARTMENTS, CT.UNASSIGNED)
_SPACE_RE = re.compile(r"[\s_]+")

AnnotationMapLike = Mapping[str, str] | str | Path | None


def _table_path() -> Path:
    return Path(str(files("biomarkers.preprocess").joinpath("data").joinpath(CELL_TYPE_MAP)))


def normalize_label(label: str) -> str:
    """Return the matching key of a label: case-folded, whitespace and ``_`` removed."""
    return _SPACE_RE.sub("", str(label).casefold())


def check_annotation_map(mapping: Mapping[str, str], *, where: str = "preprocess.annotation_map") -> dict[str, str]:
    """Validate ``label -> target`` pairs: targets are major types, compartments or ``unassigned``; no label twice."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for label, target in mapping.items():
        label, target = str(label).strip(), str(target).strip()
        if target not in TARGETS:
            msg = (
                f"{where} maps {label!r} to {target!r}, which is not a cell type of this package. "
                f"Use one of: {', '.join(TARGETS)}."
            )
            raise ConfigError(msg)
        key = normalize_label(label)
        if key in seen and out[seen[key]] != target:
            msg = (
                f"{where} maps {seen[key]!r} to {out[seen[key]]!r} and {label!r} to {target!r}: labels match "
                "ignoring case and spaces, so keep one row per label."
            )
            raise ConfigError(msg)
        seen.setdefault(key, label)
        out[label] = target
    return out


def read_annotation_map(path: str | PathLike[str]) -> dict[str, str]:
    """Read a user's ``label -> cell_type`` table (TSV, or CSV when the name ends in ``.csv``).

    Parameters
    ----------
    path
        A file with columns ``label`` and ``cell_type``; ``cell_type`` is a major type, a compartment or
        ``unassigned`` (see ``biomarkers/preprocess/data/cell_type_map.tsv``). Other columns are ignored.

    Returns
    -------
    ``{label: cell_type}``, extending (and for the same label overriding) the package's table.
    """
    path = Path(path)
    if not path.is_file():
        msg = (
            f"preprocess.annotation_map file not found: {path}. Give a TSV/CSV with columns label, cell_type "
            "(an absolute path, or one relative to the working directory)."
        )
        raise ConfigError(msg)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    missing = [c for c in MAP_COLUMNS if c not in table.columns]
    if missing:
        msg = (
            f"preprocess.annotation_map {path} lacks column(s) {', '.join(missing)} (have: "
            f"{', '.join(map(str, table.columns[:8]))}). Give a {'CSV' if sep == ',' else 'TSV'} with a header "
            "row label, cell_type."
        )
        raise ConfigError(msg)
    rows = table[list(MAP_COLUMNS)]
    rows = rows[rows["label"].str.strip() != ""]
    return check_annotation_map(
        dict(zip(rows["label"], rows["cell_type"], strict=True)), where=f"preprocess.annotation_map {path}"
    )


def as_annotation_map(value: AnnotationMapLike) -> dict[str, str]:
    """Normalise an ``annotation_map`` (a mapping, a file path or None) to a validated ``{label: cell_type}``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return check_annotation_map(value)
    return read_annotation_map(value)


@functools.cache
def _package_map() -> dict[str, str]:
    table = pd.read_csv(_table_path(), sep="\t", dtype=str, keep_default_na=False)
    return check_annotation_map(dict(zip(table["label"], table["cell_type"], strict=True)), where=CELL_TYPE_MAP)


def cell_type_map() -> pd.DataFrame:
    """Return the package's author-label table (``label, cell_type, note``), from ``data/cell_type_map.tsv``."""
    return pd.read_csv(_table_path(), sep="\t", dtype=str, keep_default_na=False)


@functools.cache
def table_version() -> str:
    """sha256 of the shipped table, recorded in ``uns['bm']['annotate']`` (the table may change between versions)."""
    return hashlib.sha256(_table_path().read_bytes()).hexdigest()


def _lookup(user: Mapping[str, str]) -> dict[str, str]:
    keys = {normalize_label(k): v for k, v in _package_map().items()}
    keys.update({normalize_label(k): v for k, v in user.items()})  # the user's rows win
    return keys


def map_labels(labels: pd.Series, user: Mapping[str, str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Map each cell's author label to a target.

    Returns
    -------
    ``(targets, used)``: per cell a target of :data:`TARGETS`, or None when the label is not in the table; and one
    row per distinct label (``label, cell_type, n_cells``; ``cell_type`` empty when unknown), most cells first.
    """
    keys = _lookup(user)
    raw = labels.astype(object).where(labels.notna(), MISSING_LABEL).astype(str)
    counts = raw.value_counts(sort=True)
    used: dict[str, str | None] = {}
    for label in counts.index:
        key = normalize_label(label)
        hit = keys.get(key)
        if hit is None and key.endswith("s"):
            hit = keys.get(key[:-1])
        used[label] = None if label == MISSING_LABEL else hit
    targets = raw.map(used).to_numpy(dtype=object)
    table = pd.DataFrame(
        {"label": counts.index, "cell_type": [used[lab] or "" for lab in counts.index], "n_cells": counts.to_numpy()}
    )
    return targets, table


def agreement(targets: np.ndarray, marker_types: np.ndarray) -> dict[str, Any]:
    """How often the marker call agrees with mapped author labels, overall, per major type and per compartment.

    Cell types are compared where the author gave a major type; compartments wherever the author's label fixes one.
    """
    author = pd.Series(targets, dtype=object).fillna(CT.UNASSIGNED).to_numpy(dtype=object)
    called = pd.Series(marker_types, dtype=object).to_numpy(dtype=object)
    marker_comp = np.array([CT.COMPARTMENT_OF.get(t, CT.UNASSIGNED) for t in called], dtype=object)
    author_comp = np.array(
        [CT.COMPARTMENT_OF.get(t, t if t in CT.COMPARTMENTS else CT.UNASSIGNED) for t in author], dtype=object
    )
    typed = np.array([t in CT.COMPARTMENT_OF for t in author], dtype=bool)
    placed = author_comp != CT.UNASSIGNED
    same = called == author
    per_type = {t: float(same[author == t].mean()) for t in CT.MAJOR_TYPES if (author == t).any()}
    return {
        "n_cells": int(typed.sum()),
        "cell_type": float(same[typed].mean()) if typed.any() else float("nan"),
        "compartment": float((marker_comp == author_comp)[placed].mean()) if placed.any() else float("nan"),
        "per_type": per_type,
        "per_type_n": {t: int((author == t).sum()) for t in per_type},
    }
