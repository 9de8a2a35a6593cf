"""``xaidash report RUN --store DIR --out FILE.html [--pdf]``: the self-contained run report.

Light imports at module level (``xaidash --help`` must not import Dash or DuckDB); the work is in
:func:`xaidash.dashboard.report.build.write_report`, which the Python API's
:func:`xaidash.api.write_report` calls too.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xaidash report``."""
    parser.add_argument("run", metavar="RUN", help="run id, or 'latest'")
    parser.add_argument(
        "--store", required=True, metavar="DIR", help="results store written by xaidash compute"
    )
    parser.add_argument("--out", required=True, metavar="FILE.html", help="where to write the report")
    parser.add_argument(
        "--pdf",
        action="store_true",
        help="also print it to FILE.pdf through headless Chromium (where installed)",
    )
    parser.add_argument(
        "--show-paths",
        action="store_true",
        help="print the checkpoint's and the data's full paths (default: their names only, as the "
        "dashboard does: a report is a file that travels)",
    )
    parser.add_argument(
        "--errors",
        type=int,
        default=24,
        metavar="N",
        help="most confident errors shown with their maps and twins (default 24)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report (and the PDF); the paths and sizes go to the log."""
    from pathlib import Path

    from xaidash.dashboard.report.build import write_report
    from xaidash.store import open_store

    with open_store(args.store) as reader:
        written = write_report(
            reader,
            args.run,
            Path(args.out).expanduser(),
            pdf=bool(args.pdf),
            top_errors=int(args.errors),
            show_paths=bool(args.show_paths),
        )
    for path in written:
        log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0
