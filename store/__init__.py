"""The results store: the only code that knows file layout and SQL.

Writer side (compute): :class:`Store`, :class:`Staging`. Reader side (dashboard):
:func:`open_store` -> :class:`StoreReader`, :class:`GalleryQuery`. Schemas: :mod:`xaidash.store.schema`.

The names are resolved lazily (PEP 562) so that importing a light submodule such as
``xaidash.store.cli`` (for ``xaidash --help``) does not load DuckDB and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xaidash.store.read.reader import StoreReader, open_store
    from xaidash.store.read.records import GalleryQuery, ImageDetail, RunDiff, RunInfo
    from xaidash.store.schema import SCHEMA_VERSION
    from xaidash.store.write.staging import Staging
    from xaidash.store.write.writer import Store

_WHERE = {
    "GalleryQuery": "xaidash.store.read.records",
    "ImageDetail": "xaidash.store.read.records",
    "RunDiff": "xaidash.store.read.records",
    "RunInfo": "xaidash.store.read.records",
    "StoreReader": "xaidash.store.read.reader",
    "open_store": "xaidash.store.read.reader",
    "SCHEMA_VERSION": "xaidash.store.schema",
    "Staging": "xaidash.store.write.staging",
    "Store": "xaidash.store.write.writer",
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
