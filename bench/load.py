"""Load test: N concurrent clients x M mixed requests against `xaidash serve` and gunicorn.

Starts the server over a synthetic store (built once under ``bench/out/``), then each client
(a thread with its own HTTP connection) sends M requests drawn from a fixed mix, the way a
browser session does: page renders through Dash's endpoint (``POST /_dash-update-component``,
the router callback, payload built from the server's own ``/_dash-dependencies``), thumbnails
and CAM overlays. Prints errors and p50/p95/p99 per kind. An error is a status other than 200
(304 for revalidations), a connection failure or timeout, a page that says "could not be
rendered", or an image whose bytes differ from an earlier answer to the same URL.

    python bench/load.py                                  # both servers, 32 clients x 1,000
    python bench/load.py --server gunicorn --clients 8 --requests 200
    python bench/load.py --store DIR --server serve --cold

``serve`` is ``xaidash serve`` (waitress; the report names the server from its ``Server``
header), ``dev`` is ``xaidash serve --dev`` (Dash's development server). ``--cold`` counts from a
freshly started server (its caches empty, each page's first render included); by default one
warm-up render per page is not counted.

The clients run on the same machine as the server and share its CPUs, so the latencies are an
upper bound on what the server alone would give. gunicorn runs as documented in
docs/DASHBOARD.md minus the threads (``gunicorn -w 2 xaidash.dashboard.wsgi:server``; sync
workers) unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

#: (kind, weight): a gallery page asks for ~5 images per row, so images dominate a session
MIX = (("page", 15), ("thumbnail", 40), ("overlay", 45))
PAGES = ("/", "/gallery", "/embedding", "/compare", "/image", "/explain")
METHODS = ("cam", "gradcam", "gradcampp", "scorecam")
CMAPS = ("jet", "viridis", "inferno")
TIMEOUT_S = 120.0


def build_store(path: Path, n_val: int, n_train: int) -> None:
    from tests.support.synthetic import build_synthetic_store

    t = time.perf_counter()
    build_synthetic_store(path, n_val=n_val, n_train=n_train, runs=2, seed=0)
    logging.info(
        "built %s (%d val, %d train, 2 runs) in %.0f s", path, n_val, n_train, time.perf_counter() - t
    )


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    body: bytes | None = None


class Plan:
    """What the clients ask for: the store's runs and images, the router's callback payload."""

    def __init__(self, store: Path, deps: list[dict[str, Any]], n_images: int = 400) -> None:
        from xaidash.store import GalleryQuery, open_store

        reader = open_store(store)
        self.runs = list(reader.runs()["run_id"])
        rows, _ = reader.gallery(self.runs[0], GalleryQuery(page_size=n_images))
        self.images = [str(i) for i in rows["image_id"]]
        router = next(d for d in deps if "page-content.children" in d["output"])
        self.router_output = router["output"]
        self.router_inputs = router["inputs"]
        self.router_state = router["state"]

    def page_body(self, rng: random.Random) -> bytes:
        path = rng.choice(PAGES)
        q: dict[str, str] = {"run": rng.choice(self.runs)}
        if path == "/gallery":
            q.update(page=str(rng.randrange(20)), outcome=rng.choice(["all", "wrong"]))
        elif path == "/image":
            q["id"] = rng.choice(self.images)
        elif path == "/compare":
            q.update(a=self.runs[-1], b=self.runs[0])
        elif path == "/embedding":
            q["color"] = rng.choice(["true", "pred"])
        values = {"url.pathname": path, "url.search": "?" + urlencode(q), "rendered.data": None}

        def items(deps: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**d, "value": values.get(f"{d['id']}.{d['property']}")} for d in deps]

        outs = [
            dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
            for p in self.router_output.strip(".").split("...")
        ]
        body = {
            "output": self.router_output,
            "outputs": outs,
            "inputs": items(self.router_inputs),
            "state": items(self.router_state),
            "changedPropIds": ["url.pathname"],
        }
        return json.dumps(body).encode()

    def request(self, rng: random.Random) -> Request:
        kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        run, image = rng.choice(self.runs), rng.choice(self.images)
        if kind == "page":
            return Request(kind, "POST", "/_dash-update-component", self.page_body(rng))
        if kind == "thumbnail":
            size = rng.choice(["", "?size=160"])
            return Request(kind, "GET", f"/img/{run}/{image}.png{size}")
        q = urlencode({"cmap": rng.choice(CMAPS), "alpha": rng.choice(["0.5", "0.7"])})
        return Request(kind, "GET", f"/overlay/{run}/{image}/{rng.choice(METHODS)}.png?{q}")


@dataclass
class Results:
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    digests: dict[str, str] = field(default_factory=dict)
    repeats: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, req: Request, ms: float, error: str | None, body: bytes | None) -> None:
        with self.lock:
            self.times[req.kind].append(ms)
            if error is None and body is not None and req.method == "GET":
                digest = hashlib.sha1(body).hexdigest()
                if req.path in self.digests:
                    self.repeats += 1
                if self.digests.setdefault(req.path, digest) != digest:
                    error = f"{req.path}: bytes differ from an earlier answer"
            if error is not None:
                self.errors[req.kind].append(error)


def one(conn: http.client.HTTPConnection, req: Request) -> tuple[str | None, bytes | None]:
    """Send ``req``; (error or None, body)."""
    headers = {"Content-Type": "application/json"} if req.body is not None else {}
    conn.request(req.method, req.path, body=req.body, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        return f"{req.method} {req.path[:80]}: HTTP {resp.status}", None
    if req.kind == "page" and b"could not be rendered" in body:
        return f"page render failed: {body[:200]!r}", None
    return None, body


def client(port: int, plan: Plan, n: int, seed: int, results: Results, start: threading.Barrier) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    reqs = [plan.request(rng) for _ in range(n)]
    start.wait()
    for req in reqs:
        t = time.perf_counter()
        try:
            error, body = one(conn, req)
        except (OSError, http.client.HTTPException) as exc:
            error, body = f"{req.method} {req.path[:80]}: {type(exc).__name__}: {exc}", None
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        results.record(req, (time.perf_counter() - t) * 1000, error, body)
    conn.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> str:
    """Wait until the server answers; its ``Server`` header."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/_dash-dependencies")
            resp = conn.getresponse()
            if resp.status == 200:
                return resp.getheader("Server") or "?"
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not answer in time")


@contextmanager
def server(
    kind: str, store: Path, port: int, workers: int, threads: int, serve_threads: int | None = None,
    serve_processes: int | None = None,
) -> Iterator[str]:
    """Run ``xaidash serve`` or gunicorn on ``port``; yields its description."""
    env = {**os.environ, "XAIDASH_STORE": str(store)}
    if kind in ("serve", "dev"):
        cmd = [str(BIN / "xaidash"), "serve", "--store", str(store), "--port", str(port)]
        cmd += ["--dev"] if kind == "dev" else []
        cmd += ["--threads", str(serve_threads)] if serve_threads and kind == "serve" else []
        desc = "xaidash serve" + (" --dev" if kind == "dev" else "")
        desc += f" --threads {serve_threads}" if serve_threads and kind == "serve" else ""
        if serve_processes and kind == "serve":
            cmd += ["--processes", str(serve_processes)]
            desc += f" --processes {serve_processes}"
    else:
        cmd = [str(BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}", "--timeout", "120"]
        cmd += ["--threads", str(threads)] if threads > 1 else []
        cmd += ["xaidash.dashboard.wsgi:server"]
        desc = f"gunicorn -w {workers}" + (f" --threads {threads}" if threads > 1 else " (sync workers)")
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"xaidash-load-{kind}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        name = wait_ready(port, proc)
        yield f"{desc} (Server: {name})"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def report(desc: str, store: str, clients: int, n: int, wall: float, res: Results) -> str:
    lines = [
        f"server: {desc}",
        f"store: {store}; {clients} clients x {n} requests = {clients * n:,} requests in {wall:.1f} s "
        f"({clients * n / wall:,.0f} req/s)",
        f"{'kind':<10} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    everything: list[float] = []
    for kind, _ in MIX:
        t = res.times.get(kind, [])
        everything += t
        lines.append(
            f"{kind:<10} {len(t):>8} {len(res.errors.get(kind, [])):>6} {pct(t, 0.5):>8.1f} "
            f"{pct(t, 0.95):>8.1f} {pct(t, 0.99):>8.1f} {max(t, default=float('nan')):>8.1f}"
        )
    n_err = sum(len(v) for v in res.errors.values())
    lines.append(
        f"{'all':<10} {len(everything):>8} {n_err:>6} {pct(everything, 0.5):>8.1f} "
        f"{pct(everything, 0.95):>8.1f} {pct(everything, 0.99):>8.1f} {max(everything, default=0):>8.1f}"
    )
    lines.append(
        f"images: {len(res.digests):,} distinct URLs, {res.repeats:,} repeat answers compared with the "
        "first (a difference counts as an error)"
    )
    for kind, errs in res.errors.items():
        for e in errs[:5]:
            lines.append(f"  error ({kind}): {e}")
    return "\n".join(lines)


def run_load(kind: str, store: Path, args: argparse.Namespace) -> tuple[str, int]:
    from xaidash.dashboard.server.serving import free_port

    port = free_port()
    with server(kind, store, port, args.workers, args.threads, args.serve_threads,
                args.serve_processes) as desc:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        conn.request("GET", "/_dash-dependencies")
        deps = json.loads(conn.getresponse().read())
        conn.close()
        plan = Plan(store, deps)
        if not args.cold:
            # warm-up, not counted: each page once (the first render of a page builds its caches)
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            rng = random.Random(-1)
            for _ in range(2 * len(PAGES)):
                one(warm, Request("page", "POST", "/_dash-update-component", plan.page_body(rng)))
            warm.close()
        res = Results()
        start = threading.Barrier(args.clients + 1)
        threads = [
            threading.Thread(target=client, args=(port, plan, args.requests, i, res, start), daemon=True)
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    n_err = sum(len(v) for v in res.errors.values())
    text = report(
        desc + (", cold" if args.cold else ", warm"),
        f"{store.name} ({len(plan.images)} images sampled)",
        args.clients,
        args.requests,
        wall,
        res,
    )
    return text, n_err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / "bench" / "out" / "store-load")
    ap.add_argument("--n-val", type=int, default=5_000, help="images per run when building the store")
    ap.add_argument("--n-train", type=int, default=5_000)
    ap.add_argument(
        "--server",
        choices=("serve", "dev", "gunicorn", "both", "all"),
        default="both",
        help="both: serve and gunicorn; all: serve, dev and gunicorn",
    )
    ap.add_argument("--cold", action="store_true", help="no warm-up: count from a fresh server")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=1_000, help="requests per client")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (1: sync workers)")
    ap.add_argument("--serve-threads", type=int, default=None,
                    help="xaidash serve --threads (default: the server's own, 4)")
    ap.add_argument("--serve-processes", type=int, default=None,
                    help="xaidash serve --processes (default: the server's own, one per core up to 4)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.store / "runs").is_dir() or not any((args.store / "runs").iterdir()):
        build_store(args.store, args.n_val, args.n_train)
    groups = {"both": ("serve", "gunicorn"), "all": ("serve", "dev", "gunicorn")}
    kinds = groups.get(args.server, (args.server,))
    errors = 0
    for kind in kinds:
        text, n_err = run_load(kind, args.store, args)
        errors += n_err
        print(text, flush=True)
        print(flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
