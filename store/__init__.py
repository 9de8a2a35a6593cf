"""The results store: the only code that knows file layout and SQL.

Writer side (compute): :class:`Store`, :class:`Staging`. Reader side (dashboard):
:func:`open_store` -> :class:`StoreReader`, :class:`GalleryQuery`. Schemas: :mod:`store.schema`.

The names are resolved lazily (PEP 562) so that importing a light submodule such as
``store.cli`` (for ``xaidash --help``) does not load DuckDB and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store.reader import GalleryQuery, ImageDetail, RunDiff, RunInfo, StoreReader, open_store
    from store.schema import SCHEMA_VERSION
    from store.writer import Staging, Store

_WHERE = {
    "GalleryQuery": "store.reader",
    "ImageDetail": "store.reader",
    "RunDiff": "store.reader",
    "RunInfo": "store.reader",
    "StoreReader": "store.reader",
    "open_store": "store.reader",
    "SCHEMA_VERSION": "store.schema",
    "Staging": "store.writer",
    "Store": "store.writer",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
