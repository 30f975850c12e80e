"""Write output files atomically: a failed write never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    from anndata import AnnData


def _umask() -> int:
    """Return the process umask, read from ``/proc`` where possible (``os.umask`` reads it only by changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # meanwhile a file another thread creates is private, never too open
    os.umask(mask)
    return mask


def write_atomic(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``out``, then rename it to ``out``.

    ``out`` gets the permissions a plain ``open(out, "w")`` would (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``; the partial file stays private until the rename.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        Path(tmp).chmod(0o666 & ~_umask())  # after write: a writer may have replaced the file
        Path(tmp).replace(out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def write_csv(table: pd.DataFrame, out: str | Path, *, index: bool = False) -> Path:
    """Atomically write a CSV."""
    return write_atomic(out, lambda p: table.to_csv(p, index=index))


def write_h5ad(adata: AnnData, out: str | Path) -> Path:
    """Atomically write an h5ad."""
    return write_atomic(out, lambda p: adata.write_h5ad(p))
