"""The compute processes' allocator setting: large activations reuse heap memory instead of
page-faulting fresh mmap pages on every forward (compute/hostmem.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A child process (the setting is process-wide and one-way): a small conv-ReLU-conv stack whose
# activations, 8 x 32 x 224 x 224 fp32 = 51 MB each, are above glibc's largest dynamic mmap
# threshold (32 MiB), like a CPU masked batch's.
CHILD = """
import json, resource, sys, torch
from xaidash.compute.hostmem import tune_host_allocator
state = tune_host_allocator() if sys.argv[1] == "tune" else None
torch.set_num_threads(1)
conv = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                           torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
x = torch.rand(8, 3, 224, 224)
with torch.inference_mode():
    conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        conv(x)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
print(json.dumps({"state": state, "faults": faults, "again": tune_host_allocator() == state}))
"""


def _child(mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env={**base, **(env or {})},
                         capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_forwards_reuse_memory_instead_of_page_faulting() -> None:
    plain = _child("plain")
    tuned = _child("tune")
    assert tuned["state"] == "glibc mallopt: mmap threshold 1024 MiB, trim threshold 1024 MiB"
    assert tuned["again"] is True  # idempotent: a second call reports the same and changes nothing
    pages = 2 * 8 * 32 * 224 * 224 * 4 // 4096  # two activations per forward
    assert float(plain["faults"]) > pages / 2  # glibc maps (and zeroes) the output afresh each time
    assert float(tuned["faults"]) < float(plain["faults"]) / 10  # measured: 75,272 vs 3,136


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_users_allocator_environment_wins() -> None:
    for env in ({"MALLOC_MMAP_THRESHOLD_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}):
        assert _child("tune", env=env)["state"] is None, env
    # settings of other things (arenas, perturbation, other tunables) do not stop it
    others = ({"MALLOC_ARENA_MAX": "2"}, {"MALLOC_PERTURB_": "0"},
              {"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=0"})
    for env in others:
        assert _child("tune", env=env)["state"] is not None, env
