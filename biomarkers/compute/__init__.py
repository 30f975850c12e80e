"""Cohorts larger than memory: the feature pipeline one sample at a time, in process or on a Dask cluster.

`transform_samples(pipe, source)` streams a cohort (an h5ad read sample by sample, 10x files, an AnnData, or
chunks) through :class:`biomarkers.features.FeaturePipeline` and returns the same patient table as
``pipe.transform`` on the whole cohort. With ``scheduler='local'`` or ``'tcp://HOST:PORT'`` each sample is a
Dask task that reads its own rows from the file. Dask is an extra: ``pip install 'biomarkers[dask]'``.
"""

from __future__ import annotations

from biomarkers.compute._dask import dask_client
from biomarkers.compute._run import SampleStats, sample_stats, transform_samples

__all__ = ["SampleStats", "dask_client", "sample_stats", "transform_samples"]
