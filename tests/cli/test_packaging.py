"""The wheel installs one package, ``xaidash``, and works from a folder full of look-alikes.

Builds the wheel (non-editable), installs it into a fresh venv whose dependencies come from
this test environment through a .pth path entry (so nothing is downloaded), and checks that
pip added only ``xaidash`` and its ``.dist-info`` to site-packages. Then, from a folder that
contains ``store/``, ``compute/__init__.py`` and ``dashboard.py`` (what a user's project may well
have), the console script, ``import xaidash.dashboard.app`` and ``xaidash serve`` work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from xaidash.dashboard.server.serving import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    tmp = tmp_path_factory.mktemp("pkg")
    # build from a clean copy: setuptools reuses build/lib, where a deleted module would linger
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "bench",
                                                              "tests", "__pycache__", ".mypy_cache"))
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, cwd=tmp)
    (wheel,) = wheels.glob("xaidash-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    before = {p.name for p in site.iterdir()}
    # pip of this environment installs into the fresh venv's interpreter (no network, no deps)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True)
    added = {p.name for p in site.iterdir()} - before
    # the dependencies (torch, dash, ...) of this test environment, as a plain path entry: .pth
    # files inside it (such as an editable install's finder) are not processed from there
    (site / "zz-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, added


@pytest.fixture()
def decoys(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    (d / "store").mkdir(parents=True)
    (d / "store" / "__init__.py").write_text("raise ImportError('the user project store package')\n")
    (d / "compute").mkdir()
    (d / "compute" / "__init__.py").write_text("raise ImportError('the user project compute package')\n")
    (d / "dashboard.py").write_text("raise ImportError('the user project dashboard module')\n")
    return d


def test_wheel_installs_only_xaidash(fresh_venv: tuple[Path, set[str]]) -> None:
    _, added = fresh_venv
    dist = {n for n in added if n.endswith(".dist-info")}
    assert added - dist == {"xaidash"}, added
    assert len(dist) == 1 and next(iter(dist)).startswith("xaidash-")


def test_installed_package_works_next_to_lookalikes(fresh_venv: tuple[Path, set[str]], decoys: Path,
                                                     tmp_path: Path) -> None:
    venv, _ = fresh_venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XAIDASH_STORE")}
    out = subprocess.run([str(venv / "bin" / "xaidash"), "--help"], cwd=decoys, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "compute" in out.stdout, out.stderr
    code = ("import xaidash, xaidash.dashboard.app, xaidash.store, xaidash.compute.methods.cams; "
            "print(xaidash.__file__); print(xaidash.dashboard.app.ASSETS_DIR)")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=decoys, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pkg_file, assets = out.stdout.split()
    assert Path(pkg_file).is_relative_to(venv), pkg_file  # the installed copy, not the repository's
    assert (Path(assets) / "xaidash.css").is_file()

    from xaidash.store import Store

    store = tmp_path / "store"
    Store.create(store)
    port = free_port()
    cmd = [str(venv / "bin" / "xaidash"), "serve", "--store", str(store), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=decoys, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    said = proc.stdout.read() if proc.stdout else ""
                    raise AssertionError(f"serve did not answer: {said}") from exc
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets/xaidash.css", timeout=5) as r:
            assert r.status == 200 and b"{" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
