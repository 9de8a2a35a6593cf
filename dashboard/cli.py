"""``xaidash serve``: open the dashboard over a store.

Light imports only at module level (``xaidash --help`` must not import Dash or DuckDB).
"""

from __future__ import annotations

import argparse
import logging
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


def run(args: argparse.Namespace) -> int:
    """Start the development server (see docs/DASHBOARD.md for gunicorn in production)."""
    from xaidash.errors import UserError

    store = Path(args.store).expanduser()
    if not store.is_dir():
        raise UserError(
            f"--store {store} is not a directory; create one with `xaidash compute --store {store} ...`"
        )
    if not 0 < int(args.port) < 65536:
        raise UserError(f"--port {args.port} is not a valid port (1-65535)")
    from xaidash.dashboard.app import create_app

    app = create_app(store)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this host can browse the store", args.host)
    log.info("xaidash dashboard on http://%s:%d/ (store %s) - Ctrl+C to stop", args.host, args.port, store)
    app.run(host=args.host, port=int(args.port), debug=False)
    return 0
