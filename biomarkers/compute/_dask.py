"""Dask clients: a local cluster on 127.0.0.1, or a running scheduler by address."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from biomarkers._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger("biomarkers")


def _distributed() -> Any:
    from biomarkers._optional import require

    return require("distributed", "dask", purpose="A Dask scheduler (compute.scheduler / --scheduler)")


@contextmanager
def dask_client(scheduler: str | Any, *, n_workers: int = 2) -> Iterator[Any]:
    """Open a ``distributed.Client`` for `scheduler`; close it (and its local cluster) on exit.

    Parameters
    ----------
    scheduler
        ``'local'``: start a ``LocalCluster`` of `n_workers` single-threaded worker processes bound to 127.0.0.1,
        without a dashboard. ``'tcp://HOST:PORT'``: connect to a running scheduler. A ``distributed.Client``: used
        as is and left open.
    n_workers
        Workers of the local cluster.

    Yields
    ------
    The client.

    Raises
    ------
    MissingDependencyError
        dask.distributed is not installed (an ImportError).
    ConfigError
        `scheduler` is none of the above.

    Examples
    --------
    >>> from biomarkers.compute import dask_client
    >>> with dask_client("local", n_workers=1) as client:  # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    3
    """
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or (scheduler != "local" and not scheduler.startswith("tcp://")):
        msg = f"scheduler must be None, 'local', 'tcp://HOST:PORT' or a distributed.Client (got {scheduler!r}). Fix compute.scheduler."
        raise ConfigError(msg)
    if scheduler == "local":
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # No dashboard; the scheduler's small HTTP endpoint (health, metrics) on a free local port, not :8787.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        logger.info("dask: local cluster of %d workers at %s", n_workers, cluster.scheduler_address)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(scheduler, timeout="20s")
    except OSError as err:
        msg = f"Cannot reach the Dask scheduler at {scheduler} ({err}). Start it (dask scheduler) or use scheduler='local'."
        raise ConfigError(msg) from err
    logger.info("dask: connected to %s (%d workers)", scheduler, len(client.scheduler_info().get("workers", {})))
    with client:
        yield client
