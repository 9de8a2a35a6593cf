"""The results store: the only code that knows file layout and SQL.

Writer side (compute): :class:`Store`, :class:`Staging`. Reader side (dashboard):
:func:`open_store` -> :class:`StoreReader`, :class:`GalleryQuery`. Schemas: :mod:`store.schema`.
"""

from __future__ import annotations

from store.reader import GalleryQuery, ImageDetail, RunDiff, RunInfo, StoreReader, open_store
from store.schema import SCHEMA_VERSION
from store.writer import Staging, Store

__all__ = [
    "SCHEMA_VERSION",
    "GalleryQuery",
    "ImageDetail",
    "RunDiff",
    "RunInfo",
    "Staging",
    "Store",
    "StoreReader",
    "open_store",
]
