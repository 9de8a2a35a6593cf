"""bench/device_check.sh: its CPU fallback runs end to end (so the GPU script cannot rot), and it
fails loudly.

The fallback (``--device cpu --small``) makes a tiny ImageFolder, runs bench/compute_vs_peers.py,
an fp32 and a bf16 ``xaidash compute``, the per-stage table and the map check against a CPU
reference run; it measures nothing, it proves that every step still works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "device_check.sh"


def _run(*args: str, tmp: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp)}
    for k in [k for k in env if k.startswith("XAIDASH_CHECK_")]:
        del env[k]
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
def test_cpu_fallback_runs_every_section(tmp_path: Path) -> None:
    work = tmp_path / "work"
    r = _run("--device", "cpu", "--small", "--workdir", str(work), "--keep", tmp=tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    for header in ("=== 0. environment", "=== 1. synthetic ImageFolder", "=== 2. bench/compute_vs_peers.py",
                   "=== 3a. xaidash compute", "=== 3b. xaidash compute", "=== 4. images/s per stage",
                   "=== 5a. CPU fp32 reference", "=== 5b. maps", "=== done"):
        assert header in r.stdout, (header, out[-6000:])
    # the peers bench printed its ratios, both runs published, the table has the Score-CAM stage
    assert "Score-CAM fp32 / faster peer" in r.stdout or "Score-CAM bf16 / fp32" in r.stdout
    assert r.stdout.count("published run") >= 3
    assert "val_scorecam" in r.stdout
    assert "maps check passed" in r.stdout
    assert "device_check passed" in r.stdout
    # --keep left the stores and logs
    assert (work / "store-fp32").is_dir() and (work / "store-bf16").is_dir()
    assert (work / "peers.json").is_file() and (work / "stages.json").is_file()


def test_unknown_option_is_an_error(tmp_path: Path) -> None:
    r = _run("--frobnicate", tmp=tmp_path, timeout=30)
    assert r.returncode == 2
    assert "unknown option --frobnicate" in r.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the script targets Linux GPU machines")
def test_cuda_without_a_gpu_fails_in_the_environment_section(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _run("--device", "cuda", tmp=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "torch.cuda.is_available() is False" in r.stderr
    assert "FAILED in section '0. environment'" in r.stderr
    # nothing was generated: the failing check comes before the dataset
    assert "=== 1. synthetic ImageFolder" not in r.stdout
