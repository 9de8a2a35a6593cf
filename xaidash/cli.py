"""The ``xaidash`` console script: one entry point, one sub-command per job.

Each sub-command lives in a small module with light imports that exposes
``add_arguments(parser)`` and ``run(args) -> int``; heavy libraries (torch, dash) are imported
only when the command runs, so ``xaidash --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from xaidash import __version__
from xaidash.errors import UserError

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("xaidash.compute.cli.train", "train or fine-tune a classifier and write one checkpoint file"),
    "compute": ("xaidash.compute.cli.compute", "run a model over a dataset and publish one run into a store"),
    "serve": ("xaidash.dashboard.cli", "open the dashboard over a store"),
    "demo": ("xaidash.demo", "train, compute and serve a small real example, offline"),
    "runs": ("xaidash.store.cli", "list, show, delete and clean up runs in a store"),
    "report": ("xaidash.dashboard.report.cli", "write a run's self-contained HTML report (and PDF)"),
    "export": ("xaidash.dashboard.report.export_cli", "export a run's rows (csv, parquet, jsonl), overlays"),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaidash",
        description="Explainability workbench for image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"xaidash {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._module.run(args) or 0)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"xaidash {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"xaidash {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so and point at --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(
                f"xaidash {args.command}: internal error: {type(exc).__name__}: {exc} "
                "(run again with --debug for the traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
