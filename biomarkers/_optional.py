"""Optional dependencies: import one, or raise a one-line :class:`MissingDependencyError` naming its pip extra."""

from __future__ import annotations

import importlib
from typing import Any

from biomarkers._errors import MissingDependencyError


def require(module: str, extra: str, *, purpose: str | None = None) -> Any:
    """Import and return `module`, or raise a one-line error naming ``pip install 'biomarkers[<extra>]'``.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"pydeseq2.dds"`` or ``"distributed"``.
    extra
        The package's optional-dependency group that installs it (``pyproject.toml``), e.g. ``"discover"``.
    purpose
        What needs it, for the message (e.g. ``"method='deseq2'"``).

    Returns
    -------
    The imported module.

    Raises
    ------
    MissingDependencyError
        `module` (or one of its own dependencies) cannot be imported.

    Examples
    --------
    >>> from biomarkers._optional import require
    >>> require("json", "none").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        what = f"{purpose} needs" if purpose else "This needs"
        missing = getattr(err, "name", None) or module
        msg = (
            f"{what} the optional dependency {module.split('.')[0]!r}, which is not installed "
            f"(No module named {missing!r}). Install it: pip install 'biomarkers[{extra}]'"
        )
        raise MissingDependencyError(msg) from err
