"""xaidash: an explainability workbench for image classifiers.

The application package: the ``xaidash`` command line (:mod:`xaidash.cli`), the demo
(:mod:`xaidash.demo`), the Python API for notebooks (:mod:`xaidash.api`: ``compute_run``,
``open_store``, ``show``, ``Run``, ``write_report``, ``export_table``, ``export_overlays``) and the
error type every layer raises for bad user input (:mod:`xaidash.errors`). The work itself lives in
the ``compute``, ``store`` and ``dashboard`` packages.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: the API's names, resolved on first use (PEP 562) so ``import xaidash`` stays light. Not imported
#: for type checkers either: every layer imports ``xaidash.__version__``, so even a type-only import
#: of the API here would close an import cycle through all of them; for types, import the names from
#: :mod:`xaidash.api`.
_API = ("Run", "compute_run", "export_overlays", "export_table", "open_store", "show", "write_report")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("xaidash.api"), name)
    raise AttributeError(f"module 'xaidash' has no attribute {name!r}")
