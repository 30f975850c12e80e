"""Feature naming: ``<family>__<segment>[__<segment>]`` with segments in ``[A-Za-z0-9_.-]``.

LightGBM rejects ``: , [ ] { } "`` in feature names (LightGBM issue #6202) and h5ad keys may not hold ``/``.
"""

from __future__ import annotations

import re

from biomarkers import _keys as K

_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def clean(segment: str) -> str:
    """Replace characters that are unsafe in feature names by ``.``."""
    return _BAD.sub(".", str(segment))


def feature_name(family: str, *segments: str) -> str:
    """Join a family and segments, e.g. ``feature_name('pb', 'MNP', 'OSM') == 'pb__MNP__OSM'``."""
    return K.FEATURE_SEP.join([family, *(clean(s) for s in segments)])
