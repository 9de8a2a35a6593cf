"""How ``xaidash serve`` runs the app: on waitress, a production WSGI server, by default.

waitress is pure Python and runs on every platform: one process, a pool of worker threads and an
asynchronous front end that reads each request whole before a thread sees it, so a slow or idle
client holds a connection slot but never a thread. Its limits are set here, in one place:

- at most :data:`CONNECTION_LIMIT` open connections (more wait in the listen backlog);
- request bodies over :data:`xaidash.dashboard.server.guard.MAX_REQUEST_BYTES` (with or without
  ``Content-Length``) and headers over :data:`MAX_HEADER_BYTES` are answered 413 and the
  connection closed, before the app sees them;
- a connection idle for :data:`CHANNEL_TIMEOUT_S` is closed.

A render is CPU-bound Python, so one process uses one core however many threads it has (the
GIL). Where the platform can fork, ``serve`` runs :func:`default_processes` waitress processes
(one per core, at most :data:`MAX_PROCESSES`) that accept on one listening socket, each with its
own app and caches; a parent process restarts one that dies and stops them all on SIGTERM or
Ctrl+C. Not gunicorn, which pre-forks the same way: the request-size limits and the error replies
above are waitress's (gunicorn caps a header line at 8 KiB, answers an oversized head 400 rather
than 431 and has no body limit of its own), and gunicorn's sync workers are held by a slow client
where waitress's front end is not. gunicorn over ``xaidash.dashboard.wsgi:server`` remains a
documented choice (docs/DASHBOARD.md, "Production serving"). ``--dev`` keeps Dash's development
server.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import dash
import waitress
from waitress.adjustments import Adjustments

from xaidash.dashboard.server.guard import MAX_REQUEST_BYTES
from xaidash.errors import UserError

log = logging.getLogger(__name__)

#: worker threads: renders are CPU-bound Python (one GIL), so more threads than a few per core
#: only queue inside the process instead of in front of it, where they time-slice the GIL and
#: stretch every request; measured (bench/load.py, 32 clients, docs/PERFORMANCE.md): p99 451-642
#: ms with 4 threads against 639-698 ms with 8, throughput within noise. Two per core leaves room
#: for a thread waiting on disk or on a DuckDB query (which releases the GIL).
THREADS = 4
#: most server processes by default: each holds its own app, store connection and caches
MAX_PROCESSES = 4
#: open connections at once: a browser keeps about six, so this serves a team of a dozen or more
CONNECTION_LIMIT = 100
#: seconds a connection may stay idle (no request, or a body stalled mid-way) before it is closed
CHANNEL_TIMEOUT_S = 120
#: the largest request head (request line and headers); the longest URL the pages write is a
#: few KiB
MAX_HEADER_BYTES = 64 * 1024
#: a process that dies this many times within :data:`RESTART_WINDOW_S` seconds is not restarted
#: again: something outside it (memory, the store's disk) is wrong, and restarting in a tight loop
#: would only hide that and burn a core
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


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


def freeze_startup_heap() -> None:
    """Take what a server process holds once started (torch, pandas, plotly, the Dash app and its
    layout: ~160k objects) out of the cyclic garbage collector's full collections.

    A full collection walks every tracked object: 60-100 ms here on a quiet 2-core Zen 2 CPU,
    130-210 ms under load, paid by whichever request happens to trigger it. Those pauses were the
    p95 spikes of the 100k gallery interactions (bench/dashboard_latency.py; 13 full collections
    in 450 renders). Objects made after this call are collected as before.

    No ``gc.collect()`` first: in a forked server process it would run the finalisers of the
    parent's uncollected garbage (a DuckDB connection of an app the parent dropped segfaulted
    there), and what start-up left as garbage is small.
    """
    gc.freeze()


def default_processes() -> int:
    """One server process per CPU core this process may use, at most :data:`MAX_PROCESSES`; one
    where the platform cannot fork (Windows)."""
    if not hasattr(os, "fork"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_PROCESSES))


def serve(make_app: Callable[[], dash.Dash], host: str, port: int, dev: bool = False,
          threads: int = THREADS, processes: int = 1) -> int:
    """Serve the app ``make_app`` builds until interrupted: waitress in ``processes`` processes,
    or Dash's development server when ``dev``. Returns the exit status."""
    if dev:
        log.info("Dash's development server (--dev): for debugging on this machine only")
        make_app().run(host=host, port=port, debug=False)
        return 0
    options = waitress_options(host, port, threads)
    log.info(
        "waitress: %d process%s x %d threads, at most %d connections each, bodies up to %.1f MB, idle "
        "connections closed after %d s",
        processes,
        "" if processes == 1 else "es",
        threads,
        CONNECTION_LIMIT,
        MAX_REQUEST_BYTES / 1e6,
        CHANNEL_TIMEOUT_S,
    )
    if processes == 1:
        app = make_app()
        freeze_startup_heap()
        waitress.serve(app.server, **options)
        return 0
    listener = _listening_socket(host, port)
    per_process = {k: v for k, v in options.items() if k not in ("host", "port")}

    def serve_one(ready: Callable[[], None]) -> None:
        app = make_app()
        freeze_startup_heap()
        ready()
        waitress.serve(app.server, sockets=[listener], **per_process)

    return _supervise(serve_one, processes)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (the OS picks it), for a server started next."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening_socket(host: str, port: int) -> socket.socket:
    """The one socket every server process accepts on: bound before the fork, so whichever process
    is idle takes the next connection. The address family comes from resolving ``host`` (a name,
    an IPv4 or an IPv6 address); the backlog is waitress's own default, as one process would use."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot serve on host {host!r}: {exc.strerror}; pass --host with an address "
                        "of this machine (127.0.0.1 for this machine only, 0.0.0.0 for every interface)"
                        ) from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from exc
    sock.listen(Adjustments.backlog)
    return sock


def _supervise(serve_one: Callable[[Callable[[], None]], None], processes: int) -> int:
    """Fork ``processes`` children that each call ``serve_one(ready)``; restart one that dies after
    it called ``ready`` (its app was built), stop them all when one dies before that, when more than
    :data:`MAX_RESTARTS` died within :data:`RESTART_WINDOW_S`, or on SIGTERM / Ctrl+C. Returns the
    exit status."""
    children: dict[int, int] = {}  # pid -> read end of the pipe its ready() writes to
    exit_code: int | None = None  # set once stopping
    restarts: deque[float] = deque()  # when the recent restarts happened

    def start() -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the parent decides when it stops
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0

            def ready() -> None:
                os.write(w, b"1")
                os.close(w)

            try:
                serve_one(ready)
            except UserError as exc:  # a bad store: its one line, as the CLI would print it
                log.error("%s", exc)
                code = 2
            except Exception:  # the child's last word before its exit status tells the parent
                log.exception("server process %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        children[pid] = r

    def stop(code: int) -> None:
        nonlocal exit_code
        if exit_code is None:
            exit_code = code
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: stop(0))
    try:
        for _ in range(processes):
            start()
        while children:
            try:
                pid, status = os.wait()
            except KeyboardInterrupt:
                stop(0)
                continue
            except ChildProcessError:
                break
            r = children.pop(pid, None)
            if r is None:
                continue
            was_ready = os.read(r, 1) == b"1"  # the child is gone: this never blocks
            os.close(r)
            if exit_code is not None:
                continue
            code = os.waitstatus_to_exitcode(status)
            now = time.monotonic()
            while restarts and now - restarts[0] > RESTART_WINDOW_S:
                restarts.popleft()
            if not was_ready:
                log.error("server process %d exited with status %d while starting; stopping the others",
                          pid, code)
                stop(code or 1)
            elif len(restarts) >= MAX_RESTARTS:
                log.error("server process %d exited with status %d: %d exits within %.0f s; "
                          "stopping the others (see the errors above)", pid, code, len(restarts) + 1,
                          RESTART_WINDOW_S)
                stop(code or 1)
            else:
                log.warning("server process %d exited with status %d; starting another", pid, code)
                restarts.append(now)
                start()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for r in children.values():
            os.close(r)
    return exit_code or 0
