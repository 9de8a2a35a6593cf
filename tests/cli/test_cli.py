"""The console script: every sub-command has --help, and --help stays light (no torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xaidash.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"xaidash {command}" in out
    assert "--debug" in out


def test_help_does_not_import_torch_or_dash() -> None:
    # `xaidash --help` must be instant: the sub-command modules import heavy libraries lazily.
    code = (
        "import sys\n"
        "from xaidash.cli import get_args_parser\n"
        "get_args_parser()\n"
        "heavy = [m for m in ('torch', 'dash', 'duckdb') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_missing_subcommand_fails_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: xaidash" in capsys.readouterr().err
