"""`xaidash serve` as a team would run it: a production server, complete error replies, no paths.

The HTTP tests talk to a live `xaidash serve` (started with the demo's own serve arguments, so
the demo's server is the one tested) over raw sockets where the framing matters: whether the
server closes a connection it was asked to close, what a chunked body gets. The page tests render
every page in-process for a run whose model and dataset live under absolute paths.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from plotly.utils import PlotlyJSONEncoder
from werkzeug.test import create_environ, run_wsgi_app

from tests.support.dash_testing import CountingStream
from tests.support.fuzzing import ENDPOINT, callback_body, find_key, post_values
from xaidash import demo
from xaidash.dashboard import paths
from xaidash.dashboard.app import PAGES, create_app, render_page
from xaidash.dashboard.data import ResolvedRun
from xaidash.dashboard.pages import explain
from xaidash.dashboard.params import Filters
from xaidash.dashboard.server import serving
from xaidash.dashboard.server.guard import MAX_REQUEST_BYTES

#: the four unknown-asset URLs: an unknown file of a served package, an unknown package and two
#: ways of climbing out of the package (sent as is: http.client does not normalise paths)
ASSET_URLS = (
    "/_dash-component-suites/dash/deps/nope.js",
    "/_dash-component-suites/nopkg/x.js",
    "/_dash-component-suites/dash/../../../etc/passwd",
    "/_dash-component-suites/dash/deps/..%2f..%2fsetup.py",
)
DEV_WARNING = "development server"
#: where the pages' run keeps its (made-up) model and images: must not reach a page
CHECKPOINT = "/srv/models/team-secret/resnet18-best.pt"
SHA = "ab12cd34ef56" + "0" * 52



@pytest.fixture(scope="module")
def live(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A live `xaidash serve` over the test store, started as the demo starts it: (port, its log)."""
    port = serving.free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = demo.serve_argv(store_dir, "127.0.0.1", port)
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "xaidash.cli", *argv]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/_dash-layout")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                assert time.monotonic() < end, "the server did not answer in 120 s"
                time.sleep(0.3)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def _exchange(port: int, head: bytes, body: bytes | list[bytes] = b"") -> tuple[bytes, float | None]:
    """Send a raw request; (every byte of the reply, seconds from its first byte until the server
    closed the connection, None when it was still open 5 s later)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        try:
            for part in body if isinstance(body, list) else [body]:
                s.sendall(part)
        except OSError:  # the server refused the body and closed: its reply is still readable
            pass
        reply, first = b"", None
        try:
            while chunk := s.recv(65536):
                first = first or time.monotonic()
                reply += chunk
        except TimeoutError:
            return reply, None
        except ConnectionResetError:  # closed with part of our body unread
            pass
        return reply, (time.monotonic() - first) if first else 0.0


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


# ---------------------------------------------------------------- the server


def test_serve_runs_waitress_without_the_development_server_warning(live: tuple[int, Path]) -> None:
    port, log = live
    status, headers, _ = _get(port, "/")
    assert status == 200 and headers["server"] == "xaidash"  # waitress, named without its version
    text = log.read_text()
    assert "waitress" in text and DEV_WARNING not in text.lower(), text


def test_the_demo_serves_on_waitress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the demo's steps, without training or computing: its serve step is what `live` runs
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_cli", calls.append)
    (tmp_path / "fashion-resnet18.pt").write_bytes(b"")  # an existing checkpoint: no training
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--workdir", str(tmp_path)])
    assert demo.run(args) == 0
    assert [c[0] for c in calls] == ["compute", "serve"]
    assert calls[-1] == demo.serve_argv(tmp_path / "store", "127.0.0.1", 8050) and "--dev" not in calls[-1]


def test_waitress_limits_are_set() -> None:
    opts = serving.waitress_options("127.0.0.1", 8050)
    assert opts["max_request_body_size"] == MAX_REQUEST_BYTES
    assert opts["threads"] >= 2 and 0 < opts["connection_limit"] <= 1000
    assert 0 < opts["channel_timeout"] <= 300 and opts["max_request_header_size"] <= 256 * 1024


# ---------------------------------------------------------------- error replies


@pytest.mark.parametrize("url", ASSET_URLS)
def test_unknown_assets_answer_404(live: tuple[int, Path], url: str) -> None:
    status, headers, body = _get(live[0], url)
    assert status == 404 and int(headers["content-length"]) == len(body)


def test_known_asset_still_served(live: tuple[int, Path]) -> None:
    layout = _get(live[0], "/")[2].decode()
    src = layout.split('src="/_dash-component-suites/', 1)[1].split('"', 1)[0]
    assert _get(live[0], "/_dash-component-suites/" + src)[0] == 200


def _head(length: int | None, ctype: str = "application/json") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        f"Connection: close\r\n{size}\r\n\r\n"
    ).encode()


def test_oversized_body_with_connection_close_gets_413_and_the_socket_closes(live: tuple[int, Path]) -> None:
    # the head announces 16 MiB; the reply must not wait for them, and must end the connection
    reply, closed_after = _exchange(live[0], _head(16 * 1024 * 1024))
    assert _status(reply) == 413, reply[:200]
    assert closed_after is not None and closed_after < 1.0
    # with the body on its way too (the server stops reading it)
    reply, closed_after = _exchange(live[0], _head(16 * 1024 * 1024), b" " * (16 * 1024 * 1024))
    assert _status(reply) == 413 and closed_after is not None and closed_after < 1.0


def test_callback_json_sent_as_a_form_gets_400_and_the_socket_closes(
    live: tuple[int, Path], app: Any
) -> None:
    body = json.dumps({"output": find_key(app, "page-content.children")}).encode()
    for _ in range(5):
        reply, closed_after = _exchange(live[0], _head(len(body), "application/x-www-form-urlencoded"), body)
        assert _status(reply) == 400 and closed_after is not None and closed_after < 1.0


def test_oversized_request_head_gets_431(live: tuple[int, Path]) -> None:
    head = f"GET /?q={'a' * (serving.MAX_HEADER_BYTES + 1)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply, closed_after = _exchange(live[0], head.encode())
    assert _status(reply) == 431 and closed_after is not None and closed_after < 1.0


def _chunked(n_chunks: int, size: int = 1024 * 1024) -> list[bytes]:
    return [b"%x\r\n" % size + b" " * size + b"\r\n" for _ in range(n_chunks)] + [b"0\r\n\r\n"]


def test_chunked_oversized_body_gets_413_from_the_server(live: tuple[int, Path]) -> None:
    reply, closed_after = _exchange(live[0], _head(None), _chunked(64))
    assert _status(reply) == 413 and closed_after is not None and closed_after < 1.0


@pytest.mark.parametrize(
    ("n", "status"), [(64 * 1024 * 1024, 413), (MAX_REQUEST_BYTES + 1, 413), (MAX_REQUEST_BYTES, 400)]
)
def test_chunked_oversized_body_gets_413_from_the_app(app: Any, n: int, status: int) -> None:
    # behind gunicorn (which de-chunks and passes the body on) the app itself refuses it
    environ = create_environ(ENDPOINT, method="POST", content_type="application/json")
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": CountingStream(n), "wsgi.input_terminated": True})
    _, got, headers = run_wsgi_app(app.server, environ, buffered=True)
    assert got.startswith(str(status)), got
    if status == 413:
        assert headers.get("Connection") == "close"


# ---------------------------------------------------------------- the upload's file name


def _png_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("filename", "message"),
    [("x" * 100_000 + ".png", "100,004 characters long"), ("bad\ud800.png", "not valid text")],
)
def test_a_bad_upload_filename_gets_a_message(client: Any, app: Any, filename: str, message: str) -> None:
    key = find_key(app, "explain-result.children")
    resp = post_values(client, app, key, [_png_url(), filename, ""])
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "explain-error" in text and message in text, text[:300]


def test_a_bad_upload_filename_gets_a_message_from_the_live_server(live: tuple[int, Path], app: Any) -> None:
    key = find_key(app, "explain-result.children")
    body = json.dumps(callback_body(app, key, [_png_url(), "y" * 100_000, ""])).encode()
    conn = http.client.HTTPConnection("127.0.0.1", live[0], timeout=30)
    conn.request("POST", ENDPOINT, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200 and "100,000 characters long" in text, text[:300]


# ---------------------------------------------------------------- no server paths in pages


def _html(component: Any) -> str:
    return json.dumps(component, cls=PlotlyJSONEncoder)


@pytest.fixture(scope="module")
def run_with_paths(state: Any, store_dir: Path) -> ResolvedRun:
    """The latest run, as if computed from an image folder with a checkpoint under /srv."""
    info = state.data.resolve_run(None).info
    config = {**info.config, "model": {"arch": "resnet18", "checkpoint": CHECKPOINT, "sha256": SHA}}
    return ResolvedRun(
        replace(
            info,
            config_json=json.dumps(config),
            checkpoint_path=CHECKPOINT,
            checkpoint_sha256=SHA,
            dataset_spec="imagefolder:/srv/data/team-secret-pets",
        )
    )


def _pages(state: Any, resolved: ResolvedRun) -> str:
    return "\n".join(_html(render_page(state, path, Filters(), resolved)) for _, path, _ in PAGES)


def test_no_page_shows_the_store_or_checkpoint_path(
    app: Any, state: Any, store_dir: Path, run_with_paths: ResolvedRun, live: tuple[int, Path]
) -> None:
    text = _pages(state, run_with_paths) + _html(app.layout) + _get(live[0], "/_dash-layout")[2].decode()
    for secret in (str(store_dir), CHECKPOINT, "/srv/"):
        assert secret not in text
    assert f"store: {store_dir.name}" in text
    assert f"resnet18-best.pt (sha256 {SHA[:12]})" in text and "imagefolder:team-secret-pets" in text


def test_show_paths_brings_them_back(store_dir: Path, state: Any, run_with_paths: ResolvedRun) -> None:
    shown = replace(state, show_paths=True)
    text = _pages(shown, run_with_paths)
    assert CHECKPOINT in text and "imagefolder:/srv/data/team-secret-pets" in text
    app = create_app(store_dir, reader=state.data.reader, show_paths=True)
    assert f"store: {store_dir}" in _html(app.layout)


def test_a_missing_checkpoint_is_named_without_its_path(state: Any, run_with_paths: ResolvedRun) -> None:
    image = Image.new("RGB", (32, 32))
    assert run_with_paths.info is not None
    text = _html(explain.render_explanation(state, run_with_paths.info, image, "a.png"))
    assert "resnet18-best.pt" in text and "no longer exists" in text and "/srv/" not in text
    shown = replace(state, show_paths=True)
    assert CHECKPOINT in _html(explain.render_explanation(shown, run_with_paths.info, image, "a.png"))


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("imagefolder:/srv/data/pets", "imagefolder:pets"),
        ("imagefolder:/srv/data/pets/", "imagefolder:pets"),
        ("folder:relative/dir", "folder:relative/dir"),
        ("fashion-mnist:T-shirt/top,Coat", "fashion-mnist:T-shirt/top,Coat"),
        ("cifar10", "cifar10"),
    ],
)
def test_spec_label(spec: str, shown: str) -> None:
    assert paths.spec_label(spec, show_paths=False) == shown
    assert paths.spec_label(spec, show_paths=True) == spec
