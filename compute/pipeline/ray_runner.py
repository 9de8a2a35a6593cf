"""The per-image phase on a Ray cluster: workers are actors holding the model, one per GPU or
CPU slot, and each runs the same :func:`~xaidash.compute.pipeline.chunk.compute_chunk` the local loop runs.

* The driver puts the plan (model weights included) into Ray's object store once; workers need
  no checkpoint path. They do need the dataset at the same path (see docs/SCALING.md).
* Chunks are handed out dynamically, one at a time to whichever worker is free, so a slow worker
  takes fewer chunks and nothing waits on the slowest.
* Only the driver touches the store: a finished chunk's tables come back through the object store
  and the driver stages them exactly as a local chunk is staged (``job.stage_chunk``).
* Faults: a worker process that dies is restarted by Ray and its chunk retried
  (``max_restarts`` / ``max_task_retries``); the published run equals an undisturbed one because
  a chunk is staged all-or-nothing and computing it is deterministic. A killed driver leaves the
  staging area resumable; Ctrl-C stops the workers and leaves it resumable too.

Ray is an optional dependency (``pip install 'xaidash[ray]'``); this module imports it lazily.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from xaidash.compute.datasets.sources import FileDataset, ImageLoadError
from xaidash.compute.hostmem import tune_host_allocator
from xaidash.compute.model.external import file_modules
from xaidash.compute.model.loading import for_inference
from xaidash.compute.pipeline.chunk import ChunkOutput, compute_chunk
from xaidash.compute.pipeline.plan import Chunk, JobPlan
from xaidash.errors import UserError

log = logging.getLogger(__name__)

#: Test hook, ``CHUNK_ID::MARKER_PATH``: the worker that starts that chunk SIGKILLs its own process
#: (once: the marker file records it), as an out-of-memory kill or a lost node would.
KILL_WORKER_ENV = "XAIDASH_RAY_KILL_WORKER_AT_CHUNK"
#: Chunks queued per worker. Two hide the driver's staging of a result (measured with
#: bench/scaleout.py: with one, a single worker idled while the driver wrote each chunk); more
#: would only make the hand-out less dynamic.
IN_FLIGHT = 2


@dataclass(frozen=True)
class RayOptions:
    """``--ray`` and friends. ``address``: ``local`` (start Ray here), ``auto`` (the cluster of
    ``ray start`` on this node) or ``HOST:PORT`` of a head node."""

    address: str = "local"
    workers: int | None = None  #: default: one per GPU, else one per CPU slot of ``threads`` cores
    gpus_per_worker: float | None = None  #: default 1 when the cluster has GPUs, else 0
    threads_per_worker: int = 1


@dataclass
class WorkerStats:
    """One worker's share of the run (recorded in the run's timings, shown by ``runs show``)."""

    worker: int
    node: str
    pid: int
    device: str
    chunks: int = 0
    images: int = 0
    seconds: float = 0.0
    restarts: int = 0

    def as_dict(self) -> dict[str, object]:
        rate = self.images / self.seconds if self.seconds > 0 else None
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 3),
                "images_per_s": None if rate is None else round(rate, 2)}


@dataclass
class ClusterReport:
    """What the run records about the cluster."""

    address: str
    startup_s: float
    workers: list[WorkerStats] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"ray": self.address, "startup_s": round(self.startup_s, 3),
                "workers": [w.as_dict() for w in self.workers]}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'xaidash[ray]'") from None
    return ray


class _Worker:
    """A Ray actor's body: the plan on this worker's device, and ``compute_chunk`` over it."""

    def __init__(self, index: int, plan: JobPlan, threads: int, kill_hook: str | None = None) -> None:
        torch.set_num_threads(max(1, threads))
        tune_host_allocator()
        dev = torch.device("cuda" if torch.cuda.is_available() and _gpu_ids() else "cpu")
        # decode in this process: the worker *is* the parallel unit (DataLoader workers inside an
        # actor would compete for the same cores)
        cfg = dataclasses.replace(plan.cfg, workers=0)
        self.plan = dataclasses.replace(plan, cfg=cfg, device=dev, model=for_inference(plan.model, dev))
        self.index = index
        self.node = socket.gethostname()
        self.problem = _dataset_problem(self.plan)
        self.kill_hook = kill_hook

    def describe(self) -> tuple[str, int, str, str | None]:
        """(node, pid, device, problem): the driver checks every worker before dispatching."""
        dev = str(self.plan.device)
        if self.plan.device.type == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.plan.device)})"
        return self.node, os.getpid(), dev, self.problem

    def run(self, chunk: Chunk, thumbnails: frozenset[str],
            calibrate: bool) -> tuple[ChunkOutput, float, int]:
        t0 = time.perf_counter()
        if self.kill_hook:
            chunk_id, _, marker = self.kill_hook.partition("::")
            if chunk.chunk_id == chunk_id and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        out = compute_chunk(self.plan, chunk, thumbnails, calibrate=calibrate)
        if out.failed:
            reasons = out.tables["failures"].column("reason").to_pylist()
            sources = out.tables["failures"].column("source").to_pylist()
            for source, reason in zip(sources, reasons, strict=True):
                log.warning("worker %d on %s: cannot use %s: %s", self.index, self.node, source, reason)
        return out, time.perf_counter() - t0, os.getpid()


def _gpu_ids() -> list[int]:
    try:
        import ray

        return [int(g) for g in ray.get_gpu_ids()]
    except Exception:  # not inside a Ray worker
        return []


def _dataset_problem(plan: JobPlan) -> str | None:
    """Why this worker cannot read the dataset (it is not at the driver's path here), or None.

    One image is opened: a worker without the dataset would otherwise turn every image into a
    failure row and publish an empty run."""
    items = plan.val_items[:1] or plan.train_items[:1]
    if not items:
        return None
    where = plan.dataset.path(items[0]) if isinstance(plan.dataset, FileDataset) else items[0].source
    try:
        plan.dataset.load(items[0])
    except (ImageLoadError, UserError, OSError) as exc:
        reason = exc.reason if isinstance(exc, ImageLoadError) else str(exc)
        return (f"worker on node {socket.gethostname()} cannot open {where}: {reason}; every worker "
                "needs the dataset at the same path as the driver (docs/SCALING.md)")
    return None


def run_on_ray(plan: JobPlan, chunks: Sequence[Chunk], thumbnails: frozenset[str], opts: RayOptions,
               on_chunk: Callable[[ChunkOutput], None]) -> ClusterReport:
    """Compute ``chunks`` on Ray workers; ``on_chunk`` (the driver's staging) gets each result in
    the order they finish. Returns what the run records about the cluster."""
    ray = _import_ray()
    t0 = time.perf_counter()
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True}
        if opts.address == "local":
            ray.init(**kw)
        else:
            try:
                ray.init(address=opts.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f"cannot join the Ray cluster at {opts.address}: {why}") from None
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    cpus = float(res.get("CPU", 1))
    per_gpu = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    threads = max(1, opts.threads_per_worker)
    n = opts.workers or (int(gpus / per_gpu) if per_gpu else max(1, int(cpus // threads)))
    n = max(1, min(n, len(chunks)))
    actor_cls = ray.remote(max_restarts=-1, max_task_retries=-1)(_Worker)
    # the model's weights cross to the workers once, through the object store, as CPU tensors (a
    # worker may have no GPU, or another one); each worker moves its copy to its own device
    shipped = plan
    if plan.device.type != "cpu":
        shipped = dataclasses.replace(plan, model=copy.deepcopy(plan.model).cpu())
    from ray import cloudpickle as ray_pickle

    for module in file_modules():  # Ray's vendored cloudpickle keeps its own by-value registry
        ray_pickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]
    plan_ref = ray.put(shipped)
    kill_hook = os.environ.get(KILL_WORKER_ENV)
    actors = [actor_cls.options(num_cpus=threads, num_gpus=per_gpu).remote(i, plan_ref, threads, kill_hook)
              for i in range(n)]
    report = ClusterReport(opts.address, 0.0)
    try:
        for i, (node, pid, dev, problem) in enumerate(ray.get([a.describe.remote() for a in actors])):
            if problem:
                raise UserError(problem)
            report.workers.append(WorkerStats(i, node, pid, dev))
        report.startup_s = time.perf_counter() - t0
        log.info("ray: %d workers (%s), %s per worker; started in %.1fs", n,
                 ", ".join(sorted({f"{w.node} {w.device}" for w in report.workers})),
                 f"{threads} thread(s)" + (f", {per_gpu:g} GPU" if per_gpu else ""), report.startup_s)
        _dispatch(ray, actors, list(chunks), thumbnails, report, on_chunk)
    except BaseException:
        for a in actors:  # Ctrl-C or an error: stop every worker; finished chunks stay staged
            ray.kill(a)
        raise
    for a in actors:
        ray.kill(a)
    return report


def _dispatch(ray: Any, actors: list[Any], todo: list[Chunk], thumbnails: frozenset[str],
              report: ClusterReport, on_chunk: Callable[[ChunkOutput], None]) -> None:
    """Dynamic hand-out: each worker holds at most ``IN_FLIGHT`` chunks (the one it computes and
    the next, so it never idles while the driver stages a result); when one finishes, the worker
    gets the next chunk of the queue. Results are staged as they come."""
    pending: dict[Any, tuple[int, Chunk]] = {}
    queue = list(todo)
    calibrated = False
    total = sum(len(c.items) for c in todo)
    bar = tqdm(total=total, desc="images (ray)", unit="img", file=sys.stderr, dynamic_ncols=True,
               smoothing=0.1)
    done = 0

    def submit(w: int) -> None:
        nonlocal calibrated
        chunk = queue.pop(0)
        calibrate = not calibrated and chunk.split == "val"
        calibrated = calibrated or calibrate
        pending[actors[w].run.remote(chunk, thumbnails, calibrate)] = (w, chunk)

    try:
        for _ in range(IN_FLIGHT):
            for w in range(len(actors)):
                if queue:
                    submit(w)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            w, chunk = pending.pop(ready[0])
            out, seconds, pid = ray.get(ready[0])
            stats = report.workers[w]
            if pid != stats.pid:  # Ray restarted the worker process and retried the chunk
                stats.restarts += 1
                stats.pid = pid
                log.warning("ray: worker %d on %s was restarted; chunk %s was retried", w, stats.node,
                            chunk.chunk_id)
            stats.chunks += 1
            stats.images += out.images
            stats.seconds += seconds
            on_chunk(out)
            done += 1
            bar.update(out.images + out.failed)
            bar.set_postfix(chunks=f"{done}/{len(todo)}", workers=len(actors))
            if queue:
                submit(w)
    finally:
        bar.close()
