"""Wall-clock seconds per stage of a job, the numbers a run records as its timings."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class Timer:
    """Wall-clock seconds per stage (accumulates when a stage runs more than once)."""

    def __init__(self, cuda: torch.device | None = None) -> None:
        self.seconds: dict[str, float] = {}
        #: kernels are asynchronous: on CUDA a stage ends with a synchronize, otherwise its GPU
        #: time would be billed to whichever later stage first waits for it
        self.cuda = cuda

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda is not None:
                torch.cuda.synchronize(self.cuda)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, seconds: dict[str, float]) -> None:
        for k, v in seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
