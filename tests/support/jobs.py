"""A compute job sized for a test, for the tests that build a :class:`JobConfig` directly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import duckdb
import pandas as pd

from xaidash.compute.pipeline.config import JobConfig


def small_job(data: str | Path, store: Path, checkpoint: Path | None = None, **kw: object) -> JobConfig:
    """A job on the CPU with in-process loading, a PCA map, one twin, short faithfulness curves and
    no pixel attributions; ``kw`` overrides any field. ``data`` is a source spec or an image folder.

    The attributions are off unless a test asks for them: the CLI's default (64 images) costs tens
    of backward passes per image, which a test about anything else should not pay. For the same
    reason the sanity cascade and ROAD run on a sample (2 and 4 images), not the CLI's 64 and all.
    """
    spec = f"imagefolder:{data}" if isinstance(data, Path) else data
    cfg = JobConfig(data=spec, store=str(store), checkpoint=None if checkpoint is None else str(checkpoint),
                    device="cpu", workers=0, projection="pca", twins=1, faithfulness_steps=4,
                    attribution_images=0, sanity_images=2, road_images=4)
    return dataclasses.replace(cfg, **kw)  # type: ignore[arg-type]


def run_table(store: Path, run_id: str | None, name: str) -> pd.DataFrame:
    """One table of a published run, read straight from its Parquet file."""
    assert run_id is not None
    return duckdb.sql(f"SELECT * FROM '{store}/runs/{run_id}/{name}.parquet'").df()
