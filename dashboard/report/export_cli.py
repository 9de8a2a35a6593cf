"""``xaidash export RUN --store DIR (--table NAME --format csv|parquet|jsonl | --overlays DIR)
[--filter KEY=VALUE ...]``: a run's rows, or its overlay PNGs, as files.

Light imports at module level (``xaidash --help`` must not import Dash or DuckDB); the work is done
by :func:`xaidash.store.export.export_table` and
:func:`xaidash.dashboard.report.overlays.export_overlays` (which the Python API calls too).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xaidash.errors import UserError

log = logging.getLogger(__name__)
FORMATS = ("csv", "parquet", "jsonl")
FILTER_HELP = (
    "the gallery's filters, KEY=VALUE, repeatable: true=CLASS, pred=CLASS (name or index), "
    "outcome=all|correct|wrong, flag=mislabelled|leak|outlier, cmin=0.5, cmax=0.9"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xaidash export``."""
    parser.add_argument("run", metavar="RUN", help="run id, or 'latest'")
    parser.add_argument(
        "--store", required=True, metavar="DIR", help="results store written by xaidash compute"
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--table",
        metavar="NAME",
        help="'gallery' (the gallery's rows: source, labels, prediction, confidence, flags) or a "
        "stored table (predictions, cams, faithfulness, quality, ...; docs/STORE.md)",
    )
    what.add_argument(
        "--overlays", metavar="DIR", help="write DIR/<method>/<image_id>.png overlays of the filtered images"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="file format of --table (default: from --out's suffix, else csv)",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="file of --table (default RUN-TABLE.FORMAT in the current folder)",
    )
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help=FILTER_HELP)
    parser.add_argument(
        "--methods",
        default=None,
        metavar="LIST",
        help="--overlays: comma-separated methods (default: all of the run's)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        metavar="PX",
        help="--overlays: longer side of each PNG (default 224)",
    )


def run(args: argparse.Namespace) -> int:
    """Export; the file(s) and counts go to the log."""
    from xaidash.dashboard.report.overlays import export_overlays
    from xaidash.store import open_store
    from xaidash.store.export import export_table, parse_filters

    filters = parse_filters(args.filter)
    with open_store(args.store) as reader:
        if args.overlays:
            if args.format or args.out:
                raise UserError("--format and --out belong to --table; --overlays takes a folder")
            if not 16 <= int(args.size) <= 2048:
                raise UserError(f"--size {args.size}: expected 16..2048 pixels")
            methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
            n = export_overlays(
                reader,
                args.run,
                Path(args.overlays).expanduser(),
                methods,
                size=int(args.size),
                filters=filters,
            )
            log.info("wrote %d overlays under %s (and images.csv)", n, args.overlays)
            return 0
        fmt = args.format
        if args.out is None:
            fmt = fmt or "csv"
            out = Path(f"{args.run}-{args.table}.{fmt}")
        else:
            out = Path(args.out)
            fmt = fmt or (
                out.suffix.lstrip(".").lower() if out.suffix.lstrip(".").lower() in FORMATS else "csv"
            )
        rows = export_table(reader, args.run, args.table, out, fmt, **filters)
        log.info("wrote %d rows of %s to %s", rows, args.table, out)
    return 0
