"""Per-sample progress: a tqdm.auto bar with cells/s on a TTY."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger("biomarkers")


class Progress:
    """Per-sample progress with cells/s: a tqdm.auto bar on a TTY, and a DEBUG log line per sample.

    Other units of work (``unit``, ``desc``) count with :meth:`advance`, e.g. the permutations of a permutation test.
    """

    def __init__(self, *, total: int | None, show: bool | None, unit: str = "sample", desc: str = "samples") -> None:
        from tqdm.auto import tqdm

        # Shown on a TTY (a long streamed read should say how far it is), never in logs or captured output.
        visible = sys.stderr.isatty() if show is None else (show and sys.stderr.isatty())
        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=not visible)
        self.t0 = time.perf_counter()
        self.cells = 0

    def update(self, part: Any) -> None:
        """Count a finished chunk (``part.samples`` has one row per sample)."""
        n = int(part.samples["n_cells_in"].sum())
        self.cells += n
        rate = self.cells / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.cells:,} cells, {rate:,.0f} cells/s", refresh=False)
        self.bar.update(len(part.samples))
        logger.debug("sample %s: %d cells (%s cells/s overall)", ",".join(part.samples.index), n, f"{rate:,.0f}")

    def advance(self, n: int = 1) -> None:
        """Count ``n`` finished units of work."""
        self.bar.update(n)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
