"""The compute job: run a model over a dataset and publish one complete run into a store.

Read top to bottom, :func:`run_job` is the whole job:

1. **Plan** (:func:`~xaidash.compute.pipeline.plan.make_plan`): validate the configuration, open the
   dataset, load the model, cut the images into deterministic chunks, compute the job key.
2. **Staging**: open the store and this job's staging area (resumable: chunks already done are
   skipped). Shards of one job share it.
3. **Per-image phase**: :func:`~xaidash.compute.pipeline.chunk.compute_chunk` over every pending chunk of
   this process, each chunk's tables staged with ``Staging.write_chunk`` (all-or-nothing), so
   memory does not grow with the dataset and a killed job resumes at the first chunk not done.
4. **Global phase** (:func:`~xaidash.compute.pipeline.global_phase.global_phase`), once every chunk is
   done: twins, projection, metrics; then ``Staging.publish`` writes the run atomically.

Shards: ``--shard I/N`` takes chunks whose global index (val chunks first, then train) is
``I mod N``. Shards run at the same time (one per GPU or machine, same store): each opens the
staging as owner ``shard-I-of-N`` (a shared lock on the staging plus its own exclusive one, so
the same shard twice is refused), and a shard that finds every chunk done takes the exclusive
publish lock, re-checks that every chunk is done and that the job was not published meanwhile,
and only then runs the global phase and publishes; a shard that loses that race reports the
published run (exit 0). ``--finalize`` runs the global phase on demand. A job key is published
at most once (``--new-run`` asks for another run with the next free key suffix).

Precision (:mod:`~xaidash.compute.pipeline.precision`): predictions, embeddings and the gradient
trio (CAM, Grad-CAM, Grad-CAM++, from one forward + backward) are always fp32, with TF32 off on
CUDA. ``--precision bf16`` applies only to the forward-only bulk, which is where the time goes:
Score-CAM's masked forwards and the faithfulness forwards (those of the baselines and ROAD's too),
run under bf16 autocast on a BatchNorm-folded channels-last copy of the model. A bf16 run measures
its own deviation from fp32 on a calibration sample and records it in ``runs.precision_json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xaidash.compute.pipeline.chunk import ChunkOutput, compute_chunk, decode_chunks
from xaidash.compute.pipeline.config import JobConfig, validate
from xaidash.compute.pipeline.global_phase import global_phase
from xaidash.compute.pipeline.plan import Chunk, JobPlan, make_plan
from xaidash.compute.pipeline.precision import (
    bf16_hardware,
    bf16_speedup,
    calibration_items,
    measure_deviation,
)
from xaidash.compute.pipeline.timing import Timer
from xaidash.errors import UserError
from xaidash.store import Staging, Store
from xaidash.store.write.writer import AlreadyPublished, read_manifest

__all__ = ["FAIL_AFTER_ENV", "JobConfig", "JobResult", "run_job", "stage_chunk"]

log = logging.getLogger(__name__)

#: Test hook: raise after this many chunks were written by this process (simulates a kill).
FAIL_AFTER_ENV = "XAIDASH_COMPUTE_FAIL_AFTER_CHUNKS"


@dataclass
class JobResult:
    """What a job did: ``run_id`` is set when a run was published (or already existed)."""

    ok: bool
    run_id: str | None = None
    published: bool = False
    already_published: bool = False
    chunks_total: int = 0
    chunks_done_here: int = 0
    chunks_missing: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    bytes_per_val_image: float | None = None


@dataclass
class _Measured:
    """What the per-image phase measured, summed over this process's chunks."""

    timer: Timer
    method_seconds: dict[str, float] = field(default_factory=dict)
    scorecam_seconds: float = 0.0
    scorecam_images: int = 0
    cluster: dict[str, object] | None = None  #: the Ray cluster that computed the chunks
    trust_images: dict[str, int] = field(default_factory=dict)  #: images per trust part

    def add(self, out: ChunkOutput) -> None:
        self.timer.add(out.seconds)
        self.method_seconds = self.method_seconds or out.method_seconds
        self.scorecam_seconds += out.scorecam_seconds
        self.scorecam_images += out.scorecam_images
        for part, n in out.trust_images.items():
            self.trust_images[part] = self.trust_images.get(part, 0) + n

    def trust_ms_per_image(self) -> dict[str, float]:
        """Milliseconds per covered image of each trust part (its ``val_<part>`` stage)."""
        return {part: round(1000.0 * self.timer.seconds.get(f"val_{part}", 0.0) / n, 3)
                for part, n in sorted(self.trust_images.items()) if n}

    def method_ms_per_image(self, methods: Sequence[str]) -> dict[str, float]:
        """Milliseconds per image of each method on its own (seed 004's cost comparison)."""
        out = {m: 1000.0 * v for m, v in self.method_seconds.items() if m != "forward"}
        if "scorecam" in methods and self.scorecam_images:
            out["scorecam"] = 1000.0 * (self.method_seconds.get("forward", 0.0)
                                        + self.scorecam_seconds / self.scorecam_images)
        return {m: round(v, 3) for m, v in out.items()}


def run_job(cfg: JobConfig) -> JobResult:
    """Run (or resume, or finish) one compute job. See the module docstring."""
    timer = Timer()
    with timer.stage("setup"):
        validate(cfg)  # typos first, then the store (fails fast), then data and model
        store = Store.create(cfg.store)
        _check_store_writable(store.path)
        plan = _with_run_key(make_plan(cfg), store)
    timer.cuda = plan.device if plan.device.type == "cuda" else None
    if cfg.precision == "fp32" and ("scorecam" in plan.methods or cfg.faithfulness) and not cfg.finalize:
        _bf16_hint(plan, store)
    existing = store.published_job(plan.job_key)
    if existing is not None:
        log.info("this run already exists: run %s (same model, data and arguments); nothing to do. "
                 "Delete it with `xaidash runs delete %s --store %s`, or pass --new-run, to recompute.",
                 existing, existing, cfg.store)
        return JobResult(ok=True, run_id=existing, already_published=True, chunks_total=len(plan.chunks))

    # Shards of one job run at the same time (one per GPU or machine): each holds its own lock on
    # the shared staging and writes its own chunks; an unsharded job is the only writer.
    owner = f"shard-{plan.shard[0]}-of-{plan.shard[1]}" if plan.shard else None
    try:
        staging = store.staging(plan.job_key, owner=owner)
    except AlreadyPublished as exc:  # another shard published it since the check above
        log.info("this run already exists: run %s (published by another shard)", exc.run_id)
        return JobResult(ok=True, run_id=exc.run_id, already_published=True, chunks_total=len(plan.chunks))
    measured = _Measured(timer)
    try:
        all_ids = {c.chunk_id for c in plan.chunks}
        done = staging.done_chunks() & all_ids
        if done:
            log.info("resuming: %d of %d chunks already done", len(done), len(plan.chunks))
        todo = [] if cfg.finalize else [c for c in plan.my_chunks() if c.chunk_id not in done]
        log.info("job %s: %d chunks to compute (%d val + %d train images) on %s%s", plan.job_key, len(todo),
                 sum(len(c.items) for c in todo if c.split == "val"),
                 sum(len(c.items) for c in todo if c.split == "train"),
                 plan.device, f", shard {cfg.shard}" if plan.shard else "")
        written = _per_image_phase(plan, store, staging, todo, measured)

        missing = all_ids - staging.done_chunks()
        if missing:
            return _report_missing(plan, staging, missing, written, timer)
        try:
            # Every chunk is done: take the exclusive publish lock (waits for other shards that
            # are still writing or publishing), then re-check under it before the global phase.
            with staging.publishing():
                if all_ids - staging.done_chunks():  # pragma: no cover - an overlapping shard
                    raise UserError("some chunks are not done any more; run --finalize once every "
                                    "shard has finished")
                extra: dict[str, object] = {"method_ms_per_image": measured.method_ms_per_image(plan.methods),
                                            "trust_ms_per_image": measured.trust_ms_per_image(),
                                            "trust_images": dict(measured.trust_images)}
                if measured.cluster is not None:
                    extra["cluster"] = measured.cluster
                precision = plan.precision_record()
                if cfg.precision == "bf16":
                    with timer.stage("precision_calibration"):
                        dev = measure_deviation(plan, calibration_items(plan, cfg.calibration_images))
                    if dev is not None:
                        precision["calibration"] = dev.as_dict()
                        log.info("bf16 deviation from fp32 on %d calibration images: Score-CAM maps max %.4f "
                                 "(median %.4f), faithfulness scores max %.4f (median %.4f)", dev.images,
                                 dev.max_abs_dmap, dev.median_abs_dmap, dev.max_abs_dscore,
                                 dev.median_abs_dscore)
                run_row, tables = global_phase(plan, staging, timer, extra, precision)
                with timer.stage("publish"):
                    run_id = staging.publish(run_row, tables)
        except AlreadyPublished as exc:
            # another shard published the same job concurrently: report its run, not an error
            log.info("shard %s: every chunk is done and another shard published the run: %s",
                     cfg.shard, exc.run_id)
            staging.close()
            return JobResult(ok=True, run_id=exc.run_id, already_published=True,
                             chunks_total=len(plan.chunks), chunks_done_here=written,
                             timings=dict(timer.seconds))
    except BaseException:
        staging.close()  # keep the staging: a re-run resumes from the done chunks
        raise
    return _report_published(plan, store, run_id, run_row, written, timer)


def stage_chunk(staging: Staging, out: ChunkOutput) -> None:
    """Write one computed chunk into the staging area (the only store access of the phase)."""
    staging.write_chunk(out.chunk_id, out.tables)


def _per_image_phase(plan: JobPlan, store: Store, staging: Staging, chunks: Sequence[Chunk],
                     measured: _Measured) -> int:
    """Compute and stage ``chunks`` in this process; returns how many were written."""
    fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)
    missing_thumbs = frozenset(it.image_id for c in chunks for it in c.items) - store.thumbnail_ids(
        plan.fingerprint)
    written = 0

    def take(out: ChunkOutput) -> None:
        """One computed chunk, from this process or a Ray worker: measured, then staged."""
        nonlocal written
        measured.add(out)
        stage_chunk(staging, out)
        written += 1
        if fail_after and written >= fail_after:
            raise RuntimeError(f"simulated crash after {written} chunk(s) ({FAIL_AFTER_ENV})")

    if plan.cfg.ray is not None and chunks:
        from xaidash.compute.pipeline.ray_runner import RayOptions, run_on_ray

        opts = RayOptions(plan.cfg.ray, plan.cfg.ray_workers, plan.cfg.gpus_per_worker,
                          plan.cfg.threads_per_worker)
        t0 = time.perf_counter()
        report = run_on_ray(plan, chunks, missing_thumbs, opts, take)
        # Ray's start-up (joining or starting the cluster, the actors loading the model) is its
        # own stage, so per_image_ray compares with the local loop's per_image_* stages
        measured.timer.add({"ray_startup": report.startup_s,
                            "per_image_ray": time.perf_counter() - t0 - report.startup_s})
        measured.cluster = report.as_dict()
        return written
    for split in ("val", "train"):
        todo = [c for c in chunks if c.split == split]
        if not todo:
            continue
        bar = tqdm(total=sum(len(c.items) for c in todo), desc=f"{split} images", unit="img",
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        try:
            with measured.timer.stage(f"per_image_{split}"):
                for chunk, batches in decode_chunks(plan, todo, missing_thumbs):
                    take(compute_chunk(plan, chunk, missing_thumbs, batches,
                                       calibrate=split == "val" and not measured.method_seconds,
                                       progress=bar.update))
        finally:
            bar.close()
    return written


def _bf16_hint(plan: JobPlan, store: Store) -> None:
    """One line telling a fp32 run what ``--precision bf16`` would give on this hardware: the
    speed-up measured here and now, and the deviation a previous bf16 run measured on this data."""
    import torch

    hw = bf16_hardware(plan.device)
    if hw is None:
        return
    side = plan.parts.preprocessing.input_size
    x = plan.to_device(torch.randn(min(plan.cfg.batch_size, 16), 3, side, side))
    speedup = bf16_speedup(plan, x)
    if speedup < 1.2:
        return
    seen = ""
    for d in reversed(store.run_dirs()):
        row = (read_manifest(d) or {}).get("run", {})
        if row.get("dataset_fingerprint") != plan.fingerprint or not row.get("precision_json"):
            continue
        cal = json.loads(row["precision_json"]).get("calibration")
        if cal:
            seen = (f"; on this data, run {row.get('run_id')} measured Score-CAM maps within "
                    f"{cal['max_abs_dmap']:.3f} of fp32")
            break
    log.info("hint: --precision bf16 runs Score-CAM's masked forwards and faithfulness about %.1fx faster "
             "on this %s (%s), with the deviation measured and recorded%s", speedup,
             "GPU" if plan.device.type == "cuda" else "CPU", hw, seen)


def _with_run_key(plan: JobPlan, store: Store) -> JobPlan:
    """``--new-run``: same model, data and arguments as a published run, but the user asked for
    another one (the demo does, to add a run each time it is started). The suffix is
    deterministic - the first free one - so a killed --new-run job resumes its own staging."""
    if not plan.cfg.new_run or store.published_job(plan.job_key) is None:
        return plan
    n = 2
    while store.published_job(f"{plan.job_key}-{n}") is not None:
        n += 1
    return plan.with_job_key(f"{plan.job_key}-{n}")


def _report_missing(plan: JobPlan, staging: Staging, missing: set[str], written: int,
                    timer: Timer) -> JobResult:
    """This shard is done but others are not (or --finalize came too early)."""
    if plan.cfg.finalize or plan.shard is None:
        raise UserError(
            f"{len(missing)} of {len(plan.chunks)} chunks are not computed yet; run the "
            "remaining shards (same arguments, --shard I/N) before --finalize"
        )
    n = plan.shard[1]
    pending = sorted({c.index % n for c in plan.chunks if c.chunk_id in missing})
    log.info("shard %s done (%d chunks); %d chunks remain in shard(s) %s: run them with the same "
             "arguments; the last one publishes the run (or run --finalize afterwards).",
             plan.cfg.shard, written, len(missing), ", ".join(f"{i}/{n}" for i in pending))
    staging.close()
    return JobResult(ok=True, chunks_total=len(plan.chunks), chunks_done_here=written,
                     chunks_missing=len(missing), timings=dict(timer.seconds))


def _report_published(plan: JobPlan, store: Store, run_id: str, run_row: Mapping[str, Any], written: int,
                      timer: Timer) -> JobResult:
    manifest = read_manifest(store.path / "runs" / run_id) or {}
    nbytes = sum(int(t.get("bytes", 0)) for t in manifest.get("tables", {}).values())
    per_val = nbytes / max(1, len(plan.val_items))
    accuracy = run_row.get("accuracy")
    t = timer.seconds
    log.info("published run %s to %s", run_id, store.path)
    n_val, n_train = int(run_row.get("num_val") or 0), int(run_row.get("num_train") or 0)
    skipped_val, skipped_train = len(plan.val_items) - n_val, len(plan.train_items) - n_train
    log.info("  images: %d val%s, %d train%s; accuracy: %s", n_val,
             f" ({skipped_val} unreadable, skipped)" if skipped_val else "", n_train,
             f" ({skipped_train} unreadable, skipped)" if skipped_train else "",
             "n/a (unlabeled)" if accuracy is None else f"{accuracy:.4f} over the {n_val} evaluated images")
    log.info("  time per stage: %s", ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    log.info("  run tables: %.1f KiB in total, %.0f bytes per val image (thumbnails are shared per dataset)",
             nbytes / 1024, per_val)
    return JobResult(ok=True, run_id=run_id, published=True, chunks_total=len(plan.chunks),
                     chunks_done_here=written, timings=dict(t),
                     accuracy=None if accuracy is None else float(accuracy), bytes_per_val_image=per_val)


def _check_store_writable(path: Path) -> None:
    """Fail early (not after an hour of compute) when the store cannot be written."""
    probe = path / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"store {path} is not writable: {exc.strerror or exc}") from None
