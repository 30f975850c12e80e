"""Download cache of biomarkers.io: a local HTTP server on 127.0.0.1 stands in for GEO/Zenodo (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
from scipy import sparse
from scipy.io import mmwrite

from biomarkers._errors import BiomarkersError, ChecksumError, ConfigError, DataSchemaError
from biomarkers.io import fetch_dataset, list_datasets, read_cohort
from biomarkers.io._fetch import DATA_DIR_ENV, load_registry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PAYLOAD = b"sample_id,patient_id,IL6\ns1,p1,5.0\ns2,p2,6.5\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG = "0" * 64


class Server:
    """A static file server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        seen = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                seen.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def registry(self, path: Path, entries: dict[str, dict[str, Any]]) -> Path:
        """Write a registry YAML whose URLs point at this server."""
        content = {"datasets": {n: {**e, "url": f"{self.url}/{e['url']}"} for n, e in entries.items()}}
        path.write_text(yaml.safe_dump(content))
        return path


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    (root / "table.csv").write_bytes(PAYLOAD)
    srv = Server(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_builtin_registry_is_valid() -> None:
    registry = load_registry()
    assert {"GSE134809", "GSE12251", "GSE16879", "GSE73661", "taurus-myeloid", "taurus-full"} <= set(registry)
    for dataset in registry.values():
        assert dataset.url.startswith("https://")
        assert dataset.description
        assert dataset.hash is None or dataset.hash.startswith(("sha256:", "md5:"))
    assert registry["taurus-myeloid"].hash == "md5:bdfe50345a11abdb1a72b2439bf9950e"
    assert registry["GSE134809"].unpack == "tar"


def test_list_datasets_columns(tmp_path: Path) -> None:
    table = list_datasets(data_dir=tmp_path)
    assert list(table.columns) == [
        "name",
        "description",
        "url",
        "size",
        "size_bytes",
        "verified",
        "cached",
        "path",
        "kind",
        "baseline",
    ]
    assert not table["cached"].any()
    cohorts = table[~table["kind"].isin(["probe_map", "sample_sheet"])].set_index("name")
    assert cohorts["baseline"].notna().all(), "every cohort documents the selection that gives a fair baseline"
    row = table.set_index("name").loc["taurus-myeloid"]
    assert row["size"] == "416.7 MB"
    assert row["path"] == str(tmp_path.resolve() / "taurus-myeloid" / "myeloid_final.h5ad")
    assert table.set_index("name").loc["GSE134809", "path"].endswith("GSE134809/GSE134809_RAW")


def test_fetch_verified_then_cached(server: Server, tmp_path: Path) -> None:
    registry = server.registry(
        tmp_path / "reg.yaml", {"toy": {"description": "toy", "url": "table.csv", "hash": f"sha256:{SHA}"}}
    )
    cache = tmp_path / "cache"
    path = fetch_dataset("toy", data_dir=cache, registry=registry)
    assert path == cache.resolve() / "toy" / "table.csv"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/table.csv"]
    assert fetch_dataset("TOY", data_dir=cache, registry=registry) == path  # case-insensitive, from cache
    assert server.requests == ["/table.csv"]
    assert list_datasets(data_dir=cache, registry=registry).loc[0, "cached"]
    assert _files(cache) == [path]
    assert read_cohort(path).shape == (2, 1)


def test_fetch_md5_hash(server: Server, tmp_path: Path) -> None:
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    registry = server.registry(
        tmp_path / "reg.yaml", {"toy": {"description": "toy", "url": "table.csv", "hash": f"md5:{md5}"}}
    )
    assert fetch_dataset("toy", data_dir=tmp_path / "c", registry=registry).read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(server: Server, tmp_path: Path) -> None:
    registry = server.registry(
        tmp_path / "reg.yaml", {"toy": {"description": "toy", "url": "table.csv", "hash": WRONG}}
    )
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=rf"Checksum mismatch .*gave {SHA}, expected sha256:{WRONG}"):
        fetch_dataset("toy", data_dir=cache, registry=registry)
    assert server.requests == ["/table.csv"]
    assert _files(cache) == []
    assert not (cache / "toy").exists()


def test_corrupt_cached_file_is_replaced(server: Server, tmp_path: Path) -> None:
    registry = server.registry(tmp_path / "reg.yaml", {"toy": {"description": "toy", "url": "table.csv", "hash": SHA}})
    target = tmp_path / "cache" / "toy" / "table.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD[:10])  # a truncated earlier download
    assert fetch_dataset("toy", data_dir=tmp_path / "cache", registry=registry).read_bytes() == PAYLOAD
    assert server.requests == ["/table.csv"]


def test_corrupt_cache_and_bad_download_leave_nothing(server: Server, tmp_path: Path) -> None:
    registry = server.registry(
        tmp_path / "reg.yaml", {"toy": {"description": "toy", "url": "table.csv", "hash": WRONG}}
    )
    target = tmp_path / "cache" / "toy" / "table.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage")
    with pytest.raises(ChecksumError):
        fetch_dataset("toy", data_dir=tmp_path / "cache", registry=registry)
    assert _files(tmp_path / "cache") == []


def test_unverified_refused_unless_allowed(server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = server.registry(tmp_path / "reg.yaml", {"geo": {"description": "geo", "url": "table.csv", "hash": None}})
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=r"no recorded checksum.*allow_unverified=True"):
        fetch_dataset("geo", data_dir=cache, registry=registry)
    assert server.requests == []
    assert _files(cache) == []
    with caplog.at_level("WARNING", logger="biomarkers"):
        path = fetch_dataset("geo", data_dir=cache, registry=registry, allow_unverified=True)
    assert path.read_bytes() == PAYLOAD
    assert f"sha256:{SHA}" in caplog.text
    assert fetch_dataset("geo", data_dir=cache, registry=registry) == path  # cached copy is returned


def test_data_dir_from_env_and_default(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = server.registry(tmp_path / "reg.yaml", {"toy": {"description": "toy", "url": "table.csv", "hash": SHA}})
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "envcache"))
    assert fetch_dataset("toy", registry=registry).is_relative_to((tmp_path / "envcache").resolve())
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.chdir(tmp_path)
    path = list_datasets(registry=registry).loc[0, "path"]
    assert path == str((tmp_path / "data" / "cache" / "toy" / "table.csv").resolve())


def test_unknown_name_and_download_failures(server: Server, tmp_path: Path) -> None:
    with sock_closed_port() as port:
        entries = {
            "missing": {"description": "404", "url": "nope.csv", "hash": SHA},
        }
        registry = server.registry(tmp_path / "reg.yaml", entries)
        content = yaml.safe_load(registry.read_text())
        content["datasets"]["offline"] = {"description": "x", "url": f"http://127.0.0.1:{port}/t.csv", "hash": SHA}
        registry.write_text(yaml.safe_dump(content))
    with pytest.raises(DataSchemaError, match=r"Unknown data set 'toy'.*known: missing, offline"):
        fetch_dataset("toy", data_dir=tmp_path / "c", registry=registry)
    with pytest.raises(BiomarkersError, match=r"failed.*HTTPError"):
        fetch_dataset("missing", data_dir=tmp_path / "c", registry=registry)
    with pytest.raises(BiomarkersError, match=r"failed.*ConnectionError"):
        fetch_dataset("offline", data_dir=tmp_path / "c", registry=registry)
    assert _files(tmp_path / "c") == []


class sock_closed_port:  # noqa: N801 - used as a context manager
    """A local port with nothing listening on it."""

    def __enter__(self) -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


def test_registry_validation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"x": {"description": "d", "url": "https://h/x", "hash": "abc"}}}))
    with pytest.raises(ConfigError, match="hash 'abc'"):
        list_datasets(registry=bad)
    bad.write_text(yaml.safe_dump({"datasets": {"x": {"description": "d", "url": "file:///x"}}}))
    with pytest.raises(ConfigError, match="http"):
        list_datasets(registry=bad)
    bad.write_text(yaml.safe_dump({"datasets": {"x": {"description": "d", "url": "https://h/x", "md5": "1"}}}))
    with pytest.raises(ConfigError, match="unknown fields md5"):
        list_datasets(registry=bad)
    with pytest.raises(ConfigError, match="not found"):
        list_datasets(registry=tmp_path / "none.yaml")


def _geo_tar() -> bytes:
    """A GEO RAW.tar of two gzipped 10x v2 triplets, as GSE134809 ships."""
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    genes = "".join(f"ENSG0000000000{i}\tGENE{i}\n" for i in range(5)).encode()
    barcodes = "".join(f"AAAC{i:012d}-1\n" for i in range(4)).encode()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for prefix in ("GSM3972009_69_", "GSM3972010_68_"):
            matrix = io.BytesIO()
            mmwrite(matrix, sparse.coo_matrix(rng.poisson(2, (5, 4))), field="integer")
            for name, data in (("matrix.mtx", matrix.getvalue()), ("genes.tsv", genes), ("barcodes.tsv", barcodes)):
                blob = gzip.compress(data)
                info = tarfile.TarInfo(f"{prefix}{name}.gz")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return out.getvalue()


def test_fetch_unpacks_tar_for_read_cohort(server: Server, tmp_path: Path) -> None:
    blob = _geo_tar()
    (server.root / "GSE1_RAW.tar").write_bytes(blob)
    registry = server.registry(
        tmp_path / "reg.yaml",
        {
            "GSE1": {
                "description": "geo 10x",
                "url": "GSE1_RAW.tar",
                "hash": hashlib.sha256(blob).hexdigest(),
                "unpack": "tar",
                "kind": "geo_10x_series",
            }
        },
    )
    folder = fetch_dataset("GSE1", data_dir=tmp_path / "cache", registry=registry)
    assert folder == (tmp_path / "cache" / "GSE1" / "GSE1_RAW").resolve()
    assert len(list(folder.iterdir())) == 6
    assert fetch_dataset("GSE1", data_dir=tmp_path / "cache", registry=registry) == folder
    assert server.requests == ["/GSE1_RAW.tar"]
    with pytest.warns(UserWarning, match="one patient per sample"):
        adata = read_cohort(folder)
    assert adata.shape == (8, 5)
    assert set(adata.obs["sample_id"]) == {"GSM3972009_69", "GSM3972010_68"}
