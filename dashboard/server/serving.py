"""How ``xaidash serve`` runs the app: on waitress, a production WSGI server, by default.

waitress is pure Python and runs on every platform: one process, a pool of worker threads and an
asynchronous front end that reads each request whole before a thread sees it, so a slow or idle
client holds a connection slot but never a thread. Its limits are set here, in one place:

- at most :data:`CONNECTION_LIMIT` open connections (more wait in the listen backlog);
- request bodies over :data:`xaidash.dashboard.server.guard.MAX_REQUEST_BYTES` (with or without
  ``Content-Length``) and headers over :data:`MAX_HEADER_BYTES` are answered 413 and the
  connection closed, before the app sees them;
- a connection idle for :data:`CHANNEL_TIMEOUT_S` is closed.

For several CPU cores, run gunicorn workers over ``xaidash.dashboard.wsgi:server`` instead
(docs/DASHBOARD.md, "Production serving"). ``--dev`` keeps Dash's development server.
"""

from __future__ import annotations

import logging
from typing import Any

import dash
import waitress

from xaidash.dashboard.server.guard import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

#: worker threads: renders are CPU-bound Python (one GIL), so more threads than a few per core
#: only queue inside the process instead of in front of it, where they time-slice the GIL and
#: stretch every request; measured (bench/load.py, 32 clients, docs/PERFORMANCE.md): p99 451-642
#: ms with 4 threads against 639-698 ms with 8, throughput within noise. Two per core leaves room
#: for a thread waiting on disk or on a DuckDB query (which releases the GIL).
THREADS = 4
#: open connections at once: a browser keeps about six, so this serves a team of a dozen or more
CONNECTION_LIMIT = 100
#: seconds a connection may stay idle (no request, or a body stalled mid-way) before it is closed
CHANNEL_TIMEOUT_S = 120
#: the largest request head (request line and headers); the longest URL the pages write is a
#: few KiB
MAX_HEADER_BYTES = 64 * 1024


def waitress_options(host: str, port: int, threads: int = THREADS) -> dict[str, Any]:
    """The keyword arguments of ``waitress.serve`` for the dashboard."""
    return {
        "host": host,
        "port": port,
        "threads": threads,
        "connection_limit": CONNECTION_LIMIT,
        "channel_timeout": CHANNEL_TIMEOUT_S,
        "max_request_body_size": MAX_REQUEST_BYTES,
        "max_request_header_size": MAX_HEADER_BYTES,
        # the Server header names no version
        "ident": "xaidash",
        # poll() instead of select(): no limit at 1,024 file descriptors
        "asyncore_use_poll": True,
    }


def serve(app: dash.Dash, host: str, port: int, dev: bool = False, threads: int = THREADS) -> None:
    """Serve ``app`` until interrupted: waitress, or Dash's development server when ``dev``."""
    if dev:
        log.info("Dash's development server (--dev): for debugging on this machine only")
        app.run(host=host, port=port, debug=False)
        return
    options = waitress_options(host, port, threads)
    log.info(
        "waitress: %d threads, at most %d connections, bodies up to %.1f MB, idle connections closed "
        "after %d s",
        threads,
        CONNECTION_LIMIT,
        MAX_REQUEST_BYTES / 1e6,
        CHANNEL_TIMEOUT_S,
    )
    waitress.serve(app.server, **options)
