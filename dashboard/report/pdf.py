"""Printing the report to PDF through headless Chromium (the browser the tests already drive).

Chromium is looked up as ``$XAIDASH_CHROMIUM``, then ``chromium``, ``chromium-browser``,
``google-chrome`` on the PATH; without one, a clear error says how to get it or to use the HTML.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from xaidash.errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: the flags of docs/DESIGN.md's headless browser: no sandbox (containers), no GPU, no background
#: requests (the report makes none either)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-extensions",
    "--no-pdf-header-footer",
)
#: milliseconds of page time the figures get to draw before printing
DRAW_BUDGET_MS = 10_000


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    env = os.environ.get("XAIDASH_CHROMIUM")
    if env:
        return env if Path(env).is_file() and os.access(env, os.X_OK) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 120.0) -> None:
    """Print ``html_path`` to ``pdf_path``; UserError without Chromium or when printing fails."""
    exe = find_chromium()
    if exe is None:
        raise UserError(
            "--pdf needs Chromium (looked for $XAIDASH_CHROMIUM, "
            + ", ".join(CANDIDATES)
            + "); install it (Debian: apt-get install chromium) or open the HTML report and "
            "print it from a browser"
        )
    with tempfile.TemporaryDirectory(prefix="xaidash-pdf-") as profile:
        cmd = [
            exe,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={DRAW_BUDGET_MS}",
            f"--print-to-pdf={pdf_path}",
            html_path.resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(f"Chromium did not print the report within {timeout_s:.0f} s") from None
    if proc.returncode != 0 or not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"Chromium could not print the report (exit {proc.returncode}): {tail[0]}")
