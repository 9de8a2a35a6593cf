"""WSGI entry point for production serving: ``gunicorn 'xaidash.dashboard.wsgi:server'``.

The store directory comes from the ``XAIDASH_STORE`` environment variable; ``XAIDASH_SHOW_PATHS=1``
shows full server paths in the pages, as ``xaidash serve --show-paths`` does.
"""

from __future__ import annotations

import os

from xaidash.dashboard.app import create_app
from xaidash.dashboard.server.serving import freeze_startup_heap

_store = os.environ.get("XAIDASH_STORE")
if not _store:
    raise RuntimeError(
        "set XAIDASH_STORE to the store directory, e.g. XAIDASH_STORE=/data/store gunicorn ..."
    )

app = create_app(_store, show_paths=os.environ.get("XAIDASH_SHOW_PATHS") == "1")
server = app.server
# gunicorn imports this once per worker (or once before forking with --preload): either way the
# start-up objects leave the full collections (see freeze_startup_heap)
freeze_startup_heap()
