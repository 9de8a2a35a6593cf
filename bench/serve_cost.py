"""What one request of bench/load.py's mix costs the server in CPU, by kind, this code against a
baseline commit: the share that 32 clients on 2 cores queue on.

Replays the load test's request sequence (``bench/load.py``'s ``Plan``: 15 % page renders, 40 %
thumbnails, 45 % overlays, the same seeds) one request at a time through the Flask test client
in one process, and measures each request's CPU time (``time.process_time``: every thread of the
process, DuckDB's and Arrow's included, the gallery's background prefetch too; no queueing, no
other process's load counted). Then the same sequence again in a subprocess running the
baseline commit's code (``git archive REV`` laid out as the installed package, first on
``PYTHONPATH``). Prints CPU ms per request kind, each kind's share of the total, and the ratio.

    python bench/serve_cost.py --store DIR                      # against main's ed5f94a
    python bench/serve_cost.py --store DIR --baseline HEAD~3 --requests 2000

A closed loop of N clients on C cores cannot answer faster than N x (mean CPU per request) / C on
average (Little's law, with the server the only work); one Python process runs Python code on one
core at a time (the GIL), so C is at most the share of the work that releases the GIL (PNG
encoding, Parquet decoding) plus one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("compute", "store", "dashboard", "assets")


def baseline_tree(rev: str, dest: Path) -> Path:
    """``rev``'s sources laid out as site-packages would hold them (xaidash/ with the rooms in it)."""
    src = dest / "src"
    src.mkdir()
    archive = dest / "src.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "archive", rev], cwd=ROOT, stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    tree = dest / "tree"
    (tree / "xaidash").mkdir(parents=True)
    for p in (src / "xaidash").iterdir():
        (tree / "xaidash" / p.name).symlink_to(p)
    for room in ROOMS:
        (tree / "xaidash" / room).symlink_to(src / room)
    return tree


def kind_of(kind: str, body: bytes | None) -> str:
    """The request's kind; a page render is named by its path ("page /image"), since the pages'
    costs differ tenfold."""
    if body is None:
        return kind
    inputs = json.loads(body)["inputs"]
    path = next((i["value"] for i in inputs if i["id"] == "url" and i["property"] == "pathname"), "?")
    return f"{kind} {path}"


def measure(store: Path, n: int, seed: int) -> dict[str, list[float]]:
    """CPU ms of each request of the load mix, by kind (after one warm-up render per page)."""
    # the package first: bench/load.py puts this checkout on sys.path, which must not shadow the
    # baseline's tree in the baseline's run
    from xaidash.dashboard import app as app_module

    sys.path.insert(0, str(ROOT / "bench"))
    import load  # bench/load.py: the request mix

    create_app = app_module.create_app
    print(f"code: {app_module.__file__}", file=sys.stderr)  # the baseline's run: read by main()

    with tempfile.TemporaryDirectory() as sel:
        app = create_app(store, selections_dir=sel)
        client = app.server.test_client()
        deps = json.loads(client.get("/_dash-dependencies").data)
        plan = load.Plan(store, deps)
        warm = random.Random(-1)
        for _ in range(2 * len(load.PAGES)):  # as load.py's warm run
            client.post("/_dash-update-component", data=plan.page_body(warm), content_type="application/json")
        rng = random.Random(seed)
        reqs = [plan.request(rng) for _ in range(n)]
        out: dict[str, list[float]] = defaultdict(list)
        for req in reqs:
            t = time.process_time()
            if req.body is not None:
                resp = client.post(req.path, data=req.body, content_type="application/json")
            else:
                resp = client.get(req.path)
            ms = (time.process_time() - t) * 1000
            if resp.status_code != 200:
                raise RuntimeError(f"{req.path}: HTTP {resp.status_code}")
            out[kind_of(req.kind, req.body)].append(ms)
        app.server.config["XAIDASH_STATE"].data.wait_prefetch()
    return dict(out)


def table(label: str, cost: dict[str, list[float]]) -> tuple[str, float]:
    total = sum(sum(v) for v in cost.values())
    n = sum(len(v) for v in cost.values())
    lines = [f"{label}: {n} requests, {total / n:.2f} CPU ms per request on average",
             f"{'kind':<16} {'requests':>8} {'mean ms':>8} {'share':>7}"]
    for kind, v in sorted(cost.items()):
        lines.append(f"{kind:<16} {len(v):>8} {sum(v) / len(v):>8.2f} {sum(v) / total:>7.1%}")
    return "\n".join(lines), total / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / "bench" / "out" / "store-load")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default="ed5f94a", help="git revision to compare with")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the baseline's child run
    args = ap.parse_args(argv)
    if not (args.store / "runs").is_dir():
        ap.error(f"{args.store} has no runs: build it with bench/load.py first")
    if args.json:
        print(json.dumps(measure(args.store, args.requests, args.seed)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = baseline_tree(args.baseline, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--json", "--store", str(args.store),
               "--requests", str(args.requests), "--seed", str(args.seed)]
        # run from the tree, so that no checkout's xaidash/ on the working directory shadows it
        child = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
        base = json.loads(child.stdout.strip().splitlines()[-1])
        code = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "?"
        print(code, f"(baseline {args.baseline})")
    ours = measure(args.store, args.requests, args.seed)
    print(f"code: {sys.modules['xaidash.dashboard.app'].__file__} (this tree)")
    text_b, mean_b = table(f"baseline {args.baseline}", base)
    text_o, mean_o = table("this tree", ours)
    print(text_b, text_o, sep="\n\n")
    print(f"\nCPU per request, baseline / this tree: {mean_b / mean_o:.2f}x")
    for clients in (32,):
        print(f"{clients} clients, closed loop, 2 cores: mean latency >= {clients * mean_o / 2:.0f} ms "
              f"(baseline {clients * mean_b / 2:.0f} ms); on one core (the GIL) {clients * mean_o:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
