"""bench/bf16_ceiling.py runs end to end at toy sizes (so the ceiling quoted in
docs/PERFORMANCE.md stays reproducible) and its arithmetic is the one documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ceiling_bench_runs_and_bounds_the_peer_ratio(tmp_path: Path) -> None:
    out = tmp_path / "ceiling.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bf16_ceiling.py"), "--threads", "1",
                        "--size", "64", "--batch", "2", "--gemm", "256", "--rounds", "1",
                        "--fp32-vs-peer", "1.5", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "bf16 forward runs at" in r.stdout and "at most" in r.stdout
    res = json.loads(out.read_text())
    gf = res["gflops"]
    # ResNet-18 at 64 px: 1.814 GMAC at 224 px scaled by (64/224)^2 up to the stride rounding
    assert res["macs_per_image"] == pytest.approx(1.814e9 * (64 / 224) ** 2, rel=0.05)
    assert res["bf16_speedup"] == pytest.approx(gf["forward_bf16"] / gf["forward_fp32"])
    assert res["bf16_ceiling"] == pytest.approx(gf["gemm_bf16"] / gf["forward_fp32"])
    assert res["bf16_vs_peer_ceiling"] == pytest.approx(1.5 * res["bf16_ceiling"])
