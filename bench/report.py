"""Time and size of the self-contained report (and of the gallery CSV export) on a store.

    python bench/report.py --store /tmp/xaidash-bench [--run latest] [--repeat 3]
    python bench/report.py --build /tmp/xaidash-report-bench --n-val 100000   # a synthetic store first

Prints the report's build time (first build, on a freshly opened reader, then the best of
``--repeat`` builds), its bytes and the share of them that is plotly.js, and the time and rows of
the unfiltered and the errors-only gallery CSV.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the synthetic store lives with the tests, not in the package


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, help="an existing store")
    p.add_argument("--build", type=Path, help="build a synthetic store here first (with the trust tables)")
    p.add_argument("--n-val", type=int, default=100_000)
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--run", default="latest")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.build:
        from tests.support.synthetic import build_synthetic_store

        t = time.perf_counter()
        build_synthetic_store(args.build, n_val=args.n_val, n_train=args.n_train, runs=1, seed=0, trust=True)
        print(f"built {args.n_val:,}-image store in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    store = args.store or args.build
    if store is None:
        p.error("give --store or --build")

    from plotly.offline import get_plotlyjs

    from xaidash.dashboard.report.build import build_report
    from xaidash.store import open_store
    from xaidash.store.export import export_table

    out: dict[str, object] = {}
    with open_store(store) as reader:
        t = time.perf_counter()
        rep = build_report(reader, args.run)
        out["report_first_s"] = round(time.perf_counter() - t, 2)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            rep = build_report(reader, args.run)
            times.append(time.perf_counter() - t)
        out["report_warm_s"] = round(min(times), 2)
        size = len(rep.html.encode("utf-8"))
        out["report_mb"] = round(size / 1e6, 2)
        out["plotlyjs_mb"] = round(len(get_plotlyjs()) / 1e6, 2)
        out["errors_shown"] = rep.errors_shown
        n_val = reader.run(rep.run_id).num_val  # type: ignore[union-attr]
        out["n_val"] = n_val
        with tempfile.TemporaryDirectory() as d:
            for name, filters in (("gallery_all", {}), ("gallery_wrong", {"outcome": "wrong"})):
                t = time.perf_counter()
                rows = export_table(reader, rep.run_id, "gallery", Path(d) / f"{name}.csv", "csv", **filters)
                out[f"{name}_csv_s"] = round(time.perf_counter() - t, 2)
                out[f"{name}_rows"] = rows
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
