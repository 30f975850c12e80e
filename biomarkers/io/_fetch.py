"""Checksummed download cache for public data sets (pooch), driven by ``registry.yaml``.

pooch streams each download to a temporary file in the cache folder, checks its hash and only then
moves it to its final name; on a mismatch the temporary file is deleted. A cached file that no longer
matches its hash is removed before it is downloaded again, so the cache never holds a file that
fails its checksum. Entries without a published checksum (GEO) are only downloaded with
``allow_unverified=True``; their sha256 is logged so that it can be pinned in the registry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from biomarkers._errors import BiomarkersError, ChecksumError, ConfigError, DataSchemaError

from ._common import logger, preview

DATA_DIR_ENV = "BIOMARKERS_DATA_DIR"
REGISTRY_FILE = "registry.yaml"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HASH_RE = re.compile(r"^(sha256|sha1|md5|xxh64|xxh128):[0-9a-f]+$")
_ARCHIVE_SUFFIXES = {"tar": (".tar.gz", ".tgz", ".tar"), "zip": (".zip",)}
_FIELDS = {"description", "url", "filename", "size", "hash", "unpack", "kind", "reference", "baseline"}


@dataclass(frozen=True)
class Dataset:
    """One registry entry (see the header of ``biomarkers/io/registry.yaml``)."""

    name: str
    description: str
    url: str
    filename: str
    size: int | None
    hash: str | None
    unpack: str | None
    kind: str | None
    reference: str | None
    baseline: str | None = None

    def path(self, root: Path) -> Path:
        """Where the fetched data live: the file, or the folder it unpacks to."""
        target = root / self.name / self.filename
        if self.unpack is None:
            return target
        stem = self.filename
        for suffix in _ARCHIVE_SUFFIXES[self.unpack]:
            stem = stem.removesuffix(suffix)
        return root / self.name / stem


def _registry_error(source: str, name: str, problem: str) -> ConfigError:
    msg = f"Data set registry {source}: entry {name!r} {problem}. Fix the entry (see the file header)."
    return ConfigError(msg)


def _entry(name: str, raw: Any, source: str) -> Dataset:
    if not isinstance(raw, dict):
        raise _registry_error(source, name, "is not a mapping")
    if not _NAME_RE.match(name):
        raise _registry_error(source, name, "has a name with characters other than letters, digits, _ . -")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise _registry_error(source, name, f"has unknown fields {preview(sorted(unknown))}")
    url = str(raw.get("url") or "")
    if not url.startswith(("https://", "http://", "ftp://")):
        raise _registry_error(source, name, f"needs an http(s)/ftp url (got {url!r})")
    known_hash = raw.get("hash")
    if known_hash is not None:
        known_hash = str(known_hash).lower()
        if re.fullmatch(r"[0-9a-f]{64}", known_hash):
            known_hash = f"sha256:{known_hash}"
        if not _HASH_RE.match(known_hash):
            raise _registry_error(source, name, f"has hash {known_hash!r}; use 'sha256:<hex>', 'md5:<hex>' or null")
    unpack = raw.get("unpack")
    if unpack is not None and unpack not in _ARCHIVE_SUFFIXES:
        raise _registry_error(source, name, f"has unpack {unpack!r}; use 'tar', 'zip' or null")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise _registry_error(source, name, f"has size {size!r}; use a byte count or null")
    return Dataset(
        name=name,
        description=str(raw.get("description") or ""),
        url=url,
        filename=str(raw.get("filename") or url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]),
        size=size,
        hash=known_hash,
        unpack=unpack,
        kind=raw.get("kind"),
        reference=raw.get("reference"),
        baseline=raw.get("baseline"),
    )


def load_registry(registry: str | Path | None = None) -> dict[str, Dataset]:
    """Read and validate a registry YAML (default: the one shipped in ``biomarkers/io``)."""
    import yaml

    if registry is None:
        text = resources.files("biomarkers.io").joinpath(REGISTRY_FILE).read_text(encoding="utf-8")
        source = f"biomarkers/io/{REGISTRY_FILE}"
    else:
        path = Path(registry)
        if not path.is_file():
            msg = f"Data set registry not found: {path}. Pass an existing YAML file or None for the built-in one."
            raise ConfigError(msg)
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        content = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        msg = f"Data set registry {source} is not valid YAML ({str(err).splitlines()[0]})."
        raise ConfigError(msg) from err
    entries = content.get("datasets") if isinstance(content, dict) else None
    if not isinstance(entries, dict):
        msg = f"Data set registry {source} needs a top-level 'datasets:' mapping of name -> entry."
        raise ConfigError(msg)
    lowered = [str(n).lower() for n in entries]
    if len(set(lowered)) != len(lowered):
        msg = f"Data set registry {source} has names that differ only by case; make them unique."
        raise ConfigError(msg)
    return {str(name): _entry(str(name), raw, source) for name, raw in entries.items()}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Return the cache root: `data_dir`, else ``$BIOMARKERS_DATA_DIR``, else ``<cwd>/data/cache``."""
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / "data" / "cache").resolve()


def _human(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def _is_cached(dataset: Dataset, root: Path) -> bool:
    target = dataset.path(root)
    return target.is_dir() and any(target.iterdir()) if dataset.unpack else target.is_file()


def list_datasets(*, data_dir: str | Path | None = None, registry: str | Path | None = None) -> pd.DataFrame:
    """List the public data sets that :func:`fetch_dataset` knows, and which are cached.

    Parameters
    ----------
    data_dir
        Cache root; default ``$BIOMARKERS_DATA_DIR`` or ``<cwd>/data/cache``.
    registry
        Alternative registry YAML (same layout as ``biomarkers/io/registry.yaml``).

    Returns
    -------
    One row per data set: ``name``, ``description``, ``url``, ``size`` (human-readable),
    ``size_bytes`` (nullable int), ``verified`` (a checksum is recorded), ``cached`` (present in the
    cache; not re-hashed), ``path`` (where it is or will be), ``kind`` (how to read it), ``baseline`` (the
    sample selection, ``data.query``, that gives a fair pre-treatment cohort, where it applies).

    Examples
    --------
    >>> from biomarkers.io import list_datasets
    >>> table = list_datasets()
    >>> {"GSE134809", "GSE12251", "taurus-myeloid"} <= set(table["name"])
    True
    """
    root = resolve_data_dir(data_dir)
    rows = [
        {
            "name": d.name,
            "description": d.description,
            "url": d.url,
            "size": _human(d.size),
            "size_bytes": d.size,
            "verified": d.hash is not None,
            "cached": _is_cached(d, root),
            "path": str(d.path(root)),
            "kind": d.kind,
            "baseline": d.baseline,
        }
        for d in load_registry(registry).values()
    ]
    table = pd.DataFrame(rows)
    table["size_bytes"] = table["size_bytes"].astype("Int64")
    return table


def _lookup(name: str, datasets: dict[str, Dataset]) -> Dataset:
    by_lower = {n.lower(): d for n, d in datasets.items()}
    if name.lower() not in by_lower:
        msg = f"Unknown data set {name!r} (known: {', '.join(datasets)}). Run `biomarkers data list`."
        raise DataSchemaError(msg)
    return by_lower[name.lower()]


def _cleanup_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def fetch_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    allow_unverified: bool = False,
    progress: bool = False,
    registry: str | Path | None = None,
) -> Path:
    """Download a registered public data set into the cache (once) and return its local path.

    Parameters
    ----------
    name
        Registry name (case-insensitive), see :func:`list_datasets`.
    data_dir
        Cache root; default ``$BIOMARKERS_DATA_DIR`` or ``<cwd>/data/cache``. Files go to
        ``<data_dir>/<name>/<filename>``.
    allow_unverified
        Download entries that have no recorded checksum (GEO files); their sha256 is logged.
    progress
        Show a download progress bar (the CLI enables it on a TTY).
    registry
        Alternative registry YAML.

    Returns
    -------
    The cached file, or for archives (``unpack``) the folder they were extracted to.

    Raises
    ------
    ChecksumError
        The download does not match the recorded hash (nothing is left in the cache), or the entry
        has no hash and `allow_unverified` is False.
    BiomarkersError
        The download failed (network, HTTP error).
    DataSchemaError
        Unknown `name`.

    Examples
    --------
    >>> from biomarkers.io import fetch_dataset
    >>> fetch_dataset("no-such-data")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    biomarkers._errors.DataSchemaError: Unknown data set 'no-such-data' ...
    """
    import pooch

    dataset = _lookup(name, load_registry(registry))
    root = resolve_data_dir(data_dir)
    folder = root / dataset.name
    target = folder / dataset.filename
    final = dataset.path(root)
    if dataset.hash is None and _is_cached(dataset, root):
        logger.info("fetch_dataset: %s cached at %s (no checksum recorded)", dataset.name, final)
        return final
    if dataset.hash is None and not allow_unverified:
        msg = (
            f"Data set {dataset.name!r} has no recorded checksum ({dataset.url}); refusing an unverified download. "
            "Pass allow_unverified=True (CLI: --allow-unverified) to download it and log its sha256."
        )
        raise ChecksumError(msg)
    if target.is_file() and dataset.hash is not None:
        if pooch.file_hash(str(target), alg=dataset.hash.split(":")[0]) == dataset.hash.split(":")[1]:
            if dataset.unpack is None or _is_cached(dataset, root):
                logger.info("fetch_dataset: %s verified in cache at %s", dataset.name, final)
                return final
        else:
            logger.warning(
                "fetch_dataset: cached %s does not match %s; removed and downloading again", target, dataset.hash
            )
            target.unlink()
    processor: Any = None
    if dataset.unpack == "tar":
        processor = pooch.Untar(extract_dir=final.name)
    elif dataset.unpack == "zip":
        processor = pooch.Unzip(extract_dir=final.name)
    downloading = not target.is_file()
    _download(dataset, target=target, processor=processor, progress=progress)
    if dataset.hash is None and downloading:
        sha = pooch.file_hash(str(target))
        logger.warning(
            "fetch_dataset: %s downloaded WITHOUT verification; sha256:%s (pin it as hash in the registry)",
            dataset.name,
            sha,
        )
    logger.info("fetch_dataset: %s -> %s", dataset.name, final)
    return final


def _download(dataset: Dataset, *, target: Path, processor: Any, progress: bool) -> None:
    import pooch
    import requests

    try:
        pooch.retrieve(
            dataset.url,
            known_hash=dataset.hash,
            fname=target.name,
            path=target.parent,
            processor=processor,
            progressbar=progress,
        )
    except ValueError as err:
        _cleanup_empty(target.parent)
        if "hash" not in str(err).lower():
            raise
        got = re.search(r"but got ([0-9a-f]+)", str(err))
        msg = (
            f"Checksum mismatch for data set {dataset.name!r}: {dataset.url} gave "
            f"{got.group(1) if got else 'another hash'}, expected {dataset.hash}; nothing was kept in {target.parent}. "
            "Retry (the download may be truncated); if it persists the upstream file changed: check it, then update "
            "the hash in the registry."
        )
        raise ChecksumError(msg) from err
    except requests.exceptions.RequestException as err:
        _cleanup_empty(target.parent)
        msg = (
            f"Download of data set {dataset.name!r} from {dataset.url} failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Check the network, or place the file at {target} yourself."
        )
        raise BiomarkersError(msg) from err
