"""The images table shared by every run over the same data: one folder of part files per dataset
fingerprint (thumbnails and metadata), appended under a flock and deduplicated by image_id."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from xaidash.store import files
from xaidash.store.builder import conform
from xaidash.store.files import blocking_lock
from xaidash.store.schema import TABLES
from xaidash.store.write.layout import StoreLayout, validate_fingerprint


def thumbnail_ids(layout: StoreLayout, dataset_fingerprint: str) -> set[str]:
    """image_ids that already have an images row for this dataset fingerprint."""
    validate_fingerprint(dataset_fingerprint)
    ids: set[str] = set()
    for part in layout.image_parts(dataset_fingerprint):
        col = pq.read_table(part, columns=["image_id"]).column("image_id")
        ids.update(col.to_pylist())
    return ids


def add_images(layout: StoreLayout, dataset_fingerprint: str, table: pa.Table) -> None:
    """Append images rows (thumbnails) for a dataset, skipping image_ids already stored.

    Serialized per fingerprint with a flock so two concurrent jobs over the same data never
    store an image twice; each append is one atomically renamed, image_id-sorted part file.
    """
    fp = validate_fingerprint(dataset_fingerprint)
    d = layout.images_dir / fp
    d.mkdir(parents=True, exist_ok=True)
    with blocking_lock(d / ".lock"):
        existing = thumbnail_ids(layout, fp)
        t = conform(
            table.drop_columns([c for c in ("dataset_fingerprint",) if c in table.column_names]),
            TABLES["images"].schema,
            "images",
            fill={"dataset_fingerprint": fp},
        )
        ids = t.column("image_id").to_pylist()
        keep: list[int] = []
        seen = set(existing)
        for i, image_id in enumerate(ids):
            if image_id not in seen:
                seen.add(image_id)
                keep.append(i)
        if not keep:
            return
        t = t.take(pa.array(keep, type=pa.int64())).sort_by("image_id")
        part = d / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        files.write_parquet_atomic(part, t, TABLES["images"].row_group_size, layout.durable)
