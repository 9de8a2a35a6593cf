"""``xaidash serve``: open the dashboard over a store.

Light imports only at module level (``xaidash --help`` must not import Dash or DuckDB).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xaidash serve``."""
    parser.add_argument(
        "--store", required=True, metavar="DIR", help="results store written by xaidash compute"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="worker threads of each server process (default 4)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="server processes, each with its own caches (default: one per CPU core, at most 4; "
        "1 where the platform cannot fork)",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="Dash's development server instead of waitress (debugging on this machine only)",
    )
    parser.add_argument(
        "--show-paths",
        action="store_true",
        help="show the full paths of the store, checkpoints and image folders in the pages "
        "(by default only their names: anyone who opens the dashboard sees them)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard on waitress, or Dash's development server with ``--dev``."""
    from xaidash.errors import UserError

    store = Path(args.store).expanduser()
    if not store.is_dir():
        raise UserError(
            f"--store {store} is not a directory; create one with `xaidash compute --store {store} ...`"
        )
    if not 0 < int(args.port) < 65536:
        raise UserError(f"--port {args.port} is not a valid port (1-65535)")
    if args.threads is not None and not 1 <= args.threads <= 256:
        raise UserError(f"--threads {args.threads} is not in 1-256")
    if args.processes is not None and not 1 <= args.processes <= 64:
        raise UserError(f"--processes {args.processes} is not in 1-64")
    from xaidash.dashboard.app import create_app
    from xaidash.dashboard.server import serving
    from xaidash.store.files import require_store

    require_store(store)  # here, once: not in each server process

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this host can browse the store", args.host)
        if args.show_paths:
            log.warning("--show-paths: every page shows the server's paths to whoever opens it")
    log.info("xaidash dashboard on http://%s:%d/ (store %s) - Ctrl+C to stop", args.host, args.port, store)
    processes = 1 if args.dev else args.processes or serving.default_processes()
    if processes > 1 and not hasattr(os, "fork"):
        raise UserError(f"--processes {processes} needs a platform that can fork; use --processes 1 "
                        "(or run gunicorn workers, docs/DASHBOARD.md)")
    return serving.serve(lambda: create_app(store, show_paths=args.show_paths), args.host, int(args.port),
                         dev=args.dev, threads=args.threads or serving.THREADS, processes=processes)
