"""``xaidash runs list|show|delete|gc``: look after the runs in a store.

Light imports only at top level (argparse/stdlib): the store modules (duckdb, pyarrow, pandas)
are imported inside :func:`run`, so ``xaidash --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xaidash.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of ``xaidash runs``."""
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="list the runs in a store, newest first")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    p = sub.add_parser("show", help="show one run: configuration, metrics, tables and sizes")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("run_id", nargs="?", help="run id (default: the newest run)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("delete", help="delete runs (atomically: readers never see half a run)")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids to delete")

    p = sub.add_parser(
        "gc",
        help="remove leftovers of dead compute jobs (staging dirs, interrupted deletes)",
        description=(
            "Remove staging directories whose writer process is dead (their lock is free) and whose "
            "last activity is older than --grace, plus interrupted deletes. Published runs are never "
            "touched. A killed job can otherwise be resumed by running the same compute again; "
            "--keep-resumable keeps staging that has finished chunks for that."
        ),
    )
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument(
        "--grace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep dead staging younger than this many seconds (default 0; other hosts: >= 3600)",
    )
    p.add_argument("--keep-resumable", action="store_true", help="keep staging that has finished chunks")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")


def run(args: argparse.Namespace) -> int:
    """Dispatch ``xaidash runs ACTION``; return the exit code."""
    action = args.runs_command
    if action == "list":
        return _list(args)
    if action == "show":
        return _show(args)
    if action == "delete":
        return _delete(args)
    if action == "gc":
        return _gc(args)
    raise UserError(f"unknown action {action!r}; valid actions: delete, gc, list, show")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4f}"
    return str(v)


def _list(args: argparse.Namespace) -> int:
    from xaidash.store.read.reader import open_store

    with open_store(args.store) as reader:
        df = reader.runs()
        skipped = reader.skipped_runs()
    cols = ["run_id", "created", "status", "arch", "dataset_spec", "num_val", "accuracy"]
    if args.json:
        for rec in df[cols].to_dict("records") if len(df) else []:
            rec["created"] = str(rec["created"])
            print(
                json.dumps(
                    {k: (None if v != v else v) if isinstance(v, float) else v for k, v in rec.items()}
                )
            )
        return 0
    if df.empty and not skipped:
        print(f"no runs in {args.store}")
        return 0
    rows = [[_fmt(r[c]) if c != "created" else str(r[c])[:19] for c in cols] for r in df.to_dict("records")]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for run_id, why in skipped.items():
        print(f"skipped {run_id}: {why}", file=sys.stderr)
    return 0


def _print_cluster(cluster: object) -> None:
    """The Ray cluster that computed the run (``compute --ray``): one line per worker."""
    if not isinstance(cluster, dict) or not isinstance(cluster.get("workers"), list):
        return
    workers = [w for w in cluster["workers"] if isinstance(w, dict)]
    print(f"cluster    ray {cluster.get('ray')}, {len(workers)} workers, "
          f"started in {cluster.get('startup_s')} s")
    for w in workers:
        rate = w.get("images_per_s")
        print(f"  worker {w.get('worker')} on {w.get('node')} ({w.get('device')}): {w.get('chunks')} chunks, "
              f"{w.get('images')} images, {'-' if rate is None else rate} img/s"
              + (f", restarted {w.get('restarts')}x" if w.get("restarts") else ""))


def _show(args: argparse.Namespace) -> int:
    from xaidash.store.read.reader import open_store

    with open_store(args.store) as reader:
        run_id = args.run_id or reader.latest_run_id()
        if run_id is None:
            raise UserError(f"no runs in {args.store}")
        info = reader.run(run_id)
        if info is None:
            known = ", ".join(reader.runs()["run_id"].head(10)) or "none"
            raise UserError(f"no run {run_id!r} in {args.store}; runs: {known}")
        headline = reader.headline(run_id)
        manifest = reader.manifest(run_id) or {}
    tables = manifest.get("tables", {})
    if args.json:
        out = {k: v for k, v in manifest.get("run", {}).items()}
        out["headline"] = headline
        out["tables"] = tables
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"run        {info.run_id}")
    print(f"created    {info.created}")
    print(f"status     {info.status}")
    print(
        f"dataset    {info.dataset_spec} ({info.dataset_kind}, fingerprint {info.dataset_fingerprint[:12]})"
    )
    print(f"model      {info.arch} layer {info.target_layer} maps {info.map_h}x{info.map_w} on {info.device}")
    print(f"checkpoint {info.checkpoint_path or '-'}")
    print(
        f"classes    {len(info.class_names)}: {', '.join(info.class_names[:10])}"
        + (" ..." if len(info.class_names) > 10 else "")
    )
    print(f"methods    {', '.join(info.methods)}")
    print(f"images     {info.num_val} val, {info.num_train} train, {info.num_failed} failed")
    if info.scorecam_note:
        print(f"score-cam  {info.scorecam_note}")
    if info.precision_note:
        print(f"precision  {info.precision_note}")
    elif info.precision:
        tf32 = info.precision.get("tf32")
        suffix = "" if tf32 is None else f" (TF32 {'on' if tf32 else 'off'})"
        print(f"precision  {info.precision.get('precision')}{suffix}")
    print("metrics    " + ", ".join(f"{k}={_fmt(v)}" for k, v in headline.items()))
    _print_cluster(info.timings.get("cluster"))
    total = sum(int(t.get("bytes", 0)) for t in tables.values())
    print(f"tables     {total / 1e6:.1f} MB")
    for name, t in sorted(tables.items()):
        print(f"  {name:<14}{int(t.get('rows', 0)):>12} rows {int(t.get('bytes', 0)) / 1e6:>10.2f} MB")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from xaidash.store.write.writer import Store, validate_run_id

    store = Store.open(args.store)
    run_ids = list(dict.fromkeys(args.run_ids))  # each once, in the order given
    for run_id in run_ids:
        validate_run_id(run_id)
    # all or nothing: check every run exists before deleting any
    missing = [r for r in run_ids if not (store.runs_dir / r).is_dir()]
    if missing:
        raise UserError(f"no run {', '.join(map(repr, missing))} in {store.path} (see `xaidash runs list`); "
                        "nothing was deleted")
    for run_id in run_ids:
        store.delete(run_id)
        print(f"deleted {run_id}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from xaidash.store.write.writer import Store

    if not args.grace >= 0 or args.grace == float("inf"):  # also rejects nan
        raise UserError(f"--grace must be a number of seconds >= 0, got {args.grace}")
    store = Store.open(args.store)
    removed = store.gc(grace_s=args.grace, keep_resumable=args.keep_resumable, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    if not removed:
        print("nothing to clean up")
    return 0
