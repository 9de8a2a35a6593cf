"""`xaidash serve` in several processes: one listening socket, a dead process replaced, all of them
stopped by SIGTERM, and a process that cannot start stopping the rest."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from xaidash.dashboard.server import serving
from xaidash.errors import UserError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc").is_dir(),
                                reason="forked server processes, seen through /proc")


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(d.name))
    return out


def _wait(cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/_dash-layout")
        return conn.getresponse().status == 200
    except OSError:
        return False


def test_processes_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_all(store_dir: Path,
                                                                                tmp_path: Path) -> None:
    port = serving.free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        argv = ["serve", "--store", str(store_dir), "--port", str(port), "--processes", "2"]
        proc = subprocess.Popen([sys.executable, "-m", "xaidash.cli", *argv], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        # both have built their app (waitress says "Serving on" once per process): one killed while
        # still starting would rightly stop the server instead of being replaced
        _wait(lambda: log.read_text().count("Serving on") == 2 and _answers(port), "two answering processes")
        assert len(_children(proc.pid)) == 2
        assert "2 processes x 4 threads" in log.read_text()
        first = _children(proc.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_children(proc.pid)) == 2 and victim not in _children(proc.pid), "a replacement")
        assert _answers(port)
        assert "starting another" in log.read_text()
        survivors = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        _wait(lambda: not any(Path(f"/proc/{p}").exists() for p in survivors), "the processes to exit", 20)
        assert not _answers(port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_process_that_cannot_start_stops_the_server() -> None:
    def broken() -> object:
        raise UserError("the store went away")

    assert serving.serve(broken, "127.0.0.1", serving.free_port(), processes=2) == 2  # type: ignore[arg-type]


class _DiesAfterStarting:
    """An app that is built (the process reports ready) but whose server cannot be taken."""

    @property
    def server(self) -> object:
        raise RuntimeError("the server went away")


def test_a_process_that_keeps_dying_is_not_restarted_forever(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(serving, "MAX_RESTARTS", 2)
    start = time.monotonic()
    status = serving.serve(_DiesAfterStarting, "127.0.0.1", serving.free_port(), processes=2)  # type: ignore[arg-type]
    assert status == 1
    assert time.monotonic() - start < 30
    restarted = [r for r in caplog.records if "starting another" in r.getMessage()]
    assert len(restarted) == 2
    assert any("3 exits within 60 s" in r.getMessage() for r in caplog.records)


def test_a_host_that_does_not_resolve_is_one_clear_error() -> None:
    with pytest.raises(UserError, match=r"cannot serve on host 'no-such-host\.invalid'.*--host"):
        serving.serve(_DiesAfterStarting, "no-such-host.invalid", 8050, processes=2)  # type: ignore[arg-type]


def test_default_processes_is_one_per_core_within_bounds() -> None:
    n = serving.default_processes()
    assert 1 <= n <= serving.MAX_PROCESSES
    assert n == min(len(os.sched_getaffinity(0)), serving.MAX_PROCESSES)
