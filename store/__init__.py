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
    from xaidash.store.models import GalleryQuery, ImageDetail, RunDiff, RunInfo
    from xaidash.store.reader import StoreReader, open_store
    from xaidash.store.schema import SCHEMA_VERSION
    from xaidash.store.staging import Staging
    from xaidash.store.writer import Store

_WHERE = {
    "GalleryQuery": "xaidash.store.models",
    "ImageDetail": "xaidash.store.models",
    "RunDiff": "xaidash.store.models",
    "RunInfo": "xaidash.store.models",
    "StoreReader": "xaidash.store.reader",
    "open_store": "xaidash.store.reader",
    "SCHEMA_VERSION": "xaidash.store.schema",
    "Staging": "xaidash.store.staging",
    "Store": "xaidash.store.writer",
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
