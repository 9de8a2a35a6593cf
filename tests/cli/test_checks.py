"""Static checks as tests, so README's one test command (and CI) runs them: ruff over the tree,
mypy --strict over the installed package (scripts/typecheck.sh), no module over 700 lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if exe.is_file():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: bash scripts/setup.sh --test installs it")
    return found


def test_ruff_clean() -> None:
    out = subprocess.run([_tool("ruff"), "check", "--quiet", "."], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_strict_clean() -> None:
    out = subprocess.run(["bash", "scripts/typecheck.sh"], cwd=REPO, capture_output=True, text=True,
                         env={"MYPY": _tool("mypy"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def test_no_module_over_700_lines() -> None:
    big = {str(p.relative_to(REPO)): n for d in ("compute", "store", "dashboard", "xaidash")
           for p in (REPO / d).rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert not big, f"split these by concern: {big}"
