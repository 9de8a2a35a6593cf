"""bench/serve_cost.py runs end to end on a tiny store against a baseline commit (so the CPU
shares quoted in docs/PERFORMANCE.md stay reproducible), and the baseline really runs the
baseline's code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.synthetic import build_synthetic_store

ROOT = Path(__file__).resolve().parents[2]


def test_serve_cost_compares_with_a_baseline_commit(tmp_path: Path) -> None:
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout: no baseline commit to archive")
    build_synthetic_store(tmp_path / "s", n_val=40, n_train=30, runs=2, seed=1, emb_dim=8)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_cost.py"), "--store", str(tmp_path / "s"),
                        "--requests", "60", "--baseline", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    code = re.findall(r"^code: (\S+)", out, re.M)
    assert len(code) == 2 and "/tree/xaidash/dashboard/app.py" in code[0] and "/tree/" not in code[1]
    for label in ("baseline HEAD: 60 requests", "this tree: 60 requests"):
        assert label in out
    shares = [float(s) for s in re.findall(r"(\d+\.\d)%$", out, re.M)]
    assert len(shares) >= 4 and abs(sum(shares) - 200) < 1  # each table's kinds add up to 100 %
    assert re.search(r"baseline / this tree: \d+\.\d\dx", out)
